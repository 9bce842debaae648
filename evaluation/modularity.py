"""Modularity and explicitness (Ridgeway & Mozer 2018, "Learning deep disentangled embeddings with the
F-statistic loss", NeurIPS, Sec. 3), as disentanglement_lib computes them
(evaluation/metrics/modularity_explicitness.py; defaults from
config/unsupervised_study_v1/metric_configs/modularity_explicitness.gin: 10,000 training and 5,000 test
points, each drawn in batches of 16, codes in 20 equal-width bins).

Modularity: each code should carry information about one factor only.  With m_if the mutual
information of code i (binned) and factor f, and f* the code's best factor,
    delta_i = sum_{f != f*} m_if^2 / (m_if*^2 (F - 1)),   modularity = mean_i (1 - delta_i),
a code with no information at all scoring 0.

Explicitness: how well a linear classifier reads each factor off the whole code (standardised by
the training points' mean and std): per factor, the ROC-AUC of a logistic regression, macro-averaged
over its classes (one-vs-rest), then averaged over factors; on the training and the test points.
"""

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.multiclass import OneVsRestClassifier

from evaluation import discrete


def modularity(mutual_information: np.ndarray) -> float:
    """Modularity from the mutual information (z, F) of each code with each factor."""
    squared = np.square(mutual_information)
    best = squared.max(axis=1)  # (z,)
    num_factors = squared.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = (squared.sum(axis=1) - best) / (best * (num_factors - 1.0))
    score = np.where(best == 0, 0.0, 1.0 - delta)  # a code with no information scores 0, as in the library
    return float(np.mean(score))


def explicitness_classifier():
    """``LogisticRegression()`` as the library called it, with the defaults of the scikit-learn its results
    were computed with (<= 0.21): liblinear, one-vs-rest, C=1 (the BetaVAE score's choice too; today's
    default, multinomial lbfgs, gives other probabilities).  liblinear's primal solver draws no random
    numbers, so no seed is needed."""
    return OneVsRestClassifier(LogisticRegression(solver="liblinear"))


def _roc_auc(y: np.ndarray, probabilities: np.ndarray, classes: np.ndarray) -> float:
    """Macro ROC-AUC of class probabilities (n, K) against labels (n,), one-vs-rest over the classes
    present in y (the library's MultiLabelBinarizer columns, when y holds every class)."""
    onehot = (y[:, None] == classes[None, :]).astype(np.int64)  # (n, K)
    present = (onehot.sum(axis=0) > 0) & (onehot.sum(axis=0) < len(y))  # AUC needs both labels
    if not present.any():
        return float("nan")
    return float(roc_auc_score(onehot[:, present], probabilities[:, present], average="macro"))


def explicitness_per_factor(x_train, y_train, x_test, y_test) -> tuple[float, float]:
    """(train, test) ROC-AUC of one factor's classifier on standardised codes (n, z)."""
    classes = np.unique(y_train)
    if len(classes) < 2:  # scikit-learn refuses one class; a constant factor is read perfectly
        return 1.0, 1.0
    model = explicitness_classifier().fit(x_train, y_train)
    return (_roc_auc(y_train, model.predict_proba(x_train), model.classes_),
            _roc_auc(y_test, model.predict_proba(x_test), model.classes_))


def modularity_explicitness(codes_train, factors_train, codes_test, factors_test,
                            num_bins: int = discrete.NUM_BINS) -> dict:
    """Both scores from codes (n, z) and factors (n, F) of the training and test points.

    A constant code is standardised with std 1 instead of 0 (the library would divide by zero and
    hand NaNs to the classifier).  Returns {'score': modularity, 'modularity', 'explicitness_train',
    'explicitness_test', 'explicitness_per_factor': [test AUC per factor]}.
    """
    mi = discrete.mutual_info_matrix(discrete.histogram_discretize(codes_train, num_bins), factors_train)
    mean, std = codes_train.mean(axis=0), codes_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    x_train, x_test = (codes_train - mean) / std, (codes_test - mean) / std
    aucs = [explicitness_per_factor(x_train, factors_train[:, f], x_test, factors_test[:, f])
            for f in range(factors_train.shape[1])]
    score = modularity(mi)
    return {"score": score, "modularity": score,
            "explicitness_train": float(np.mean([a for a, _ in aucs])),
            "explicitness_test": float(np.mean([b for _, b in aucs])),
            "explicitness_per_factor": [b for _, b in aucs]}
