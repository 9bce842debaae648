"""Discretising codes and discrete mutual information, shared by MIG, modularity, IRS and the
unsupervised scores (disentanglement_lib's utils.histogram_discretizer and discrete_mutual_info)."""

import numpy as np
from sklearn.metrics import mutual_info_score

NUM_BINS = 20  # disentanglement_lib's discretizer.num_bins in every published metric config


def histogram_discretize(values: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """Values (n, k) -> bin indices (n, k) in 1..num_bins, equal-width bins per column between its
    min and max (the column's maximum lands in the last bin)."""
    out = np.empty(values.shape, dtype=np.int64)
    for j in range(values.shape[1]):
        edges = np.histogram_bin_edges(values[:, j], bins=num_bins)
        out[:, j] = np.digitize(values[:, j], edges[:-1])
    return out


def mutual_info_matrix(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Mutual information in nats between every code (n, z) and factor (n, F) -> (z, F)."""
    return np.array([[mutual_info_score(factors[:, f], discrete_codes[:, c])
                      for f in range(factors.shape[1])]
                     for c in range(discrete_codes.shape[1])]).reshape(discrete_codes.shape[1], factors.shape[1])


def entropies(factors: np.ndarray) -> np.ndarray:
    """Empirical entropy in nats of each column (n, F) -> (F,)."""
    return np.array([mutual_info_score(f, f) for f in factors.T])
