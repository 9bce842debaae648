"""Disentanglement scores with the protocol and defaults of disentanglement_lib.

Every score takes a ground-truth data object ``gt`` (see ``GroundTruth``), a
representation function ``represent(images) -> (n, z) codes`` (the encoder
mean) and a ``numpy.random.RandomState``; with the same state the result is
identical.  Point counts, batch sizes, classifiers and thresholds are the ones
disentanglement_lib used for Locatello et al. (2019), so numbers are
comparable with theirs; the few places where we deviate are marked in the
docstrings.  Each score first draws all its random samples (``_*_draws``, in
the library's order), then encodes and fits; ``protocol_draws`` replays the
draws alone, so a caller can encode every image the protocol will ask for in
one ordered pass (evaluate.py does).

    BetaVAE score   (Higgins et al. 2017)    beta_vae_score
    FactorVAE score (Kim & Mnih 2018)        factor_vae_score
    MIG             (Chen et al. 2018)       mig
    DCI             (Eastwood & Williams 18) dci
    SAP             (Kumar et al. 2018)      sap
    IRS             (Suter et al. 2019)      irs_score            (irs.py)
    modularity and explicitness
                    (Ridgeway & Mozer 2018)  modularity_score     (modularity.py)
    Gaussian total and Wasserstein correlation, mutual-information score
                    (disentanglement_lib)    unsupervised_score   (unsupervised.py)

UDR (Duan et al. 2020) compares several models, so it is computed across a study's models
(udr.py, studies/report.py), not here.

Every score draws its points exactly as the library does for the same RandomState: BetaVAE and
FactorVAE batch by batch, the others through ``batched_factors`` (16 points at a time, the library's
``generate_batch_factor_code``).  docs/evaluation.md lists which scikit-learn defaults each score
reproduces.

``evaluate_all`` runs them all with timings, ``summary_scores`` flattens the
result, ``format_table`` prints it, and ``latent_report`` describes each
latent (KL and posterior variance when the encoder has a posterior, the
code's variance over data, active flag, best-matching factor) for sorting
and labelling traversal rows.  Latents are named z0 .. z{N-1} everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from joblib import Parallel, delayed
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from evaluation import discrete, gbt, irs, modularity, unsupervised


class GroundTruth(Protocol):
    """What the metrics need from a data set with known generative factors."""

    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]

    def sample_factors(self, n: int, rng: np.random.RandomState) -> np.ndarray:
        """(n, F) int64 class index of every factor."""

    def images_for_factors(self, factors: np.ndarray) -> Any:
        """(n, F) factor indices (or the rows ``observe`` returns) -> (n, C, 64, 64) float tensor in [0, 1]."""

    # Optional: observe(factors (n, F), rng) -> (n, F + k) rows, for a data set whose
    # ``sample_observations_from_factors`` draws random numbers of its own (SmallNORB's instance):
    # the factors followed by what it drew.  See ``observe`` below.


# images -> (n, z) codes; the encoder mean.
Represent = Callable[[Any], np.ndarray]

# Points per batch of disentanglement_lib's generate_batch_factor_code (MIG, DCI, SAP, IRS, modularity,
# the unsupervised scores): its metrics' default ``batch_size=16``.
DLIB_POINT_BATCH = 16
# Most images rendered and encoded in one call, to bound memory.
REPRESENT_BATCH = 1000
# BetaVAE/FactorVAE training points generated per block (each needs one or
# two batches of images); bounds memory while keeping encoder calls large.
_POINTS_PER_BLOCK = 64
# FactorVAE: dimensions whose global std is below this are treated as
# collapsed (disentanglement_lib's ``prune_dims.threshold``).
FACTOR_VAE_PRUNE_STD = 0.05
# latent_report: a latent is active when its data-averaged KL exceeds this
# (nats), or, for an encoder without a posterior (no logvar), when the code's
# standard deviation over data reaches FACTOR_VAE_PRUNE_STD.  See latent_report.
ACTIVE_KL_NATS = 0.01


def latent_names(z_dim: int) -> list[str]:
    """The one numbering of latents, 0-based as arrays and traversals index them: z0 .. z{N-1}."""
    return [f"z{i}" for i in range(z_dim)]


# --------------------------------------------------------------------------
# sampling helpers


def _codes_for(gt: GroundTruth, represent: Represent, factors: np.ndarray) -> np.ndarray:
    """Render and encode ``factors`` (n, F) -> codes (n, z) float64, in batches."""
    chunks = []
    for start in range(0, len(factors), REPRESENT_BATCH):
        images = gt.images_for_factors(factors[start:start + REPRESENT_BATCH])
        chunks.append(np.asarray(represent(images), dtype=np.float64))
    return np.concatenate(chunks, axis=0)


def _blocks(num_points: int):
    """Yield sizes of consecutive blocks of at most _POINTS_PER_BLOCK points."""
    for start in range(0, num_points, _POINTS_PER_BLOCK):
        yield min(_POINTS_PER_BLOCK, num_points - start)


def observe(gt: GroundTruth, factors: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """What disentanglement_lib's ``sample_observations_from_factors`` draws, in its place in the order:
    rows (n, F + k) of the factors followed by the k columns it drew (SmallNORB: the instance), or the
    factors themselves for a data set that draws nothing there (``gt`` without ``observe``).  Images are
    rendered from these rows; the scores' labels are their first F columns (``labels``)."""
    return gt.observe(factors, rng) if hasattr(gt, "observe") else factors


def labels(gt: GroundTruth, rows: np.ndarray) -> np.ndarray:
    """(n, F + k) rows -> (n, F): the ground-truth factors the scores predict."""
    return rows[:, :len(gt.factor_sizes)]


def batched_factors(gt: GroundTruth, rng: np.random.RandomState, num_points: int,
                    batch_size: int = DLIB_POINT_BATCH) -> np.ndarray:
    """(num_points, F) factors drawn as disentanglement_lib's ``utils.generate_batch_factor_code`` draws
    them: ``batch_size`` points at a time, each batch ``sample_factors(b, rng)`` (one randint per factor)
    followed by ``sample_observations_from_factors(factors, rng)``.

    The second call draws nothing on most data sets: dSprites completes its factors with the one-valued
    colour factor through ``randint(1, size=b)``, which NumPy answers without touching the state
    (tests/test_metrics_more.py checks this), and Shapes3D, MPI3D and Cars3D have no factor outside the
    latent ones.  SmallNORB draws each image's instance there (``observe``).  Returns the rows of
    ``observe``: (num_points, F), or (num_points, F + k) with what the observations drew."""
    if num_points == 0:
        return observe(gt, np.zeros((0, len(gt.factor_sizes)), dtype=np.int64), rng)
    return np.concatenate([observe(gt, gt.sample_factors(min(batch_size, num_points - start), rng), rng)
                           for start in range(0, num_points, batch_size)])


# --------------------------------------------------------------------------
# BetaVAE score


def _beta_vae_factor_pairs(gt, rng, batch_size, num_points):
    """Draw ``num_points`` pairs of batches that share one factor.

    Random draws follow disentanglement_lib's order per point: the fixed factor
    k, then batch 1, then batch 2.  Returns labels (n,) and the two factor
    arrays, each (n * batch_size, F).
    """
    labels = np.empty(num_points, dtype=np.int64)
    first, second = [], []
    for i in range(num_points):
        labels[i] = rng.randint(len(gt.factor_sizes))
        factors1 = gt.sample_factors(batch_size, rng)
        factors2 = gt.sample_factors(batch_size, rng)
        factors2[:, labels[i]] = factors1[:, labels[i]]
        first.append(observe(gt, factors1, rng))  # the library renders batch 1, then batch 2
        second.append(observe(gt, factors2, rng))
    return labels, np.concatenate(first), np.concatenate(second)


def _beta_vae_draws(gt, rng, batch_size, num_train, num_eval) -> dict:
    """Every random draw of the BetaVAE score, in the library's order: the
    training points, the classifier's seed, the evaluation points."""
    train = _beta_vae_factor_pairs(gt, rng, batch_size, num_train)
    seed = rng.randint(np.iinfo(np.int32).max)
    return {"train": train, "seed": seed, "eval": _beta_vae_factor_pairs(gt, rng, batch_size, num_eval)}


def _beta_vae_points(gt, represent, pairs, batch_size, bar=None):
    """Training set of the BetaVAE classifier from drawn ``pairs`` (labels,
    factors1, factors2).

    Feature of a point = mean over the batch of |z(x1) - z(x2)| for pairs that
    share the factor k; the label is k.  Returns features (n, z), labels (n,).
    """
    labels, first, second = pairs
    features = []
    for start in range(0, len(labels), _POINTS_PER_BLOCK):
        size = min(_POINTS_PER_BLOCK, len(labels) - start)
        rows = slice(start * batch_size, (start + size) * batch_size)
        codes = _codes_for(gt, represent, np.concatenate([first[rows], second[rows]]))
        codes1, codes2 = np.split(codes.reshape(2 * size, batch_size, -1), 2)
        features.append(np.abs(codes1 - codes2).mean(axis=1))
        _advance(bar, size)
    return np.concatenate(features), labels


def _beta_vae_classifier(seed: int):
    """Logistic regression as disentanglement_lib ran it.

    The library calls ``LogisticRegression()`` with defaults; the scikit-learn
    of its time (<= 0.21) made that liblinear, one-vs-rest, C=1.  Today's
    default (multinomial lbfgs) gives different accuracies, so the old default
    is spelled out.
    """
    return OneVsRestClassifier(LogisticRegression(solver="liblinear", random_state=seed))


def beta_vae_score(gt: GroundTruth, represent: Represent, rng: np.random.RandomState,
                   batch_size: int = 64, num_train: int = 10000, num_eval: int = 5000, *, bar=None) -> dict:
    """BetaVAE score: accuracy of a linear classifier that predicts which factor
    was held fixed from the mean absolute code difference of a batch of pairs.

    Returns {'score': eval accuracy, 'train_accuracy', 'eval_accuracy'}.
    """
    return _beta_vae_score(gt, represent, _beta_vae_draws(gt, rng, batch_size, num_train, num_eval), batch_size,
                           bar)


def _beta_vae_score(gt, represent, draws, batch_size, bar=None) -> dict:
    train_x, train_y = _beta_vae_points(gt, represent, draws["train"], batch_size, bar)
    model = _beta_vae_classifier(draws["seed"])
    model.fit(train_x, train_y)
    eval_x, eval_y = _beta_vae_points(gt, represent, draws["eval"], batch_size, bar)
    train_acc = float(np.mean(model.predict(train_x) == train_y))
    eval_acc = float(np.mean(model.predict(eval_x) == eval_y))
    return {"score": eval_acc, "train_accuracy": train_acc, "eval_accuracy": eval_acc}


# --------------------------------------------------------------------------
# FactorVAE score


def _factor_vae_vote_draws(gt, rng, batch_size, num_votes):
    """Draw the batches of ``num_votes`` votes in the library's order (per vote
    the fixed factor k, then its batch): fixed (n,), factors (n * batch_size, F)."""
    fixed = np.empty(num_votes, dtype=np.int64)
    batches = []
    for i in range(num_votes):
        fixed[i] = rng.randint(len(gt.factor_sizes))
        factors = gt.sample_factors(batch_size, rng)
        factors[:, fixed[i]] = factors[0, fixed[i]]
        batches.append(observe(gt, factors, rng))
    if not batches:
        return fixed, observe(gt, np.zeros((0, len(gt.factor_sizes)), np.int64), rng)
    return fixed, np.concatenate(batches)


def _factor_vae_draws(gt, rng, batch_size, num_train, num_eval, num_variance_estimate) -> dict:
    """Every random draw of the FactorVAE score, in the library's order."""
    return {"variance": observe(gt, gt.sample_factors(num_variance_estimate, rng), rng),
            "train": _factor_vae_vote_draws(gt, rng, batch_size, num_train),
            "eval": _factor_vae_vote_draws(gt, rng, batch_size, num_eval)}


def _factor_vae_votes(gt, represent, drawn, batch_size, global_var, active, bar=None):
    """Votes (F, z): how often fixing factor k made dimension d the one with
    the smallest normalised variance (argmin over active dimensions only)."""
    fixed_all, factors = drawn
    num_factors = len(gt.factor_sizes)
    votes = np.zeros((num_factors, len(global_var)), dtype=np.int64)
    active_dims = np.flatnonzero(active)
    for start in range(0, len(fixed_all), _POINTS_PER_BLOCK):
        fixed = fixed_all[start:start + _POINTS_PER_BLOCK]
        size = len(fixed)
        block = factors[start * batch_size:(start + size) * batch_size]
        codes = _codes_for(gt, represent, block).reshape(size, batch_size, -1)
        local_var = codes[:, :, active_dims].var(axis=1, ddof=1)
        winners = active_dims[np.argmin(local_var / global_var[active_dims], axis=1)]
        np.add.at(votes, (fixed, winners), 1)
        _advance(bar, size)
    return votes


def _vote_accuracy(votes: np.ndarray, factor_of_dim: np.ndarray) -> float:
    """Accuracy of the majority-vote classifier dim -> factor on ``votes`` (F, z)."""
    correct = votes[factor_of_dim, np.arange(votes.shape[1])].sum()
    return float(correct / votes.sum())


def factor_vae_score(gt: GroundTruth, represent: Represent, rng: np.random.RandomState,
                     batch_size: int = 64, num_train: int = 10000, num_eval: int = 5000,
                     num_variance_estimate: int = 10000, *, bar=None) -> dict:
    """FactorVAE score: accuracy of the majority-vote classifier that maps the
    dimension of least normalised variance (given a fixed factor) to that factor.

    Dimensions with global std < 0.05 are pruned first.  Returns {'score': eval
    accuracy, 'train_accuracy', 'eval_accuracy', 'num_active_dims'}.
    'num_active_dims' is the number of dimensions kept (disentanglement_lib's
    field of that name reports the total dimension count, a known slip).
    """
    draws = _factor_vae_draws(gt, rng, batch_size, num_train, num_eval, num_variance_estimate)
    return _factor_vae_score(gt, represent, draws, batch_size, bar)


def _factor_vae_score(gt, represent, draws, batch_size, bar=None) -> dict:
    codes = _codes_for(gt, represent, draws["variance"])
    _advance(bar, len(codes))
    global_var = codes.var(axis=0, ddof=1)
    active = np.sqrt(global_var) >= FACTOR_VAE_PRUNE_STD
    if not active.any():
        return {"score": 0.0, "train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    train_votes = _factor_vae_votes(gt, represent, draws["train"], batch_size, global_var, active, bar)
    factor_of_dim = np.argmax(train_votes, axis=0)
    eval_votes = _factor_vae_votes(gt, represent, draws["eval"], batch_size, global_var, active, bar)
    eval_acc = _vote_accuracy(eval_votes, factor_of_dim)
    return {"score": eval_acc, "train_accuracy": _vote_accuracy(train_votes, factor_of_dim),
            "eval_accuracy": eval_acc, "num_active_dims": int(active.sum())}


# --------------------------------------------------------------------------
# MIG


# The shared discrete helpers (discrete.py), under the names this module has always used.
_histogram_discretize = discrete.histogram_discretize
_mutual_info_matrix = discrete.mutual_info_matrix
_factor_entropies = discrete.entropies


def mig(gt: GroundTruth, represent: Represent, rng: np.random.RandomState,
        num_train: int = 10000, num_bins: int = 20, *, bar=None) -> dict:
    """Mutual Information Gap: per factor, (largest - second largest mutual
    information with a single discretised code) / factor entropy, averaged.

    Factors with zero entropy in the sample (constant) are left out of the mean.
    Returns {'score', 'per_factor': {name: gap}, 'mutual_information': (z, F)
    nested list in nats, 'factor_entropy': (F,)}.
    """
    return _mig_score(gt, represent, {"train": batched_factors(gt, rng, num_train)}, num_bins, bar)


def _mig_score(gt, represent, draws, num_bins=20, bar=None) -> dict:
    codes = _codes_for(gt, represent, draws["train"])
    factors = labels(gt, draws["train"])
    _advance(bar, len(codes))
    mi = _mutual_info_matrix(_histogram_discretize(codes, num_bins), factors)
    entropy = _factor_entropies(factors)
    top_two = -np.sort(-mi, axis=0)[:2] if mi.shape[0] > 1 else np.vstack([mi, np.zeros_like(mi)])
    with np.errstate(invalid="ignore", divide="ignore"):
        gaps = np.where(entropy > 0, (top_two[0] - top_two[1]) / entropy, np.nan)
    return {"score": float(np.nanmean(gaps)),
            "per_factor": dict(zip(gt.factor_names, gaps.tolist(), strict=True)),
            "mutual_information": mi.tolist(), "factor_entropy": entropy.tolist()}


# --------------------------------------------------------------------------
# DCI

DCI_ESTIMATORS = ("gbt", "sklearn", "hist")


def _fit_gbt(x_train, y_train, seed):
    """disentanglement_lib's model, GradientBoostingClassifier with default
    parameters (100 depth-3 trees, learning rate 0.1, exact splits), built by
    gbt.py: the same trees as scikit-learn's, split for split, many times
    faster.  The seed only fixes how exact ties between equally good splits
    are broken (the library leaves it unseeded).  Returns (model, importances (z,))."""
    model = gbt.fit(x_train, y_train, random_state=seed)
    return model, np.abs(model.feature_importances_)


def _fit_sklearn(x_train, y_train, seed):
    """The same model fitted by scikit-learn itself: the check on gbt.py, and minutes slower."""
    model = GradientBoostingClassifier(random_state=seed).fit(x_train, y_train)
    return model, np.abs(model.feature_importances_)


def _fit_hist(x_train, y_train, seed):
    """Faster stand-in, NOT the library's model: HistGradientBoostingClassifier
    shaped like the default GBT (100 depth-3 trees, learning rate 0.1, no
    early stopping, leaves of 1 sample allowed), but splits on 255 quantile
    bins and uses Newton leaf values.  Importance = total split gain per code,
    normalised.  Returns (model, importances (z,))."""
    model = HistGradientBoostingClassifier(
        max_depth=3, max_leaf_nodes=None, min_samples_leaf=1, learning_rate=0.1,
        max_iter=100, early_stopping=False, random_state=seed).fit(x_train, y_train)
    gains = np.zeros(x_train.shape[1])
    # Per-split gains are only exposed on the fitted tree predictors.
    for trees_of_iteration in model._predictors:
        for tree in trees_of_iteration:
            splits = tree.nodes[tree.nodes["is_leaf"] == 0]
            np.add.at(gains, splits["feature_idx"], splits["gain"])
    return model, gains / gains.sum() if gains.sum() > 0 else gains


def _fit_factor(x_train, y_train, x_test, y_test, estimator, seed):
    """Fit one factor's classifier; returns (importances (z,), train acc, test acc)."""
    if len(np.unique(y_train)) < 2:  # scikit-learn refuses one class; nothing to explain
        return np.zeros(x_train.shape[1]), 1.0, float(np.mean(y_test == y_train[0]))
    fit = {"gbt": _fit_gbt, "sklearn": _fit_sklearn, "hist": _fit_hist}[estimator]
    model, importance = fit(x_train, y_train, seed)
    train_acc = float(np.mean(model.predict(x_train) == y_train))
    test_acc = float(np.mean(model.predict(x_test) == y_test))
    return importance, train_acc, test_acc


def _fit_all_factors(x_train, y_train, x_test, y_test, estimator, seeds, n_jobs, bar=None):
    """Fit the F per-factor classifiers in parallel threads.

    The fits are independent, and scikit-learn's tree building releases the
    GIL, so threads use every core without copying data to processes.  The
    factors with most classes (most trees: one per class per stage) start
    first so the cores finish together.  Each model is single-threaded to
    avoid oversubscription.  Returns a list of F results of _fit_factor.
    """
    num_factors = y_train.shape[1]
    order = sorted(range(num_factors), key=lambda f: -len(np.unique(y_train[:, f])))
    def fit(f):
        result = _fit_factor(x_train, y_train[:, f], x_test, y_test[:, f], estimator, seeds[f])
        _advance(bar, 1)
        return result

    with threadpool_limits(limits=1):
        results = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(fit)(f) for f in order)
    by_factor = dict(zip(order, results, strict=True))
    return [by_factor[f] for f in range(num_factors)]


def _canonical_code_order(codes: np.ndarray) -> np.ndarray:
    """Order (z,) of the code columns that depends only on how each column
    ranks the samples, i.e. not on the codes' labels or (monotone) scales.

    scikit-learn's trees break exact ties between equally good splits (common
    in small nodes) by visiting features in a seeded random order of column
    positions.  Fitting on columns in this order makes that tie-breaking, and
    with it DCI, invariant to permuting or rescaling latents.
    """
    ranks = np.argsort(codes, axis=0, kind="stable")  # (n, z): column j's sample order
    return np.lexsort(ranks[::-1])  # lexicographic on the rank vectors


def _one_minus_entropy(weights: np.ndarray) -> np.ndarray:
    """Rows (m, k) of non-negative weights -> (m,) 1 - entropy of each
    normalised row in base k (1 = all weight on one column).  Adds 1e-11 like
    disentanglement_lib, so an all-zero row counts as uniform."""
    p = weights + 1e-11
    p = p / p.sum(axis=1, keepdims=True)
    if weights.shape[1] < 2:
        return np.ones(weights.shape[0])
    return 1.0 + (p * np.log(p)).sum(axis=1) / np.log(weights.shape[1])


def _weighted_concentration(importance: np.ndarray) -> float:
    """Sum over rows of (1 - row entropy) weighted by each row's share of the
    total importance (uniform weights if all importances are zero)."""
    total = importance.sum()
    rows = importance.shape[0]
    weight = importance.sum(axis=1) / total if total > 0 else np.full(rows, 1.0 / rows)
    return float(_one_minus_entropy(importance) @ weight)


def dci(gt: GroundTruth, represent: Represent, rng: np.random.RandomState,
        num_train: int = 10000, num_test: int = 5000, *,
        estimator: str = "gbt", n_jobs: int = -1, bar=None) -> dict:
    """DCI (Eastwood & Williams 2018) from per-factor tree importances.

    R[i, j] = importance of code i for predicting factor j (one classifier per
    factor, trained on num_train points, tested on num_test).
    disentanglement = sum_i (1 - H_F(R[i, :])) * share of code i;
    completeness    = sum_j (1 - H_z(R[:, j])) * share of factor j;
    informativeness = mean classification accuracy (train and test).

    estimator='gbt' (default) is disentanglement_lib's GradientBoostingClassifier
    with default parameters, built by gbt.py (the same trees as scikit-learn's
    for the same seed; factors fitted in parallel threads); estimator='sklearn'
    fits it with scikit-learn itself (same result, minutes slower).  Exact ties
    between splits are broken in a fixed, label-free way (_canonical_code_order)
    where the library leaves them to an unseeded random feature order.
    estimator='hist' is a much faster approximation (see _fit_hist) whose
    numbers are close to but not those of the library.
    Returns {'score': disentanglement, 'disentanglement', 'completeness',
    'informativeness_train', 'informativeness_test', 'estimator',
    'importance': (z, F) nested list, 'test_accuracy': {name: acc}}.
    """
    if estimator not in DCI_ESTIMATORS:
        raise ValueError(f"estimator must be one of {DCI_ESTIMATORS}, got {estimator!r}")
    draws = _train_test_draws(gt, rng, num_train, num_test, len(gt.factor_sizes))
    return _dci_score(gt, represent, draws, estimator, n_jobs, bar)


def _train_test_draws(gt, rng, num_train, num_test, num_seeds=None) -> dict:
    """DCI's and SAP's draws, in the library's order: training points, test
    points (each in batches of 16, batched_factors), then the classifiers' seeds (DCI: one per
    factor; SAP: one, a scalar draw).  The library leaves both classifiers unseeded; the seeds come
    after every point, so they change no point."""
    train, test = batched_factors(gt, rng, num_train), batched_factors(gt, rng, num_test)
    return {"train": train, "test": test, "seeds": rng.randint(np.iinfo(np.int32).max, size=num_seeds)}


def _dci_score(gt, represent, draws, estimator="gbt", n_jobs=-1, bar=None) -> dict:
    x_train, x_test = _codes_for(gt, represent, draws["train"]), _codes_for(gt, represent, draws["test"])
    y_train, y_test = labels(gt, draws["train"]), labels(gt, draws["test"])
    order = _canonical_code_order(x_train)
    fits = _fit_all_factors(x_train[:, order], y_train, x_test[:, order], y_test, estimator,
                            draws["seeds"], n_jobs, bar)
    importance = np.empty((x_train.shape[1], y_train.shape[1]))  # (z, F), original code order
    importance[order] = np.stack([imp for imp, _, _ in fits], axis=1)
    disentanglement = _weighted_concentration(importance)
    return {
        "score": disentanglement,
        "disentanglement": disentanglement,
        "completeness": _weighted_concentration(importance.T),
        "informativeness_train": float(np.mean([acc for _, acc, _ in fits])),
        "informativeness_test": float(np.mean([acc for _, _, acc in fits])),
        "estimator": estimator,
        "importance": importance.tolist(),
        "test_accuracy": dict(zip(gt.factor_names, [acc for _, _, acc in fits], strict=True)),
    }


# --------------------------------------------------------------------------
# SAP


def _sap_discrete_matrix(x_train, y_train, x_test, y_test, seed, bar=None):
    """Score matrix (z, F): test accuracy of a linear SVM (C=0.01, balanced
    class weights) that predicts factor j from code i alone."""
    scores = np.zeros((x_train.shape[1], y_train.shape[1]))
    if bar is not None:
        bar.reset(total=scores.size)
    for i in range(x_train.shape[1]):
        for j in range(y_train.shape[1]):
            if len(np.unique(y_train[:, j])) < 2:  # scikit-learn refuses one class: every code predicts it
                scores[i, j] = np.mean(y_test[:, j] == y_train[0, j])
                _advance(bar, 1)
                continue
            svm = LinearSVC(C=0.01, class_weight="balanced", dual="auto", random_state=seed)
            svm.fit(x_train[:, i:i + 1], y_train[:, j])
            scores[i, j] = np.mean(svm.predict(x_test[:, i:i + 1]) == y_test[:, j])
            _advance(bar, 1)
    return scores


def _sap_continuous_matrix(x_train, y_train):
    """Score matrix (z, F): squared correlation of code i and factor j (0 when
    the code is constant)."""
    scores = np.zeros((x_train.shape[1], y_train.shape[1]))
    for i in range(x_train.shape[1]):
        for j in range(y_train.shape[1]):
            cov = np.cov(x_train[:, i], y_train[:, j], ddof=1)
            if cov[0, 0] > 1e-12:
                scores[i, j] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1])
    return scores


def sap(gt: GroundTruth, represent: Represent, rng: np.random.RandomState,
        num_train: int = 10000, num_test: int = 5000, *,
        continuous_factors: bool = False, bar=None) -> dict:
    """SAP score: per factor, the gap between the two codes that predict it
    best on their own, averaged over factors.

    As in disentanglement_lib's published configuration the factors are
    treated as discrete (continuous_factors=False): the score of (code, factor)
    is the test accuracy of a 1-D linear SVM.  scikit-learn now solves it in
    the primal (dual='auto') rather than the dual; same objective and optimum.
    Returns {'score', 'per_factor': {name: gap}}.
    """
    return _sap_score(gt, represent, _train_test_draws(gt, rng, num_train, num_test), continuous_factors, bar)


def _sap_score(gt, represent, draws, continuous_factors=False, bar=None) -> dict:
    x_train, x_test = _codes_for(gt, represent, draws["train"]), _codes_for(gt, represent, draws["test"])
    y_train, y_test = labels(gt, draws["train"]), labels(gt, draws["test"])
    if continuous_factors:
        scores = _sap_continuous_matrix(x_train, y_train)
    else:
        scores = _sap_discrete_matrix(x_train, y_train, x_test, y_test, int(draws["seeds"]), bar)
    ranked = np.sort(scores, axis=0)[::-1]
    second = ranked[1] if len(ranked) > 1 else np.zeros_like(ranked[0])
    gaps = ranked[0] - second
    return {"score": float(gaps.mean()), "per_factor": dict(zip(gt.factor_names, gaps.tolist(), strict=True))}


# --------------------------------------------------------------------------
# IRS, modularity and explicitness, the unsupervised scores: the arithmetic is in irs.py,
# modularity.py and unsupervised.py; here the draws and the encoding


def _encoded(gt, represent, factors, bar=None) -> np.ndarray:
    codes = _codes_for(gt, represent, factors)
    _advance(bar, len(codes))
    return codes


def _irs_score(gt, represent, draws, bar=None) -> dict:
    return irs.irs(labels(gt, draws["train"]), _encoded(gt, represent, draws["train"], bar))


def _modularity_score(gt, represent, draws, bar=None) -> dict:
    codes_train = _encoded(gt, represent, draws["train"], bar)
    codes_test = _encoded(gt, represent, draws["test"], bar)
    return modularity.modularity_explicitness(codes_train, labels(gt, draws["train"]), codes_test,
                                              labels(gt, draws["test"]))


def _unsupervised_score(gt, represent, draws, bar=None) -> dict:
    return unsupervised.unsupervised_scores(_encoded(gt, represent, draws["train"], bar))


def irs_score(gt: GroundTruth, represent: Represent, rng: np.random.RandomState,
              num_train: int = 10000, *, bar=None) -> dict:
    """IRS (Suter et al. 2019) on num_train points drawn in batches of 16; see irs.irs."""
    return _irs_score(gt, represent, {"train": batched_factors(gt, rng, num_train)}, bar)


def modularity_score(gt: GroundTruth, represent: Represent, rng: np.random.RandomState,
                     num_train: int = 10000, num_test: int = 5000, *, bar=None) -> dict:
    """Modularity and explicitness (Ridgeway & Mozer 2018); see modularity.modularity_explicitness."""
    draws = {"train": batched_factors(gt, rng, num_train), "test": batched_factors(gt, rng, num_test)}
    return _modularity_score(gt, represent, draws, bar)


def unsupervised_score(gt: GroundTruth, represent: Represent, rng: np.random.RandomState,
                       num_train: int = 10000, *, bar=None) -> dict:
    """Gaussian total / Wasserstein correlation and mutual-information score; see unsupervised.py."""
    return _unsupervised_score(gt, represent, {"train": batched_factors(gt, rng, num_train)}, bar)


# --------------------------------------------------------------------------
# all together


def _points(count: int, scale: float) -> int:
    """A protocol point count at a reduced scale (at least 2, so every classifier sees two points)."""
    return max(2, int(round(count * scale)))


def protocol(scale: float = 1.0) -> dict:
    """Every sample count of the scores at this scale (1.0: disentanglement_lib's published protocol),
    as the keyword arguments of their functions."""
    def n(count: int) -> int:
        return _points(count, scale)
    return {
        "beta_vae": {"batch_size": 64, "num_train": n(10000), "num_eval": n(5000)},
        "factor_vae": {"batch_size": 64, "num_train": n(10000), "num_eval": n(5000),
                       "num_variance_estimate": n(10000)},
        "mig": {"num_train": n(10000), "num_bins": 20},
        "dci": {"num_train": n(10000), "num_test": n(5000)},
        "sap": {"num_train": n(10000), "num_test": n(5000)},
        "irs": {"num_train": n(10000)},
        "modularity": {"num_train": n(10000), "num_test": n(5000)},
        "unsupervised": {"num_train": n(10000)},
    }


def images_drawn(scale: float = 1.0) -> int:
    """How many images the scores draw in all at this scale (with repeats): BetaVAE pairs of
    batches of 64, FactorVAE batches of 64 plus its variance sample, then MIG, DCI, SAP, IRS,
    modularity and the unsupervised scores.  At scale 1 that is about 2.95 million, four times
    dSprites' 737,280 images."""
    c = protocol(scale)
    b, f = c["beta_vae"], c["factor_vae"]
    return ((b["num_train"] + b["num_eval"]) * b["batch_size"] * 2
            + f["num_variance_estimate"] + (f["num_train"] + f["num_eval"]) * f["batch_size"]
            + c["mig"]["num_train"] + c["irs"]["num_train"] + c["unsupervised"]["num_train"]
            + sum(c[k]["num_train"] + c[k]["num_test"] for k in ("dci", "sap", "modularity")))


def _steps(gt: GroundTruth, scale: float, dci_estimator: str = "gbt", n_jobs: int = -1) -> dict:
    """The scores as name -> (draw(rng) -> draws, score(represent, draws, bar) -> result, progress bar
    total and unit). Every random number a score uses comes from its draw, in the library's order."""
    c = protocol(scale)
    b, f, d, s = c["beta_vae"], c["factor_vae"], c["dci"], c["sap"]
    return {
        "beta_vae": (lambda rng: _beta_vae_draws(gt, rng, **b),
                     lambda rep, draws, bar: _beta_vae_score(gt, rep, draws, b["batch_size"], bar),
                     b["num_train"] + b["num_eval"], "points"),
        "factor_vae": (lambda rng: _factor_vae_draws(gt, rng, **f),
                       lambda rep, draws, bar: _factor_vae_score(gt, rep, draws, f["batch_size"], bar),
                       f["num_variance_estimate"] + f["num_train"] + f["num_eval"], "points"),
        "mig": (lambda rng: {"train": batched_factors(gt, rng, c["mig"]["num_train"])},
                lambda rep, draws, bar: _mig_score(gt, rep, draws, c["mig"]["num_bins"], bar),
                c["mig"]["num_train"], "points"),
        "dci": (lambda rng: _train_test_draws(gt, rng, d["num_train"], d["num_test"], len(gt.factor_sizes)),
                lambda rep, draws, bar: _dci_score(gt, rep, draws, dci_estimator, n_jobs, bar),
                len(gt.factor_sizes), "fits"),
        "sap": (lambda rng: _train_test_draws(gt, rng, s["num_train"], s["num_test"]),
                lambda rep, draws, bar: _sap_score(gt, rep, draws, False, bar), None, "fits"),
        "irs": (lambda rng: {"train": batched_factors(gt, rng, c["irs"]["num_train"])},
                lambda rep, draws, bar: _irs_score(gt, rep, draws, bar), c["irs"]["num_train"], "points"),
        "modularity": (lambda rng: {"train": batched_factors(gt, rng, c["modularity"]["num_train"]),
                                    "test": batched_factors(gt, rng, c["modularity"]["num_test"])},
                       lambda rep, draws, bar: _modularity_score(gt, rep, draws, bar),
                       c["modularity"]["num_train"] + c["modularity"]["num_test"], "points"),
        "unsupervised": (lambda rng: {"train": batched_factors(gt, rng, c["unsupervised"]["num_train"])},
                         lambda rep, draws, bar: _unsupervised_score(gt, rep, draws, bar),
                         c["unsupervised"]["num_train"], "points"),
    }


def protocol_draws(gt: GroundTruth, seed: int = 0, scale: float = 1.0):
    """Yield every (n, F) array of factors that evaluate_all(gt, represent, seed, scale) encodes, from the
    same draws: to encode all of those images ahead, in one ordered pass (no representation is run here)."""
    for draw, *_ in _steps(gt, scale).values():
        yield from _factor_arrays(draw(np.random.RandomState(seed)))


def _factor_arrays(draws):
    """The (n, F) factor arrays inside a score's draws (dicts and tuples of arrays and seeds)."""
    if isinstance(draws, dict):
        draws = list(draws.values())
    if isinstance(draws, (list, tuple)):
        for part in draws:
            yield from _factor_arrays(part)
    elif isinstance(draws, np.ndarray) and draws.ndim == 2:
        yield draws


def _advance(bar, count: int) -> None:
    if bar is not None:
        bar.update(count)


def evaluate_all(gt: GroundTruth, represent: Represent, seed: int = 0, scale: float = 1.0, *,
                 dci_estimator: str = "gbt", n_jobs: int = -1, verbose: bool = False,
                 progress: bool = False) -> dict:
    """Run every score, each from its own RandomState(seed) as
    disentanglement_lib does, so one score does not depend on another.

    ``scale`` multiplies every point count (1.0 = the published protocol;
    smaller values for quick checks, at least ~0.01).  Batch sizes stay 64.
    Returns {'beta_vae', 'factor_vae', 'mig', 'dci', 'sap', 'irs', 'modularity', 'unsupervised': dicts
    with 'score',
    'seconds': {metric: wall seconds, ..., 'total'}}.  ``verbose`` prints each
    score as it finishes; ``progress`` shows a progress bar per score.
    """
    result: dict = {}
    seconds: dict = {}
    for name, (draw, score, total, unit) in _steps(gt, scale, dci_estimator, n_jobs).items():
        start = time.perf_counter()
        with tqdm(total=total, desc=name, unit=unit, leave=False, disable=not progress) as bar:
            result[name] = score(represent, draw(np.random.RandomState(seed)), bar)
        seconds[name] = time.perf_counter() - start
        if verbose:
            print(f"{name:<10} score {result[name]['score']:.4f}  ({seconds[name]:.1f} s)",
                  flush=True)
    seconds["total"] = sum(seconds.values())
    result["seconds"] = seconds
    return result


def summary_scores(result: dict) -> dict[str, float]:
    """Flatten an evaluate_all result to the headline numbers."""
    return {
        "beta_vae": result["beta_vae"]["score"],
        "factor_vae": result["factor_vae"]["score"],
        "mig": result["mig"]["score"],
        "dci_disentanglement": result["dci"]["disentanglement"],
        "dci_completeness": result["dci"]["completeness"],
        "dci_informativeness": result["dci"]["informativeness_test"],
        "sap": result["sap"]["score"],
        "irs": result["irs"]["score"],
        "modularity": result["modularity"]["modularity"],
        "explicitness": result["modularity"]["explicitness_test"],
        "gaussian_total_correlation": result["unsupervised"]["gaussian_total_correlation"],
        "gaussian_wasserstein_correlation": result["unsupervised"]["gaussian_wasserstein_correlation"],
        "mutual_info_score": result["unsupervised"]["mutual_info_score"],
    }


def format_table(result: dict) -> str:
    """Readable text table of an evaluate_all result."""
    b, f, d = result["beta_vae"], result["factor_vae"], result["dci"]
    m, u = result["modularity"], result["unsupervised"]
    rows = [
        ("BetaVAE", b["score"], f"train acc {b['train_accuracy']:.3f}", "beta_vae"),
        ("FactorVAE", f["score"],
         f"train acc {f['train_accuracy']:.3f}, {f['num_active_dims']} latents kept (std over data >= "
         f"{FACTOR_VAE_PRUNE_STD}; not the latent report's 'active')", "factor_vae"),
        ("MIG", result["mig"]["score"], "", "mig"),
        ("DCI", d["disentanglement"],
         f"completeness {d['completeness']:.3f}, informativeness "
         f"{d['informativeness_test']:.3f} (train {d['informativeness_train']:.3f}), "
         f"{d['estimator']}", "dci"),
        ("SAP", result["sap"]["score"], "", "sap"),
        ("IRS", result["irs"]["score"], f"{result['irs']['num_active_dims']} latents kept (any variance)", "irs"),
        ("Modularity", m["modularity"], f"explicitness {m['explicitness_test']:.3f} (train "
         f"{m['explicitness_train']:.3f})", "modularity"),
        ("Gauss. TC", u["gaussian_total_correlation"], f"Wasserstein corr. {u['gaussian_wasserstein_correlation']:.3f}"
         f" (normalised {u['gaussian_wasserstein_correlation_norm']:.3f}), mutual info {u['mutual_info_score']:.3f} "
         "nats; unsupervised, lower is more factorised", "unsupervised"),
    ]
    seconds = result.get("seconds", {})
    lines = [f"{'metric':<10} {'score':>6}  {'seconds':>7}  details"]
    for label, score, details, key in rows:
        lines.append(f"{label:<10} {score:>6.3f}  {seconds.get(key, float('nan')):>7.1f}  {details}")
    if "encoding" in seconds:
        lines.append(f"{'encoding':<10} {'':>6}  {seconds['encoding']:>7.1f}  each image drawn, once, before the "
                     "scores")
    if "latent_report" in seconds:
        lines.append(f"{'report':<10} {'':>6}  {seconds['latent_report']:>7.1f}  the latent report")
    if "total" in seconds:
        lines.append(f"{'total':<10} {'':>6}  {seconds['total']:>7.1f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# per-latent report


def latent_report(codes: np.ndarray, logvar: np.ndarray | None = None, factors: np.ndarray | None = None,
                  factor_names=None, *, active_threshold: float = ACTIVE_KL_NATS,
                  active_std: float = FACTOR_VAE_PRUNE_STD, num_bins: int = 20) -> dict:
    """Describe each latent z0 .. z{N-1} from an encoder's outputs on the same n images.

    codes (n, z): the encoder's codes (the posterior mean for a VAE);
    logvar (n, z) or None: log-variance of the encoder's diagonal Gaussian
    posterior, when it has one (a VAE; not InfoGAN's recognition network, PCA
    or ICA); factors (n, F) and factor_names, optional: the images' true factors.

    Per latent: 'code_variance', the variance of the code over the images;
    with a posterior, 'kl' = KL(q(z_i|x) || N(0, 1)) and 'posterior_variance'
    = sigma^2, both averaged over the images (None without one).

    Active:
    - with a posterior, when its KL > active_threshold (0.01 nats).  A latent
      whose posterior stays within 0.01 nats of the prior for every input
      carries under 0.015 bits about the image, so its traversal shows
      nothing; in trained beta-VAEs collapsed latents sit around
      1e-4..1e-3 nats and used ones at tenths of a nat or more, so the exact
      value rarely matters.
    - without one, when the code's standard deviation over the images is at
      least active_std (0.05, the FactorVAE score's pruning threshold,
      disentanglement_lib's prune_dims): the latents that score keeps.  Such a
      code has no prior to be measured against, so only how much it varies
      tells a used latent from a constant one.

    For each active latent, when factors are given, the factor it captures
    best is the one with the highest normalised mutual information
    I(code; factor) / H(factor) (code discretised into num_bins equal-width bins
    as for MIG), i.e. the fraction of that factor's entropy the latent explains.

    Returns {'has_posterior', 'active_rule' (in words), 'threshold' (the one in
    use), 'num_active', 'order': latent indices, by KL descending with a
    posterior and by code variance without, 'per_latent': [per latent, in index
    order: {'index', 'name', 'kl', 'posterior_variance', 'code_variance',
    'active', 'best_factor', 'nmi'}]} ('best_factor'/'nmi' are None for
    inactive latents or without factors).
    """
    codes = np.asarray(codes, dtype=np.float64)
    code_variance = codes.var(axis=0) if len(codes) else np.zeros(codes.shape[1])
    if logvar is not None:
        logvar = np.asarray(logvar, dtype=np.float64)
        kl = (-0.5 * (1 + logvar - codes ** 2 - np.exp(logvar))).mean(axis=0)  # as losses.kl_divergence
        posterior_variance = np.exp(logvar).mean(axis=0)
        active, threshold = kl > active_threshold, active_threshold
        rule = f"KL from the prior above {active_threshold} nats"
        order = np.argsort(-kl, kind="stable")
    else:
        kl = posterior_variance = None
        active, threshold = np.sqrt(code_variance) >= active_std, active_std
        rule = f"standard deviation of the code over data at least {active_std} (the FactorVAE score's pruning)"
        order = np.argsort(-code_variance, kind="stable")
    nmi = None
    if factors is not None:
        factors = np.asarray(factors)
        entropy = _factor_entropies(factors)
        mi = _mutual_info_matrix(_histogram_discretize(codes, num_bins), factors)
        nmi = np.divide(mi, entropy, out=np.zeros_like(mi), where=entropy > 0)
        if factor_names is None:
            factor_names = [f"factor{j}" for j in range(factors.shape[1])]
    per_latent = []
    for i, name in enumerate(latent_names(codes.shape[1])):
        best = int(np.argmax(nmi[i])) if nmi is not None and active[i] else None
        per_latent.append({
            "index": i, "name": name,
            "kl": float(kl[i]) if kl is not None else None,
            "posterior_variance": float(posterior_variance[i]) if posterior_variance is not None else None,
            "code_variance": float(code_variance[i]), "active": bool(active[i]),
            "best_factor": factor_names[best] if best is not None else None,
            "nmi": float(nmi[i, best]) if best is not None else None,
        })
    return {
        "has_posterior": logvar is not None,
        "active_rule": rule,
        "threshold": threshold,
        "num_active": int(active.sum()),
        "order": [int(i) for i in order],
        "per_latent": per_latent,
    }
