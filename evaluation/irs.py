"""Interventional Robustness Score (Suter et al. 2019, "Robustly disentangled causal mechanisms:
validating deep representations for interventional robustness", ICML), as disentanglement_lib
computes it (evaluation/metrics/irs.py; defaults from config/unsupervised_study_v1/metric_configs/irs.gin:
10,000 points drawn in batches of 16, factors in 20 equal-width bins, the 0.99 quantile of deviations).

For latent j and factor i: how far z_j strays from its mean over the points that share a value of
factor i (the 0.99 quantile of |z_j - E[z_j | g_i = v]|, averaged over the values v), relative to
z_j's largest deviation from its overall mean.  IRS_ij = 1 - that ratio: 1 when fixing factor i
pins z_j down.  Each latent's score is its best factor's; the total is their mean weighted by each
latent's largest deviation, so a latent that barely moves counts little.  Constant latents are left
out first.
"""

import numpy as np

from evaluation import discrete

DIFF_QUANTILE = 0.99


def irs_matrix(factors: np.ndarray, codes: np.ndarray, diff_quantile: float = DIFF_QUANTILE):
    """factors (n, F) discrete values, codes (n, z) with no constant column -> (IRS matrix (z, F),
    largest deviation of each code from its mean (z,))."""
    max_deviation = np.abs(codes - codes.mean(axis=0)).max(axis=0)  # (z,)
    spread = np.zeros((codes.shape[1], factors.shape[1]))  # (z, F): mean over values of the quantile
    for i in range(factors.shape[1]):
        values = np.unique(factors[:, i])
        for value in values:
            group = codes[factors[:, i] == value]  # (n_v, z): points with factor i at this value
            spread[:, i] += np.quantile(np.abs(group - group.mean(axis=0)), diff_quantile, axis=0)
        spread[:, i] /= len(values)
    return 1.0 - spread / max_deviation[:, None], max_deviation


def irs(factors: np.ndarray, codes: np.ndarray, diff_quantile: float = DIFF_QUANTILE,
        num_bins: int = discrete.NUM_BINS) -> dict:
    """IRS of codes (n, z) against factors (n, F).

    As in the library the factors are first put in num_bins equal-width bins (dSprites' 40
    orientations and 32 positions become 20 classes) and latents with zero variance are dropped.
    Returns {'score', 'num_active_dims' (the latents kept; the library's field of that name sums
    the codes instead, a slip), 'per_latent' (z,) each latent's score (None when dropped),
    'irs_matrix' (z, F) (rows of dropped latents None)}.
    """
    active = codes.var(axis=0) > 0  # (z,)
    result = {"score": 0.0, "num_active_dims": int(active.sum()), "per_latent": [None] * codes.shape[1],
              "irs_matrix": [None] * codes.shape[1]}
    if not active.any():
        return result
    matrix, max_deviation = irs_matrix(discrete.histogram_discretize(factors, num_bins), codes[:, active],
                                       diff_quantile)
    per_latent = matrix.max(axis=1)  # (active,)
    result["score"] = float(np.average(per_latent, weights=max_deviation))  # max_deviation > 0: not constant
    for row, j in enumerate(np.flatnonzero(active)):
        result["per_latent"][j] = float(per_latent[row])
        result["irs_matrix"][j] = matrix[row].tolist()
    return result
