"""The detector's SVM: scaler + quality weight + RBF SVC, its grid search and its operating threshold.

C, gamma and the quality weight are chosen by grouped cross-validation (AUROC) on the training rows. The
threshold is the ``target_far`` quantile of the training originals' out-of-fold decision values, so that
share of clean training images would be flagged unfit (``target_far=None`` keeps the SVM's own boundary).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from fitguard.contract import TOP_K
from fitguard.detector import FIT_LABEL, Detector

# Features are standardised, so gamma is on the scale of 1 / (6 features). The smooth end of the grid
# (gamma 0.01, C 0.1) matters: with few photos a narrow kernel passes what lies far from every training
# image. The quality weight scales the standardised quality against the five probabilities: clean photos
# differ in confidence as much as degraded ones do, and an RBF kernel weighs every feature alike unless
# told otherwise. docs/evaluation.md measures both.
DEFAULT_GRID: dict[str, list[float]] = {
    "svc__C": [0.1, 1.0, 10.0, 100.0],
    "svc__gamma": [0.01, 0.05, 0.2, 0.8],
    "weight__quality": [1.0, 2.0, 4.0, 8.0],
}
HYPERPARAMETERS: tuple[str, ...] = ("C", "gamma", "quality_weight", "cv_auroc")  # what a fit records
DEFAULT_TARGET_FAR = 0.05


class QualityWeight(TransformerMixin, BaseEstimator):
    """Multiplies the last (quality) column of standardised features by ``quality``; a grid parameter.

    Only used while searching: :func:`bake_quality_weight` folds the weight into the scaler, so the
    detector file holds a plain scaler + SVC that skl2onnx converts.
    """

    def __init__(self, quality: float = 1.0) -> None:
        self.quality = quality

    def fit(self, x: np.ndarray, y: Any = None) -> QualityWeight:
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        out = np.array(x, dtype=np.float64, copy=True)
        out[:, -1] *= self.quality
        return out


def make_pipeline(c: float = 1.0, gamma: float | str = "scale", quality: float = 1.0) -> Any:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return Pipeline(
        [
            ("scaler", StandardScaler()),
            ("weight", QualityWeight(quality)),
            ("svc", SVC(kernel="rbf", C=c, gamma=gamma)),
        ]
    )


def bake_quality_weight(pipeline: Any) -> Any:
    """The same decision function as scaler + weight + SVC, as a plain scaler + SVC.

    ``w * (x - mean) / scale == (x - mean) / (scale / w)``: the weight moves into the scaler's last scale.
    """
    import copy

    from sklearn.pipeline import Pipeline

    steps = dict(pipeline.steps)
    scaler = copy.deepcopy(steps["scaler"])
    scaler.scale_ = scaler.scale_.copy()
    scaler.scale_[-1] /= steps["weight"].quality
    return Pipeline([("scaler", scaler), ("svc", steps["svc"])])


def fit_detector(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    target_far: float | None = DEFAULT_TARGET_FAR,
    grid: dict[str, list[float]] | None = None,
    folds: int = 5,
) -> Detector:
    """Scaler + RBF SVC with (C, gamma) by grouped CV, and the operating threshold (see module doc)."""
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_predict

    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    cv = GroupKFold(n_splits=max(2, min(folds, n_groups)))
    grid = dict(grid or DEFAULT_GRID)
    if x.shape[1] != TOP_K + 1:  # no quality column (the top-5-only baseline): nothing to weigh
        grid.pop("weight__quality", None)
    search = GridSearchCV(make_pipeline(), grid, scoring="roc_auc", cv=cv, n_jobs=1, refit=True)
    search.fit(x, y, groups=groups)
    threshold = 0.0
    if target_far is not None:
        oof = cross_val_predict(
            clone(search.best_estimator_), x, y, groups=groups, cv=cv, method="decision_function"
        )
        threshold = float(np.quantile(oof[y == FIT_LABEL], target_far))
    meta = {
        "C": float(search.best_params_["svc__C"]),
        "gamma": float(search.best_params_["svc__gamma"]),
        "quality_weight": float(search.best_params_.get("weight__quality", 1.0)),
        "cv_auroc": float(search.best_score_),
        "target_far": target_far,
        "threshold_rule": "quantile of out-of-fold training-original scores"
        if target_far is not None
        else "SVM boundary (0)",
        "n_train": int(len(y)),
        "n_train_groups": int(n_groups),
    }
    return Detector(bake_quality_weight(search.best_estimator_), threshold, meta)
