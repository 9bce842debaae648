"""Known answers for the scores added after the first five (IRS, modularity and explicitness, the
unsupervised scores, UDR) and for drawing points as disentanglement_lib does.

Bounds on the identity, constant and duplicated representations are those of disentanglement_lib's own
tests (irs_test.py, modularity_explicitness_test.py, unsupervised_metrics_test.py, udr_test.py)."""

import math

import numpy as np
import pytest
from test_metrics import SyntheticGroundTruth, truth

from evaluation import irs, metrics, modularity, udr, unsupervised

IDENTITY = SyntheticGroundTruth((10,) * 10)  # the library's IdentityObservationsData: ten factors of ten values
SMALL = SyntheticGroundTruth((3, 4, 5))


def duplicated(images):
    codes = truth(images)
    return np.hstack([codes, codes])


def constant(images):
    return np.zeros((len(images), 4))


# ----------------------------------------------------------------------------- the library's draws


def test_a_one_valued_factor_draws_nothing_from_the_random_state():
    """dSprites' colour (one value) is completed with randint(1, size=b): NumPy consumes no state for it, so
    dSprites' observations add no draws to the library's batches."""
    rng = np.random.RandomState(0)
    before = rng.get_state()
    assert (rng.randint(1, size=16) == 0).all()
    after = rng.get_state()
    assert np.array_equal(before[1], after[1]) and before[2:] == after[2:]


def test_points_are_drawn_in_batches_of_16_as_generate_batch_factor_code_does():
    rng = np.random.RandomState(7)
    expected = np.concatenate([SMALL.sample_factors(16, rng), SMALL.sample_factors(16, rng),
                               SMALL.sample_factors(8, rng)])
    assert np.array_equal(metrics.batched_factors(SMALL, np.random.RandomState(7), 40), expected)
    assert not np.array_equal(SMALL.sample_factors(40, np.random.RandomState(7)), expected)  # the order matters


def test_mig_dci_sap_and_the_new_scores_draw_their_points_in_batches_of_16():
    draws = {name: draw(np.random.RandomState(3)) for name, (draw, *_) in metrics._steps(SMALL, 0.01).items()}
    def batched(*counts):
        rng = np.random.RandomState(3)
        return [metrics.batched_factors(SMALL, rng, n) for n in counts]
    assert np.array_equal(draws["mig"]["train"], batched(100)[0])
    for name, counts in (("dci", (100, 50)), ("sap", (100, 50)), ("modularity", (100, 50))):
        train, test = batched(*counts)
        assert np.array_equal(draws[name]["train"], train) and np.array_equal(draws[name]["test"], test), name
    assert np.array_equal(draws["irs"]["train"], batched(100)[0])
    assert np.array_equal(draws["unsupervised"]["train"], batched(100)[0])


# ----------------------------------------------------------------------------- IRS


def test_irs_of_the_identity_constant_and_duplicated_representations():
    rng = np.random.RandomState
    assert 0.9 <= metrics.irs_score(IDENTITY, truth, rng(0), num_train=3000)["score"] <= 1.0
    dup = metrics.irs_score(IDENTITY, duplicated, rng(0), num_train=3000)
    assert 0.9 <= dup["score"] <= 1.0 and dup["num_active_dims"] == 20
    flat = metrics.irs_score(IDENTITY, constant, rng(0), num_train=3000)
    assert flat["score"] == 0.0 and flat["num_active_dims"] == 0 and flat["per_latent"] == [None] * 4


def test_irs_matrix_by_hand():
    # One binary factor g; code 0 = g (fixed by it), code 1 = g plus +-1 noise that g does not fix.
    g = np.array([[0], [0], [1], [1]])
    codes = np.array([[0.0, -1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 2.0]])
    matrix, max_dev = irs.irs_matrix(g, codes, diff_quantile=1.0)
    # code 0: within each group no deviation -> 1.  code 1: mean 0.5, max deviation 1.5; in each group
    # the deviation from the group mean is 1 -> 1 - 1 / 1.5.
    assert max_dev.tolist() == [0.5, 1.5]
    assert matrix[:, 0].tolist() == pytest.approx([1.0, 1 - 1 / 1.5])


# ----------------------------------------------------------------------------- modularity, explicitness


@pytest.mark.parametrize("mi, expected", [
    (np.diag(5.0 * np.ones(5)), 1.0),  # one factor per code
    (np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), 2 / 3),  # an empty code scores 0
    (np.zeros((10, 10)), 0.0),
    (np.vstack([np.diag(5.0 * np.ones(5))] * 2), 1.0),  # redundant codes are still modular
    (np.diag(5.0 * np.ones(5))[:2], 1.0),  # factors nobody captures do not count
    (np.hstack([np.diag(5.0 * np.ones(5))] * 2), 1 - 1 / 9),  # each code shares itself between 2 of 10
])
def test_modularity_of_known_mutual_information(mi, expected):
    assert modularity.modularity(mi) == pytest.approx(expected)


def test_modularity_and_explicitness_of_the_identity_and_duplicated_representations():
    rng = np.random.RandomState
    ident = metrics.modularity_score(IDENTITY, truth, rng(0), num_train=1500, num_test=500)
    assert 0.9 <= ident["modularity"] <= 1.0 and ident["score"] == ident["modularity"]
    assert 0.8 <= ident["explicitness_test"] <= 1.0 and len(ident["explicitness_per_factor"]) == 10
    dup = metrics.modularity_score(IDENTITY, duplicated, rng(0), num_train=1500, num_test=500)
    assert 0.9 <= dup["modularity"] <= 1.0


def test_explicitness_is_half_for_codes_that_say_nothing():
    rng = np.random.RandomState(0)
    noise = lambda images: rng.randn(len(images), 3)  # noqa: E731
    result = metrics.modularity_score(SMALL, noise, np.random.RandomState(0), num_train=2000, num_test=2000)
    assert abs(result["explicitness_test"] - 0.5) < 0.05
    flat = metrics.modularity_score(SMALL, constant, np.random.RandomState(0), num_train=200, num_test=200)
    assert flat["modularity"] == 0.0 and flat["explicitness_test"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- unsupervised scores


def test_gaussian_total_and_wasserstein_correlation_by_hand():
    assert unsupervised.gaussian_total_correlation(np.eye(5)) == pytest.approx(0.0, abs=1e-12)
    assert unsupervised.gaussian_wasserstein_correlation(np.eye(5)) == pytest.approx(0.0, abs=1e-12)
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    # KL(N(0, S) || N(0, diag S)) = -log det(S) / 2 for unit variances; W2^2 = tr(S + D - 2 sqrt(S D)).
    assert unsupervised.gaussian_total_correlation(cov) == pytest.approx(-0.5 * math.log(1 - 0.81))
    eig = np.sqrt([1.9, 0.1])  # sqrt(S) has eigenvalues sqrt(1 +- 0.9)
    assert unsupervised.gaussian_wasserstein_correlation(cov) == pytest.approx(4 - 2 * eig.sum())


def test_unsupervised_scores_of_independent_and_duplicated_codes():
    rng = np.random.RandomState
    ident = metrics.unsupervised_score(SMALL, truth, rng(0), num_train=3000)
    assert abs(ident["gaussian_total_correlation"]) < 0.01 and ident["mutual_info_score"] < 0.01
    dup = metrics.unsupervised_score(SMALL, duplicated, rng(0), num_train=3000)
    assert dup["gaussian_total_correlation"] != dup["gaussian_total_correlation"]  # singular: NaN
    assert dup["mutual_info_score"] > 0.2  # each code shares all its information with its copy
    assert dup["gaussian_wasserstein_correlation_norm"] > 0.3


# ----------------------------------------------------------------------------- UDR


def test_relative_strength_of_known_correlation_matrices():
    assert udr.relative_strength(np.eye(3)) == 1.0
    assert udr.relative_strength(np.array([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]])) == pytest.approx(2 / 3)
    assert udr.relative_strength(np.ones((3, 3))) == pytest.approx(1 / 3)
    assert udr.relative_strength(np.zeros((3, 3))) == 0.0


def test_lasso_correlation_finds_the_copied_latent():
    x = np.random.RandomState(0).random_sample((1000, 3)) * 10
    y = x.copy()
    y[:, 1] = y[:, 0]
    assert np.allclose(udr.lasso_correlation(x, x), np.eye(3), atol=0.2)
    assert np.allclose(udr.lasso_correlation(x, y), [[1, 1, 0], [0, 0, 0], [0, 0, 1]], atol=0.2)


def test_udr_is_invariant_to_permuting_and_flipping_latents_and_filters_low_kl():
    rng = np.random.RandomState(0)
    codes = rng.randn(udr.NUM_POINTS, 5)
    other = codes[:, [3, 0, 4, 1, 2]] * np.array([1, -1, 1, -1, 1])
    scores = udr.udr([(codes, np.ones(5)), (other, np.ones(5))])["model_scores"]
    assert all(0.8 <= s <= 1.0 for s in scores)
    # Only latent 0 informative, the rest fresh noise in each model: low unless the KL filter drops the noise.
    def noisy():
        return np.hstack([codes[:, :1], rng.random_sample((udr.NUM_POINTS, 4))])
    kl = np.array([1.0, 0, 0, 0, 0])
    assert all(0.8 <= s <= 1.0 for s in udr.udr([(noisy(), kl), (noisy(), kl)])["model_scores"])
    unfiltered = udr.udr([(noisy(), np.ones(5)), (noisy(), np.ones(5))])["model_scores"]
    assert all(s < 0.5 for s in unfiltered)
    three = udr.udr([(codes, None), (other, None), (noisy(), None)])
    assert len(three["model_scores"]) == 3 and np.isnan(np.asarray(three["pairwise"])[1, 1])


def test_udr_draws_its_images_in_batches_of_10():
    rng = np.random.RandomState(0)
    expected = np.concatenate([SMALL.sample_factors(10, rng) for _ in range(100)])
    assert np.array_equal(udr.sample_factor_batches(SMALL, np.random.RandomState(0)), expected)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        udr.sample_factor_batches(SMALL, rng, num_points=15)


# ----------------------------------------------------------------------------- everywhere the five are


def test_every_score_reaches_the_summary_and_the_table():
    result = metrics.evaluate_all(SMALL, truth, seed=0, scale=0.02, dci_estimator="hist")
    summary = metrics.summary_scores(result)
    for key in ("irs", "modularity", "explicitness", "gaussian_total_correlation",
                "gaussian_wasserstein_correlation", "mutual_info_score"):
        assert key in summary
    table = metrics.format_table(result)
    for label in ("IRS", "Modularity", "explicitness", "Gauss. TC", "Wasserstein", "mutual info"):
        assert label in table
    assert metrics.protocol(1.0)["irs"] == {"num_train": 10000}
    assert metrics.protocol(1.0)["modularity"] == {"num_train": 10000, "num_test": 5000}
    assert metrics.protocol(1.0)["unsupervised"] == {"num_train": 10000}


def test_the_visdom_score_window_and_the_score_plot_take_every_summary_key():
    from monitoring import plots, visdom_sink

    summary = metrics.summary_scores(metrics.evaluate_all(SMALL, truth, seed=0, scale=0.01, dci_estimator="hist"))
    records = [{"iter": 100, "eval": summary}, {"iter": 200, "eval": summary}]
    window = visdom_sink._ScoreWindow()
    for record in records:
        window.add(record)
    assert set(window.points) == set(summary) and all(len(p) == 2 for p in window.points.values())
    figure = plots._scores(records, None)
    assert {line.get_label() for line in figure.axes[0].get_lines()} == set(summary)


# ----------------------------------------------------------------------------- disentanglement_lib's own numbers


class DSpritesFactors(SyntheticGroundTruth):
    """dSprites' factor grid; the 'images' are the factors."""

    def __init__(self):
        super().__init__((3, 6, 40, 32, 32))


def mixed(images):
    """10 codes: the five factors scaled to [0, 1) plus a small wobble, then five mixtures of them."""
    f = images.numpy() / np.array([3, 6, 40, 32, 32])
    w = np.random.RandomState(1).randn(5, 5)
    wobble = 0.05 * np.sin(37 * f @ w)
    return np.hstack([f + wobble, 0.3 * (f @ w) + wobble])


def test_the_full_protocol_gives_disentanglement_libs_numbers():
    """disentanglement_lib 1.5's own metric code (its PyPI wheel, run once with gin and tensorflow stubbed, on a
    ground truth drawing as its DSprites does: SplitDiscreteStateSpace) gave these values for `mixed` with
    RandomState(0) and its published sample counts; they need the draws in batches of 16."""
    gt, rng = DSpritesFactors(), np.random.RandomState
    assert metrics.mig(gt, mixed, rng(0))["score"] == pytest.approx(0.5850349623, abs=1e-9)
    assert metrics.irs_score(gt, mixed, rng(0))["score"] == pytest.approx(0.6335377054, abs=1e-9)
    unsup = metrics.unsupervised_score(gt, mixed, rng(0))
    assert unsup["gaussian_total_correlation"] == pytest.approx(10.5571641640, abs=1e-8)
    assert unsup["gaussian_wasserstein_correlation"] == pytest.approx(0.2520039386, abs=1e-9)
    assert unsup["mutual_info_score"] == pytest.approx(0.1172374978, abs=1e-9)
    # Drawn all at once instead, the same representation scores differently.
    once = metrics._mig_score(gt, mixed, {"train": gt.sample_factors(10000, rng(0))})["score"]
    assert abs(once - 0.5850349623) > 1e-6
