"""Detection and selective-classification metrics: pure functions on score arrays.

Unfit scores: higher = more unfit. Fit scores (the detector's ``FIT_SCORE``, quality): higher = fitter.
"""

from __future__ import annotations

import math

import numpy as np


def auroc(clean_scores: np.ndarray, unfit_scores: np.ndarray) -> float:
    """AUROC of an unfit score separating unfit from clean images."""
    from sklearn.metrics import roc_auc_score

    y = np.concatenate([np.zeros(len(clean_scores)), np.ones(len(unfit_scores))])
    return float(roc_auc_score(y, np.concatenate([clean_scores, unfit_scores])))


def fpr_at_tpr(clean: np.ndarray, unfit: np.ndarray, tpr: float = 0.95) -> float:
    """Share of clean images flagged at the loosest threshold that flags ``tpr`` of the unfit ones."""
    k = int(math.ceil(tpr * len(unfit) - 1e-9))  # flag at least k of the unfit images
    thr = np.sort(unfit)[len(unfit) - k]
    return float(np.mean(clean >= thr))


def far_threshold(clean: np.ndarray, far: float) -> float:
    """Threshold flagging (unfit score > threshold) at most ``far`` of the clean images."""
    return float(np.quantile(clean, 1.0 - far, method="higher"))


def detection_at_far(clean_fit: np.ndarray, unfit_fit: np.ndarray, far: float) -> float:
    """Share of unfit images below the ``far`` quantile of the clean images' fit scores."""
    return float(np.mean(unfit_fit < np.quantile(clean_fit, far)))


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage k/n and selective risk (error rate of the k most confident) for k = 1..n."""
    order = np.argsort(-confidence, kind="stable")
    errors = np.cumsum(~correct[order])
    k = np.arange(1, len(order) + 1)
    return k / len(order), errors / k


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve (mean selective risk over all coverages k/n)."""
    return float(risk_coverage(confidence, correct)[1].mean())


def accuracy_at_coverage(confidence: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Accuracy on the ``coverage`` share of images the confidence ranks highest."""
    cov, risk = risk_coverage(confidence, correct)
    k = max(1, int(math.ceil(coverage * len(cov))))
    return float(1.0 - risk[k - 1])
