"""Disentanglement scores with the protocol and defaults of disentanglement_lib.

Every score takes a ground-truth data object ``gt`` (see ``GroundTruth``), a
representation function ``represent(images) -> (n, z) codes`` (the encoder
mean) and a ``numpy.random.RandomState``; with the same state the result is
identical.  Point counts, batch sizes, classifiers and thresholds are the ones
disentanglement_lib used for Locatello et al. (2019), so numbers are
comparable with theirs; the few places where we deviate are marked in the
docstrings.

    BetaVAE score   (Higgins et al. 2017)    beta_vae_score
    FactorVAE score (Kim & Mnih 2018)        factor_vae_score
    MIG             (Chen et al. 2018)       mig
    DCI             (Eastwood & Williams 18) dci
    SAP             (Kumar et al. 2018)      sap

``evaluate_all`` runs the five with timings, ``summary_scores`` flattens the
result, ``format_table`` prints it, and ``latent_report`` describes each
latent (KL, posterior variance, active flag, best-matching factor) for
sorting and labelling traversal rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from joblib import Parallel, delayed
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

import gbt


class GroundTruth(Protocol):
    """What the metrics need from a data set with known generative factors."""

    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]

    def sample_factors(self, n: int, rng: np.random.RandomState) -> np.ndarray:
        """(n, F) int64 class index of every factor."""

    def images_for_factors(self, factors: np.ndarray) -> Any:
        """(n, F) factor indices -> (n, C, 64, 64) float tensor in [0, 1]."""


# images -> (n, z) codes; the encoder mean.
Represent = Callable[[Any], np.ndarray]

# Most images rendered and encoded in one call, to bound memory.
REPRESENT_BATCH = 1000
# BetaVAE/FactorVAE training points generated per block (each needs one or
# two batches of images); bounds memory while keeping encoder calls large.
_POINTS_PER_BLOCK = 64
# FactorVAE: dimensions whose global std is below this are treated as
# collapsed (disentanglement_lib's ``prune_dims.threshold``).
FACTOR_VAE_PRUNE_STD = 0.05
# latent_report: a latent is active when its data-averaged KL exceeds this
# (nats).  See latent_report for the reasoning.
ACTIVE_KL_NATS = 0.01


# --------------------------------------------------------------------------
# sampling helpers


def _codes_for(gt: GroundTruth, represent: Represent, factors: np.ndarray) -> np.ndarray:
    """Render and encode ``factors`` (n, F) -> codes (n, z) float64, in batches."""
    chunks = []
    for start in range(0, len(factors), REPRESENT_BATCH):
        images = gt.images_for_factors(factors[start:start + REPRESENT_BATCH])
        chunks.append(np.asarray(represent(images), dtype=np.float64))
    return np.concatenate(chunks, axis=0)


def _observations(gt, represent, rng, num_points):
    """Sample ``num_points`` observations: codes (n, z) and their factors (n, F)."""
    factors = gt.sample_factors(num_points, rng)
    return _codes_for(gt, represent, factors), factors


def _blocks(num_points: int):
    """Yield sizes of consecutive blocks of at most _POINTS_PER_BLOCK points."""
    for start in range(0, num_points, _POINTS_PER_BLOCK):
        yield min(_POINTS_PER_BLOCK, num_points - start)


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
        first.append(factors1)
        second.append(factors2)
    return labels, np.concatenate(first), np.concatenate(second)


def _beta_vae_points(gt, represent, rng, batch_size, num_points):
    """Training set of the BetaVAE classifier.

    Feature of a point = mean over the batch of |z(x1) - z(x2)| for pairs that
    share the factor k; the label is k.  Returns features (n, z), labels (n,).
    """
    features, labels = [], []
    for size in _blocks(num_points):
        block_labels, factors1, factors2 = _beta_vae_factor_pairs(gt, rng, batch_size, size)
        codes = _codes_for(gt, represent, np.concatenate([factors1, factors2]))
        codes1, codes2 = np.split(codes.reshape(2 * size, batch_size, -1), 2)
        features.append(np.abs(codes1 - codes2).mean(axis=1))
        labels.append(block_labels)
    return np.concatenate(features), np.concatenate(labels)


def _beta_vae_classifier(seed: int):
    """Logistic regression as disentanglement_lib ran it.

    The library calls ``LogisticRegression()`` with defaults; the scikit-learn
    of its time (<= 0.21) made that liblinear, one-vs-rest, C=1.  Today's
    default (multinomial lbfgs) gives different accuracies, so the old default
    is spelled out.
    """
    return OneVsRestClassifier(LogisticRegression(solver="liblinear", random_state=seed))


def beta_vae_score(gt: GroundTruth, represent: Represent, rng: np.random.RandomState,
                   batch_size: int = 64, num_train: int = 10000, num_eval: int = 5000) -> dict:
    """BetaVAE score: accuracy of a linear classifier that predicts which factor
    was held fixed from the mean absolute code difference of a batch of pairs.

    Returns {'score': eval accuracy, 'train_accuracy', 'eval_accuracy'}.
    """
    train_x, train_y = _beta_vae_points(gt, represent, rng, batch_size, num_train)
    model = _beta_vae_classifier(rng.randint(np.iinfo(np.int32).max))
    model.fit(train_x, train_y)
    eval_x, eval_y = _beta_vae_points(gt, represent, rng, batch_size, num_eval)
    train_acc = float(np.mean(model.predict(train_x) == train_y))
    eval_acc = float(np.mean(model.predict(eval_x) == eval_y))
    return {"score": eval_acc, "train_accuracy": train_acc, "eval_accuracy": eval_acc}


# --------------------------------------------------------------------------
# FactorVAE score


def _factor_vae_votes(gt, represent, rng, batch_size, num_votes, global_var, active):
    """Votes (F, z): how often fixing factor k made dimension d the one with
    the smallest normalised variance (argmin over active dimensions only)."""
    num_factors = len(gt.factor_sizes)
    votes = np.zeros((num_factors, len(global_var)), dtype=np.int64)
    active_dims = np.flatnonzero(active)
    for size in _blocks(num_votes):
        fixed = np.empty(size, dtype=np.int64)
        batches = []
        for i in range(size):  # the library's draw order: k, then the batch
            fixed[i] = rng.randint(num_factors)
            factors = gt.sample_factors(batch_size, rng)
            factors[:, fixed[i]] = factors[0, fixed[i]]
            batches.append(factors)
        codes = _codes_for(gt, represent, np.concatenate(batches)).reshape(size, batch_size, -1)
        local_var = codes[:, :, active_dims].var(axis=1, ddof=1)
        winners = active_dims[np.argmin(local_var / global_var[active_dims], axis=1)]
        np.add.at(votes, (fixed, winners), 1)
    return votes


def _vote_accuracy(votes: np.ndarray, factor_of_dim: np.ndarray) -> float:
    """Accuracy of the majority-vote classifier dim -> factor on ``votes`` (F, z)."""
    correct = votes[factor_of_dim, np.arange(votes.shape[1])].sum()
    return float(correct / votes.sum())


def factor_vae_score(gt: GroundTruth, represent: Represent, rng: np.random.RandomState,
                     batch_size: int = 64, num_train: int = 10000, num_eval: int = 5000,
                     num_variance_estimate: int = 10000) -> dict:
    """FactorVAE score: accuracy of the majority-vote classifier that maps the
    dimension of least normalised variance (given a fixed factor) to that factor.

    Dimensions with global std < 0.05 are pruned first.  Returns {'score': eval
    accuracy, 'train_accuracy', 'eval_accuracy', 'num_active_dims'}.
    'num_active_dims' is the number of dimensions kept (disentanglement_lib's
    field of that name reports the total dimension count, a known slip).
    """
    codes, _ = _observations(gt, represent, rng, num_variance_estimate)
    global_var = codes.var(axis=0, ddof=1)
    active = np.sqrt(global_var) >= FACTOR_VAE_PRUNE_STD
    if not active.any():
        return {"score": 0.0, "train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    train_votes = _factor_vae_votes(gt, represent, rng, batch_size, num_train, global_var, active)
    factor_of_dim = np.argmax(train_votes, axis=0)
    eval_votes = _factor_vae_votes(gt, represent, rng, batch_size, num_eval, global_var, active)
    eval_acc = _vote_accuracy(eval_votes, factor_of_dim)
    return {"score": eval_acc, "train_accuracy": _vote_accuracy(train_votes, factor_of_dim),
            "eval_accuracy": eval_acc, "num_active_dims": int(active.sum())}


# --------------------------------------------------------------------------
# MIG


def _histogram_discretize(codes: np.ndarray, num_bins: int) -> np.ndarray:
    """Codes (n, z) -> bin indices (n, z) in 1..num_bins, equal-width bins per
    dimension between its min and max (disentanglement_lib's histogram_discretizer)."""
    out = np.empty(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, j], bins=num_bins)
        out[:, j] = np.digitize(codes[:, j], edges[:-1])
    return out


def _mutual_info_matrix(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Mutual information in nats between every code (n, z) and factor (n, F) -> (z, F)."""
    return np.array([[mutual_info_score(factors[:, f], discrete_codes[:, c])
                      for f in range(factors.shape[1])]
                     for c in range(discrete_codes.shape[1])])


def _factor_entropies(factors: np.ndarray) -> np.ndarray:
    """Empirical entropy in nats of each factor (n, F) -> (F,)."""
    return np.array([mutual_info_score(f, f) for f in factors.T])


def mig(gt: GroundTruth, represent: Represent, rng: np.random.RandomState,
        num_train: int = 10000, num_bins: int = 20) -> dict:
    """Mutual Information Gap: per factor, (largest - second largest mutual
    information with a single discretised code) / factor entropy, averaged.

    Factors with zero entropy in the sample (constant) are left out of the mean.
    Returns {'score', 'per_factor': {name: gap}}.
    """
    codes, factors = _observations(gt, represent, rng, num_train)
    mi = _mutual_info_matrix(_histogram_discretize(codes, num_bins), factors)
    entropy = _factor_entropies(factors)
    top_two = -np.sort(-mi, axis=0)[:2] if mi.shape[0] > 1 else np.vstack([mi, np.zeros_like(mi)])
    with np.errstate(invalid="ignore", divide="ignore"):
        gaps = np.where(entropy > 0, (top_two[0] - top_two[1]) / entropy, np.nan)
    return {"score": float(np.nanmean(gaps)),
            "per_factor": dict(zip(gt.factor_names, gaps.tolist(), strict=True))}


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


def _fit_all_factors(x_train, y_train, x_test, y_test, estimator, seeds, n_jobs):
    """Fit the F per-factor classifiers in parallel threads.

    The fits are independent, and scikit-learn's tree building releases the
    GIL, so threads use every core without copying data to processes.  The
    factors with most classes (most trees: one per class per stage) start
    first so the cores finish together.  Each model is single-threaded to
    avoid oversubscription.  Returns a list of F results of _fit_factor.
    """
    num_factors = y_train.shape[1]
    order = sorted(range(num_factors), key=lambda f: -len(np.unique(y_train[:, f])))
    with threadpool_limits(limits=1):
        results = Parallel(n_jobs=n_jobs, prefer="threads")(
            delayed(_fit_factor)(x_train, y_train[:, f], x_test, y_test[:, f], estimator, seeds[f])
            for f in order)
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
        estimator: str = "gbt", n_jobs: int = -1) -> dict:
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
    x_train, y_train = _observations(gt, represent, rng, num_train)
    x_test, y_test = _observations(gt, represent, rng, num_test)
    seeds = rng.randint(np.iinfo(np.int32).max, size=y_train.shape[1])
    order = _canonical_code_order(x_train)
    fits = _fit_all_factors(x_train[:, order], y_train, x_test[:, order], y_test, estimator,
                            seeds, n_jobs)
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


def _sap_discrete_matrix(x_train, y_train, x_test, y_test, seed):
    """Score matrix (z, F): test accuracy of a linear SVM (C=0.01, balanced
    class weights) that predicts factor j from code i alone."""
    scores = np.zeros((x_train.shape[1], y_train.shape[1]))
    for i in range(x_train.shape[1]):
        for j in range(y_train.shape[1]):
            svm = LinearSVC(C=0.01, class_weight="balanced", dual="auto", random_state=seed)
            svm.fit(x_train[:, i:i + 1], y_train[:, j])
            scores[i, j] = np.mean(svm.predict(x_test[:, i:i + 1]) == y_test[:, j])
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
        continuous_factors: bool = False) -> dict:
    """SAP score: per factor, the gap between the two codes that predict it
    best on their own, averaged over factors.

    As in disentanglement_lib's published configuration the factors are
    treated as discrete (continuous_factors=False): the score of (code, factor)
    is the test accuracy of a 1-D linear SVM.  scikit-learn now solves it in
    the primal (dual='auto') rather than the dual; same objective and optimum.
    Returns {'score', 'per_factor': {name: gap}}.
    """
    x_train, y_train = _observations(gt, represent, rng, num_train)
    x_test, y_test = _observations(gt, represent, rng, num_test)
    if continuous_factors:
        scores = _sap_continuous_matrix(x_train, y_train)
    else:
        scores = _sap_discrete_matrix(x_train, y_train, x_test, y_test,
                                      rng.randint(np.iinfo(np.int32).max))
    ranked = np.sort(scores, axis=0)[::-1]
    second = ranked[1] if len(ranked) > 1 else np.zeros_like(ranked[0])
    gaps = ranked[0] - second
    return {"score": float(gaps.mean()), "per_factor": dict(zip(gt.factor_names, gaps.tolist(), strict=True))}


# --------------------------------------------------------------------------
# all together


def _points(count: int, scale: float) -> int:
    """A protocol point count at a reduced scale (at least 2, so every classifier sees two points)."""
    return max(2, int(round(count * scale)))


def images_drawn(scale: float = 1.0) -> int:
    """How many images the five scores draw in all at this scale (with repeats): BetaVAE pairs of
    batches of 64, FactorVAE batches of 64 plus its variance sample, then MIG, DCI and SAP.
    At scale 1 that is about 2.9 million, four times dSprites' 737,280 images."""
    def n(count: int) -> int:
        return _points(count, scale)
    return ((n(10000) + n(5000)) * 64 * 2 + n(10000) + (n(10000) + n(5000)) * 64 + n(10000)
            + 2 * (n(10000) + n(5000)))


def evaluate_all(gt: GroundTruth, represent: Represent, seed: int = 0, scale: float = 1.0, *,
                 dci_estimator: str = "gbt", n_jobs: int = -1, verbose: bool = False) -> dict:
    """Run the five scores, each from its own RandomState(seed) as
    disentanglement_lib does, so one score does not depend on another.

    ``scale`` multiplies every point count (1.0 = the published protocol;
    smaller values for quick checks, at least ~0.01).  Batch sizes stay 64.
    Returns {'beta_vae', 'factor_vae', 'mig', 'dci', 'sap': dicts with 'score',
    'seconds': {metric: wall seconds, ..., 'total'}}.  ``verbose`` prints each
    score as it finishes.
    """
    def n(count: int) -> int:
        return _points(count, scale)

    jobs = {
        "beta_vae": lambda rng: beta_vae_score(gt, represent, rng, num_train=n(10000),
                                               num_eval=n(5000)),
        "factor_vae": lambda rng: factor_vae_score(gt, represent, rng, num_train=n(10000),
                                                   num_eval=n(5000),
                                                   num_variance_estimate=n(10000)),
        "mig": lambda rng: mig(gt, represent, rng, num_train=n(10000)),
        "dci": lambda rng: dci(gt, represent, rng, num_train=n(10000), num_test=n(5000),
                               estimator=dci_estimator, n_jobs=n_jobs),
        "sap": lambda rng: sap(gt, represent, rng, num_train=n(10000), num_test=n(5000)),
    }
    result: dict = {}
    seconds: dict = {}
    for name, job in jobs.items():
        start = time.perf_counter()
        result[name] = job(np.random.RandomState(seed))
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
    }


def format_table(result: dict) -> str:
    """Readable text table of an evaluate_all result."""
    b, f, d = result["beta_vae"], result["factor_vae"], result["dci"]
    rows = [
        ("BetaVAE", b["score"], f"train acc {b['train_accuracy']:.3f}", "beta_vae"),
        ("FactorVAE", f["score"],
         f"train acc {f['train_accuracy']:.3f}, active dims {f['num_active_dims']}", "factor_vae"),
        ("MIG", result["mig"]["score"], "", "mig"),
        ("DCI", d["disentanglement"],
         f"completeness {d['completeness']:.3f}, informativeness "
         f"{d['informativeness_test']:.3f} (train {d['informativeness_train']:.3f}), "
         f"{d['estimator']}", "dci"),
        ("SAP", result["sap"]["score"], "", "sap"),
    ]
    seconds = result.get("seconds", {})
    lines = [f"{'metric':<10} {'score':>6}  {'seconds':>7}  details"]
    for label, score, details, key in rows:
        lines.append(f"{label:<10} {score:>6.3f}  {seconds.get(key, float('nan')):>7.1f}  {details}")
    if "encoding" in seconds:
        lines.append(f"{'encoding':<10} {'':>6}  {seconds['encoding']:>7.1f}  every image, once, before the scores")
    if "latent_report" in seconds:
        lines.append(f"{'report':<10} {'':>6}  {seconds['latent_report']:>7.1f}  the latent report")
    if "total" in seconds:
        lines.append(f"{'total':<10} {'':>6}  {seconds['total']:>7.1f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# per-latent report


def latent_report(kld_per_dim: np.ndarray, var_per_dim: np.ndarray,
                  codes: np.ndarray | None = None, factors: np.ndarray | None = None,
                  factor_names=None, active_threshold: float = ACTIVE_KL_NATS,
                  num_bins: int = 20) -> dict:
    """Describe each latent for traversal plots.

    kld_per_dim (z,): KL(q(z_i|x) || N(0,1)) in nats, averaged over data;
    var_per_dim (z,): posterior variance averaged over data;
    codes (n, z) and factors (n, F), optional: encoder means and the true
    factors of the same n images.

    A latent is active when its KL > active_threshold (default 0.01 nats).  A
    latent whose posterior stays within 0.01 nats of the prior for every input
    carries under 0.015 bits about the image, so its traversal shows nothing;
    in trained beta-VAEs collapsed latents sit around 1e-4..1e-3 nats and used
    ones at tenths of a nat or more, so the exact value rarely matters.

    For each active latent, when codes and factors are given, the factor it
    captures best is the one with the highest normalised mutual information
    I(code; factor) / H(factor) (code discretised into num_bins equal-width bins
    as for MIG), i.e. the fraction of that factor's entropy the latent explains.

    Returns {'threshold', 'num_active', 'order': latent indices by KL,
    descending, 'per_latent': [per latent, in index order: {'index', 'kl',
    'variance', 'active', 'best_factor', 'nmi'}]} ('best_factor'/'nmi' are None
    for inactive latents or without factors).
    """
    kl = np.asarray(kld_per_dim, dtype=np.float64).reshape(-1)
    var = np.asarray(var_per_dim, dtype=np.float64).reshape(-1)
    active = kl > active_threshold
    nmi = None
    if codes is not None and factors is not None:
        codes = np.asarray(codes, dtype=np.float64)
        factors = np.asarray(factors)
        entropy = _factor_entropies(factors)
        mi = _mutual_info_matrix(_histogram_discretize(codes, num_bins), factors)
        nmi = np.divide(mi, entropy, out=np.zeros_like(mi), where=entropy > 0)
        if factor_names is None:
            factor_names = [f"factor{j}" for j in range(factors.shape[1])]
    per_latent = []
    for i in range(len(kl)):
        best = int(np.argmax(nmi[i])) if nmi is not None and active[i] else None
        per_latent.append({
            "index": i, "kl": float(kl[i]), "variance": float(var[i]), "active": bool(active[i]),
            "best_factor": factor_names[best] if best is not None else None,
            "nmi": float(nmi[i, best]) if best is not None else None,
        })
    return {
        "threshold": active_threshold,
        "num_active": int(active.sum()),
        "order": [int(i) for i in np.argsort(-kl, kind="stable")],
        "per_latent": per_latent,
    }
