"""Unsupervised Disentanglement Ranking (Duan et al. 2020, "Unsupervised model selection for variational
disentangled representation learning", ICLR), as disentanglement_lib computes it
(evaluation/udr/metrics/udr.py, ``compute_udr_sklearn`` with its lasso correlation; defaults from
config/tests/methods/udr/udr.gin, the library's one UDR configuration: 1,000 points drawn in batches of
10, Lasso alpha 0.1, latents with mean KL under 0.01 nats left out).

UDR needs several models trained with one setting (hyperparameters) but different seeds: a model whose
latents line up one-to-one with the latents of its peers is taken to be disentangled.  Every model
encodes the same images (``sample_indices``; evaluate.py stores each model's codes and per-latent KL next
to its eval JSON); studies/report.py scores each setting's models together.

For models a and b: standardise both codes, zero the latents of KL <= 0.01, regress b's codes on a's
with a Lasso; R = |coefficients| (z_a, z_b) keeps the informative latents of both.  The pair's score is
the mean over columns and over rows of max^2 / sum (a row or column that is all zeros counts 0), halved
together.  Model b's UDR is the median of its pairs (a, b) over the other models a.
"""

import numpy as np
from sklearn.linear_model import Lasso
from sklearn.preprocessing import StandardScaler

NUM_POINTS = 1000  # udr_sklearn.num_data_points
BATCH_SIZE = 10  # udr_sklearn.batch_size
LASSO_ALPHA = 0.1
KL_THRESHOLD = 0.01  # nats; kl_filter_threshold, and the hard-coded cut on the standardised codes


def sample_factor_batches(gt, rng: np.random.RandomState, num_points: int = NUM_POINTS,
                          batch_size: int = BATCH_SIZE) -> np.ndarray:
    """(num_points, F) factors (with the columns ``metrics.observe`` adds) in the library's order:
    ``sample_observations(batch_size)`` per batch."""
    if num_points % batch_size:
        raise ValueError(f"UDR: num_points ({num_points}) must be a multiple of batch_size ({batch_size})")
    from evaluation.metrics import observe  # (metrics imports the scores' modules, not this one)

    return np.concatenate([observe(gt, gt.sample_factors(batch_size, rng), rng)
                           for _ in range(num_points // batch_size)])


def relative_strength(corr: np.ndarray) -> float:
    """Score of an absolute-correlation matrix (z_a, z_b): mean of (column max^2 / column sum) and of
    (row max^2 / row sum), halved together; an all-zero row or column counts 0.  NaN when empty."""
    if corr.size == 0:
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        columns = np.nan_to_num(corr.max(axis=0) ** 2 / corr.sum(axis=0))
        rows = np.nan_to_num(corr.max(axis=1) ** 2 / corr.sum(axis=1))
    return float((columns.mean() + rows.mean()) / 2)


def lasso_correlation(codes_a: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
    """|Lasso coefficients| of b's codes regressed on a's, as (z_a, z_b).  Lasso's coordinate descent is
    cyclic by default, so the library's random_state changes nothing."""
    model = Lasso(alpha=LASSO_ALPHA).fit(codes_a, codes_b)
    return np.abs(np.atleast_2d(model.coef_)).T


def _prepared(codes: np.ndarray, kl: np.ndarray | None):
    """Standardised codes (n, z) with uninformative latents zeroed, and the mask (z,) of those kept.
    An encoder without a posterior (kl None: PCA, ICA, InfoGAN) keeps every latent."""
    standard = StandardScaler().fit_transform(codes)
    keep = np.ones(codes.shape[1], dtype=bool) if kl is None else np.asarray(kl) > KL_THRESHOLD
    return standard * keep, keep


def udr(models: list[tuple[np.ndarray, np.ndarray | None]]) -> dict:
    """UDR of each model from its codes (n, z) of the same n images and mean KL per latent (z,) or None.

    Returns {'model_scores': [per model], 'pairwise': (m, m) nested list (row a, column b: the score of
    b's codes regressed on a's; the diagonal NaN)}.  Fewer than two models: no score (NaN)."""
    if len({codes.shape for codes, _ in models}) > 1:
        raise ValueError("UDR: every model must encode the same images into codes of the same size; got "
                         + ", ".join(str(codes.shape) for codes, _ in models))
    prepared = [_prepared(np.asarray(codes, dtype=np.float64), kl) for codes, kl in models]
    m = len(models)
    pairwise = np.full((m, m), np.nan)
    for a in range(m):
        for b in range(m):
            if a != b:
                corr = lasso_correlation(prepared[a][0], prepared[b][0])
                pairwise[a, b] = relative_strength(corr[prepared[a][1]][:, prepared[b][1]])
    scores = [float(np.median(np.delete(pairwise[:, b], b))) if m > 1 else float("nan") for b in range(m)]
    return {"model_scores": scores, "pairwise": pairwise.tolist()}
