"""disentanglement_lib's unsupervised scores (evaluation/metrics/unsupervised_metrics.py; defaults from
config/fairness_study_v1/metric_configs/unsupervised.gin: 10,000 points drawn in batches of 16, codes in
20 equal-width bins).  They look at the codes alone, not at the factors; lower is more factorised.

- Gaussian total correlation: KL between the Gaussian with the codes' covariance S and the product of
  its marginals, 0.5 (sum_i log S_ii - log det S), in nats.
- Gaussian Wasserstein correlation: squared 2-Wasserstein distance between those two Gaussians,
  2 tr S - 2 tr sqrt(S diag(S)); also divided by tr S ('..._norm').
- Mutual-information score: the mean mutual information (nats) between two different binned codes.
"""

import numpy as np
import scipy.linalg

from evaluation import discrete


def gaussian_total_correlation(cov: np.ndarray) -> float:
    """Total correlation (nats) of a Gaussian with covariance cov (z, z)."""
    return float(0.5 * (np.sum(np.log(np.diag(cov))) - np.linalg.slogdet(cov)[1]))


def gaussian_wasserstein_correlation(cov: np.ndarray) -> float:
    """Squared 2-Wasserstein distance between N(0, cov) and N(0, diag(cov)): both means are zero, so it is
    tr S + tr D - 2 tr sqrt(D^1/2 S D^1/2) = 2 tr S - 2 tr sqrt(S D) (the same eigenvalues)."""
    root = scipy.linalg.sqrtm(cov * np.diag(cov)[:, None])
    return float(2 * np.trace(cov) - 2 * np.real(np.trace(root)))


def mutual_info_score(codes: np.ndarray, num_bins: int = discrete.NUM_BINS) -> float:
    """Mean mutual information (nats) over ordered pairs of different codes (n, z), binned."""
    z = codes.shape[1]
    if z < 2:
        return 0.0
    binned = discrete.histogram_discretize(codes, num_bins)
    mi = discrete.mutual_info_matrix(binned, binned)
    np.fill_diagonal(mi, 0)
    return float(mi.sum() / (z * z - z))


def unsupervised_scores(codes: np.ndarray, num_bins: int = discrete.NUM_BINS) -> dict:
    """All three from codes (n, z).  A constant code makes the covariance singular: the total correlation
    is then not finite (reported as NaN), as in the library.  Returns {'score': Gaussian total
    correlation, 'gaussian_total_correlation', 'gaussian_wasserstein_correlation',
    'gaussian_wasserstein_correlation_norm', 'mutual_info_score'}."""
    cov = np.atleast_2d(np.cov(codes, rowvar=False))  # (z, z), ddof 1 as np.cov
    with np.errstate(divide="ignore", invalid="ignore"):
        total_correlation = gaussian_total_correlation(cov)
        wasserstein = gaussian_wasserstein_correlation(cov)
        trace = np.trace(cov)
        norm = wasserstein / trace if trace > 0 else float("nan")
    finite = float(total_correlation) if np.isfinite(total_correlation) else float("nan")
    return {"score": finite, "gaussian_total_correlation": finite,
            "gaussian_wasserstein_correlation": wasserstein, "gaussian_wasserstein_correlation_norm": float(norm),
            "mutual_info_score": mutual_info_score(codes, num_bins)}
