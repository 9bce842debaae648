"""Known-answer tests for metrics.py on synthetic ground truth.

The stand-in data set's "images" are the factor values themselves, so a
representation is any function of the factors.  Point counts are shrunk
(``scale`` or explicit counts) only as far as the answers stay decisive.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation import metrics  # noqa: E402


class SyntheticGroundTruth:
    """Uniform independent factors; images_for_factors returns the factors (n, F)."""

    def __init__(self, factor_sizes=(3, 6, 10, 8, 8)):
        self.factor_sizes = tuple(factor_sizes)
        self.factor_names = tuple(f"f{i}" for i in range(len(factor_sizes)))

    def sample_factors(self, n, rng):
        return np.stack([rng.randint(s, size=n) for s in self.factor_sizes], axis=1).astype(np.int64)

    def images_for_factors(self, factors):
        return torch.as_tensor(np.asarray(factors), dtype=torch.float32)


class FixedGroundTruth(SyntheticGroundTruth):
    """Returns the rows of a fixed table in order, ignoring the RandomState."""

    def __init__(self, table):
        self.table = np.asarray(table, dtype=np.int64)
        super().__init__(tuple(int(v) + 1 for v in self.table.max(axis=0)))

    def sample_factors(self, n, rng):
        reps = -(-n // len(self.table))
        return np.tile(self.table, (reps, 1))[:n].copy()


def truth(images):
    """Representation = the ground-truth factors, one code per factor."""
    return images.numpy().astype(np.float64)


def truth_plus_noise(z_dim, noise=0.1, seed=3):
    """Factors plus small input-dependent pseudo-noise, padded with nuisance
    codes to z_dim.  Deterministic: the same images give the same codes."""
    weights = np.random.RandomState(seed).randn(z_dim, 16)

    def represent(images):
        x = images.numpy().astype(np.float64)
        wobble = np.sin(3.7 * x @ weights[:, :x.shape[1]].T)  # (n, z_dim), in [-1, 1]
        codes = np.zeros((len(x), z_dim))
        codes[:, :x.shape[1]] = x
        return codes + noise * wobble

    return represent


def pure_noise(z_dim, seed=0):
    """Codes independent of the image."""
    rng = np.random.RandomState(seed)

    def represent(images):
        return rng.randn(len(images), z_dim)

    return represent


def without_seconds(result):
    return {k: v for k, v in result.items() if k != "seconds"}


GT = SyntheticGroundTruth()
SMALL_GT = SyntheticGroundTruth((3, 4, 5))


@pytest.fixture(scope="module")
def truth_result():
    return metrics.evaluate_all(GT, truth, seed=0, scale=0.03)


def test_ground_truth_representation_scores_high(truth_result):
    scores = metrics.summary_scores(truth_result)
    assert scores["beta_vae"] > 0.95
    assert scores["factor_vae"] > 0.95
    assert scores["dci_disentanglement"] > 0.95
    assert scores["dci_completeness"] > 0.95
    assert scores["dci_informativeness"] > 0.95
    assert scores["mig"] > 0.8
    assert truth_result["factor_vae"]["num_active_dims"] == 5


def test_evaluate_all_shape_and_table(truth_result):
    assert set(truth_result) == {"beta_vae", "factor_vae", "mig", "dci", "sap", "irs", "modularity",
                                 "unsupervised", "seconds"}
    for name in ("beta_vae", "factor_vae", "mig", "dci", "sap", "irs", "modularity"):
        assert 0.0 <= truth_result[name]["score"] <= 1.0
    seconds = truth_result["seconds"]
    assert seconds["total"] == pytest.approx(sum(v for k, v in seconds.items() if k != "total"))
    assert set(metrics.summary_scores(truth_result)) == {
        "beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness",
        "dci_informativeness", "sap", "irs", "modularity", "explicitness", "gaussian_total_correlation",
        "gaussian_wasserstein_correlation", "mutual_info_score"}
    table = metrics.format_table(truth_result)
    for label in ("BetaVAE", "FactorVAE", "MIG", "DCI", "SAP", "total"):
        assert label in table


def test_noise_representation_is_near_chance():
    rng = np.random.RandomState
    chance = 1 / len(GT.factor_sizes)
    beta = metrics.beta_vae_score(GT, pure_noise(10), rng(0), num_train=1000, num_eval=500)
    assert beta["score"] < chance + 0.1
    factor = metrics.factor_vae_score(GT, pure_noise(10), rng(0), num_train=1000, num_eval=500,
                                      num_variance_estimate=1000)
    assert factor["score"] < chance + 0.15
    assert metrics.mig(GT, pure_noise(10), rng(0), num_train=5000)["score"] < 0.02
    assert metrics.sap(GT, pure_noise(10), rng(0), num_train=1000, num_test=500)["score"] < 0.05


def test_noise_representation_dci_is_low():
    result = metrics.dci(SMALL_GT, pure_noise(6), np.random.RandomState(0), num_train=300,
                         num_test=300)
    assert result["disentanglement"] < 0.3
    assert result["informativeness_test"] < 0.5


def test_mig_matches_hand_computed_value():
    # Two independent binary factors, every combination twice.  Code 0 copies
    # factor 0; code 1 is (f0 AND f1).
    table = [(0, 0), (0, 1), (1, 0), (1, 1)] * 2
    gt = FixedGroundTruth(table)

    def represent(images):
        f = images.numpy()
        return np.stack([f[:, 0], f[:, 0] * f[:, 1]], axis=1)

    # By hand: H(f0) = H(f1) = ln 2.  I(c0; f0) = ln 2, I(c0; f1) = 0.
    # c1 = 1 with p = 1/4, so H(c1) = -(1/4 ln 1/4 + 3/4 ln 3/4); given f0 = 0
    # c1 = 0, given f0 = 1 it is a fair coin: H(c1 | f0) = 1/2 ln 2.  Same for f1.
    ln2 = math.log(2)
    mi_and = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) - 0.5 * ln2
    gap_f0 = (ln2 - mi_and) / ln2  # c0 first, c1 second
    gap_f1 = (mi_and - 0.0) / ln2  # c1 first, c0 second
    result = metrics.mig(gt, represent, np.random.RandomState(0), num_train=len(table))
    assert result["per_factor"]["f0"] == pytest.approx(gap_f0, abs=1e-12)
    assert result["per_factor"]["f1"] == pytest.approx(gap_f1, abs=1e-12)
    assert result["score"] == pytest.approx((gap_f0 + gap_f1) / 2, abs=1e-12)
    assert gap_f0 == pytest.approx(0.6887, abs=1e-4)


def test_histogram_discretizer_uses_equal_width_bins():
    codes = np.array([[0.0], [0.24], [0.26], [0.74], [1.0]])
    bins = metrics._histogram_discretize(codes, num_bins=4)
    assert bins[:, 0].tolist() == [1, 1, 2, 3, 4]  # max value lands in the last bin


def _permuted(represent, perm):
    return lambda images: represent(images)[:, perm]


def _rescaled(represent, factors):
    return lambda images: represent(images) * factors


INVARIANCE_CASES = {
    "beta_vae": lambda gt, rep: metrics.beta_vae_score(gt, rep, np.random.RandomState(0),
                                                      num_train=400, num_eval=200),
    "factor_vae": lambda gt, rep: metrics.factor_vae_score(gt, rep, np.random.RandomState(0),
                                                          num_train=400, num_eval=200,
                                                          num_variance_estimate=1000),
    "mig": lambda gt, rep: metrics.mig(gt, rep, np.random.RandomState(0), num_train=2000),
    "dci": lambda gt, rep: metrics.dci(gt, rep, np.random.RandomState(0), num_train=300,
                                       num_test=200),
    "sap": lambda gt, rep: metrics.sap(gt, rep, np.random.RandomState(0), num_train=500,
                                       num_test=300),
}


# BetaVAE and SAP fit L2-regularised linear classifiers to the raw codes, so
# (as in disentanglement_lib) they are not invariant to rescaling a latent.
SCALE_INVARIANT = {"factor_vae", "mig", "dci"}


@pytest.mark.parametrize("name", sorted(INVARIANCE_CASES))
def test_permuting_or_rescaling_latents_leaves_score_unchanged(name):
    score = INVARIANCE_CASES[name]
    represent = truth_plus_noise(6, noise=2.0)  # entangled enough that no score saturates
    base = score(SMALL_GT, represent)["score"]
    assert 0.05 < base < 0.99
    # DCI too: sklearn breaks exact split ties by column position, so dci()
    # fits the codes in a label-free column order (_canonical_code_order).
    perm = np.array([4, 2, 0, 5, 1, 3])
    assert score(SMALL_GT, _permuted(represent, perm))["score"] == pytest.approx(base, abs=1e-9)
    if name in SCALE_INVARIANT:
        scales = np.array([2.0, 0.5, 3.0, 1.5, 0.8, 4.0])  # keeps every std above the 0.05 prune
        assert score(SMALL_GT, _rescaled(represent, scales))["score"] == pytest.approx(base, abs=1e-9)


def test_same_seed_gives_identical_result():
    represent = truth_plus_noise(6, noise=0.4)
    first = metrics.evaluate_all(SMALL_GT, represent, seed=1, scale=0.02)
    second = metrics.evaluate_all(SMALL_GT, represent, seed=1, scale=0.02)
    assert without_seconds(first) == without_seconds(second)


def test_hist_dci_option_agrees_on_ground_truth():
    result = metrics.dci(SMALL_GT, truth, np.random.RandomState(0), num_train=300, num_test=200,
                         estimator="hist")
    assert result["estimator"] == "hist"
    assert result["disentanglement"] > 0.9
    with pytest.raises(ValueError):
        metrics.dci(SMALL_GT, truth, np.random.RandomState(0), estimator="lasso")


def test_dci_scores_of_known_importance_matrices():
    diagonal = np.eye(3)
    assert metrics._weighted_concentration(diagonal) == pytest.approx(1.0, abs=1e-9)
    # one code that explains all three factors equally: not disentangled, complete
    one_code = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert metrics._weighted_concentration(one_code) == pytest.approx(0.0, abs=1e-9)
    assert metrics._weighted_concentration(one_code.T) == pytest.approx(1.0, abs=1e-9)


def test_factor_vae_all_dims_pruned():
    constant = lambda images: np.zeros((len(images), 4))  # noqa: E731
    result = metrics.factor_vae_score(GT, constant, np.random.RandomState(0), num_train=10,
                                      num_eval=10, num_variance_estimate=100)
    assert result == {"score": 0.0, "train_accuracy": 0.0, "eval_accuracy": 0.0,
                      "num_active_dims": 0}


def test_representation_is_called_in_bounded_batches():
    sizes = []

    def represent(images):
        sizes.append(len(images))
        return truth(images)

    metrics.beta_vae_score(GT, represent, np.random.RandomState(0), num_train=40, num_eval=20)
    assert max(sizes) <= metrics.REPRESENT_BATCH
    assert sum(sizes) == (40 + 20) * 2 * 64


def test_latent_report_flags_sorts_and_labels():
    rng = np.random.RandomState(0)
    factors = GT.sample_factors(3000, rng)
    # latent 0 <- factor 2, latent 1 collapsed, latent 2 <- factor 0, latent 3 <- factor 4
    codes = np.stack([factors[:, 2] + 0.1 * rng.randn(3000), 0.01 * rng.randn(3000),
                      factors[:, 0] + 0.1 * rng.randn(3000), -factors[:, 4] * 1.0], axis=1)
    logvar = np.log(np.broadcast_to([0.05, 0.99, 0.02, 0.2], codes.shape))
    report = metrics.latent_report(codes, logvar, factors, factor_names=GT.factor_names)
    assert report["has_posterior"] and report["threshold"] == metrics.ACTIVE_KL_NATS
    assert report["num_active"] == 3
    by_index = {lat["index"]: lat for lat in report["per_latent"]}
    assert [by_index[i]["best_factor"] for i in range(4)] == ["f2", None, "f0", "f4"]
    assert by_index[2]["nmi"] > 0.9
    assert not by_index[1]["active"] and by_index[1]["posterior_variance"] == pytest.approx(0.99)
    kl = [by_index[i]["kl"] for i in range(4)]
    assert report["order"] == sorted(range(4), key=lambda i: -kl[i])
    assert [lat["name"] for lat in report["per_latent"]] == ["z0", "z1", "z2", "z3"]


def test_latent_report_kl_is_the_closed_form():
    """KL(N(mu, s^2) || N(0, 1)) = (mu^2 + s^2 - log s^2 - 1) / 2, averaged over images."""
    codes = np.array([[0.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    logvar = np.array([[0.0, 0.0, np.log(4.0)], [0.0, 0.0, np.log(4.0)]])
    report = metrics.latent_report(codes, logvar)
    assert [lat["kl"] for lat in report["per_latent"]] == pytest.approx([0.0, (0.5 + 4.5) / 2,
                                                                         (4 - np.log(4) - 1) / 2])
    assert [lat["active"] for lat in report["per_latent"]] == [False, True, True]
    assert [lat["code_variance"] for lat in report["per_latent"]] == pytest.approx([0.0, 1.0, 0.0])
    assert report["order"] == [1, 2, 0]


def test_latent_report_without_a_posterior_uses_the_spread_of_the_codes():
    rng = np.random.RandomState(1)
    codes = np.stack([0.3 * rng.randn(500), 0.01 * rng.randn(500), 2.0 * rng.randn(500)], axis=1)
    report = metrics.latent_report(codes)
    assert not report["has_posterior"] and report["threshold"] == metrics.FACTOR_VAE_PRUNE_STD
    assert report["order"] == [2, 0, 1]
    assert [lat["active"] for lat in report["per_latent"]] == [True, False, True]
    assert all(lat["kl"] is None and lat["posterior_variance"] is None for lat in report["per_latent"])
    assert all(lat["best_factor"] is None for lat in report["per_latent"])


def test_latent_names_count_from_zero():
    assert metrics.latent_names(3) == ["z0", "z1", "z2"]


def test_protocol_draws_are_the_images_the_scores_encode():
    """protocol_draws replays evaluate_all's draws: every factor row the scores ask images for, as often."""
    class Recording(SyntheticGroundTruth):
        def __init__(self):
            super().__init__((3, 4, 5))
            self.requested = []

        def images_for_factors(self, factors):
            self.requested.append(np.asarray(factors))
            return super().images_for_factors(factors)

    gt = Recording()
    metrics.evaluate_all(gt, truth_plus_noise(4, noise=0.3), seed=5, scale=0.01)
    requested = np.concatenate(gt.requested)
    planned = np.concatenate(list(metrics.protocol_draws(gt, seed=5, scale=0.01)))
    assert len(requested) == metrics.images_drawn(0.01)
    # The scores fetch in blocks (BetaVAE a block's two halves together), so compare rows with their counts.
    assert sorted(map(tuple, requested)) == sorted(map(tuple, planned))
    assert not np.array_equal(np.concatenate(list(metrics.protocol_draws(gt, seed=6, scale=0.01))), planned)


def test_mig_reports_its_mutual_information_matrix():
    result = metrics.mig(SMALL_GT, truth, np.random.RandomState(0), num_train=2000)
    mi = np.asarray(result["mutual_information"])
    assert mi.shape == (3, 3)
    entropy = np.asarray(result["factor_entropy"])
    assert np.allclose(np.diag(mi), entropy)  # each code is its factor
    top = -np.sort(-mi, axis=0)
    assert result["score"] == pytest.approx(float(np.mean((top[0] - top[1]) / entropy)))


def test_protocol_counts_scale_every_sample_count():
    full, tenth = metrics.protocol(1.0), metrics.protocol(0.1)
    assert full["beta_vae"] == {"batch_size": 64, "num_train": 10000, "num_eval": 5000}
    assert tenth["factor_vae"]["num_variance_estimate"] == 1000 and tenth["dci"]["num_test"] == 500
    assert tenth["beta_vae"]["batch_size"] == 64
