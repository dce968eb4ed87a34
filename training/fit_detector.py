"""The shipped detector: fit = the classifier's answer is right, learned on the ``fit`` feature set.

Features are :func:`fitguard.detector.detector_features` of the ``fit`` set (the paper's six and the
classifier's energy), computed from what the served classifier and quality steps return. The learner is
a logistic regression on standardised features: the paper's RBF SVM on the same right/wrong labels
ranks no better held out and, chosen by cross-validation beside it, won folds by noise and lost on
held-out stamps (docs/fit_right.md). Its regularisation is chosen by the product's measure, the area
under the risk-coverage curve of right against wrong answers, cross-validated and grouped by stamp so
that no stamp is scored by a model that saw another view of it. The threshold passes :data:`PASS_RATE`
of the right clean training images, read from out-of-fold scores: in-sample scores of a fitted model
separate its own training rows better than new ones, so a threshold read from them passes too few right
images.

Fooling images may weigh more than one row: offline there are a few dozen of them among hundreds of
natural images, and unweighted the learner can trade them away for a sliver of natural ranking,
passing confident fooling images as MSP does. Refusing them is a requirement, not a preference, so the
weight is the one that meets it out of fold on the training rows at the least cost to the ranking
(:func:`fit_right_detector`; docs/fit_right.md measures the trade).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fitguard.detector import FIT_LABEL, FIT_SET, UNFIT_LABEL, Detector

PASS_RATE = 0.9143  # the paper's detector passes 91.43% of clean originals
FOOLING_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
FOOLING_REFUSAL = 0.95  # the share of fooling images the detector must refuse
FOLDS = 5
C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)  # logistic regression's inverse regularisation


def _neg_aurc(estimator: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Scorer: minus the AURC of the estimator's decision values (higher is better, as sklearn wants)."""
    from fitguard.training.metrics import aurc

    return -aurc(estimator.decision_function(x), y == FIT_LABEL)


def _pipeline() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scaler", StandardScaler()), ("clf", LogisticRegression(max_iter=2000))])


def _search(x: np.ndarray, y: np.ndarray, groups: np.ndarray, weights: np.ndarray, cv: Any) -> Any:
    from sklearn.model_selection import GridSearchCV

    grid = {"clf__C": list(C_GRID)}
    search = GridSearchCV(_pipeline(), grid, scoring=_neg_aurc, cv=cv, n_jobs=1, refit=True)
    return search.fit(x, y, groups=groups, clf__sample_weight=weights)


def _candidate(
    x: np.ndarray, y: np.ndarray, *, groups: np.ndarray, weights: np.ndarray, cv: Any, calibration: np.ndarray
) -> dict[str, Any]:
    """The best learner for one weighting, its out-of-fold scores and the threshold read from them."""
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_predict

    search = _search(x, y, groups, weights, cv)
    oof = cross_val_predict(
        clone(search.best_estimator_),
        x,
        y,
        groups=groups,
        cv=cv,
        method="decision_function",
        params={"clf__sample_weight": weights},
    )
    return {
        "search": search,
        "score": float(search.cv_results_["mean_test_score"][search.best_index_]),
        "oof": oof,
        "threshold": float(np.quantile(oof[calibration], 1.0 - PASS_RATE)),
    }


def fit_right_detector(
    x: np.ndarray,
    right: np.ndarray,
    *,
    groups: np.ndarray,
    clean: np.ndarray,
    fooling: np.ndarray,
) -> tuple[Detector, np.ndarray]:
    """Fit on rows ``x`` (the ``fit`` features) labelled by ``right``; ``groups`` are the rows' stamps
    (a fooling image its own), ``clean`` marks the clean rows the threshold is read from, ``fooling``
    the fooling images. The fooling weight is the one of :data:`FOOLING_WEIGHTS` with the best
    cross-validated AURC among those whose out-of-fold scores refuse :data:`FOOLING_REFUSAL` of the
    training fooling images at the threshold (the most refusing one if none does).

    Returns:
        The detector, and the out-of-fold decision values of every row (what the threshold is read from).
    """
    from sklearn.model_selection import GroupKFold

    y = np.where(right, FIT_LABEL, UNFIT_LABEL)
    cv = GroupKFold(n_splits=min(FOLDS, len(np.unique(groups))))
    found = {}
    for w in FOOLING_WEIGHTS:
        c = _candidate(
            x, y, groups=groups, weights=np.where(fooling, w, 1.0), cv=cv, calibration=clean & right
        )
        c["refused"] = float(np.mean(c["oof"][fooling] < c["threshold"])) if fooling.any() else 1.0
        found[w] = c
    meeting = [w for w, c in found.items() if c["refused"] >= FOOLING_REFUSAL]
    if meeting:
        weight = max(meeting, key=lambda w: found[w]["score"])
    else:
        weight = max(found, key=lambda w: found[w]["refused"])
    best = found[weight]
    search = best["search"]
    meta = {
        "fit_means": "the classifier's answer is right",
        "learner": "LogisticRegression",
        "C": float(search.best_params_["clf__C"]),
        "fooling_weight": weight,
        "candidates": {
            str(w): {"cv_aurc": -c["score"], "oof_fooling_refused": c["refused"]} for w, c in found.items()
        },
        "pass_rate_right_clean": PASS_RATE,
        "threshold_rule": "passes pass_rate_right_clean of right clean training images (out-of-fold scores)",
        "n_train": int(len(y)),
        "n_train_right": int(right.sum()),
        "n_train_groups": int(len(np.unique(groups))),
    }
    return Detector(search.best_estimator_, best["threshold"], meta, FIT_SET), best["oof"]
