"""Fit = right: which confidence ranks the classifier's answers best, held out by stamp.

Every image of the population (:mod:`fitguard.training.fit.population`) is right when the centre crop's
top-1 is one of its item's acceptable classes (fooling images are always wrong). Per repeat, half of the
stamps (and a random half of the fooling images) train, the rest is scored:

- untrained: ``msp``, ``energy``, ``doctor``, ``entropy``, ``quality``;
- ``lr_msp_quality``: logistic regression on [MSP, quality logit], fitted on right/wrong;
- ``paper_uap``: the paper's SVM on its six features, clean images (fit) against universal-perturbation
  images (unfit), as the shipped detector is trained today;
- ``paper_right``: the same SVM and features, fitted on right/wrong;
- ``fit_right``: logistic regression on every signal group of :mod:`fitguard.training.fit.signals`, fitted
  on right/wrong; ``fit_right_no_<group>`` / ``fit_right_paper_<group>`` are its ablations;
- ``shipped``: the shipped detector's recipe (:mod:`fitguard.training.fit.recipes`), on what the
  served detector graph computes.

The operating threshold of each method is stated as a pass rate of right clean training images
(:data:`PASS_RATE`; out-of-fold scores for the regressions); held out, it gives Table V (share passed,
accuracy of what passes, refusals).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fitguard.detector import FIT_LABEL, UNFIT_LABEL, Detector
from fitguard.training.fit.population import (
    CLEAN,
    DISTORTED,
    FOOL_EV,
    FOOL_GD,
    UAP_DEEPFOOL,
    UAP_PGD,
    Population,
)
from fitguard.training.fit.recipes import PASS_RATE, fit_guarded_detector, fit_right_detector
from fitguard.training.fit.signals import SHIPPED, SIGNAL_GROUPS, prob_scores, stack_signals

REPEATS = 10
NATURAL: tuple[str, ...] = (CLEAN, DISTORTED, UAP_DEEPFOOL, UAP_PGD)
FOOLING: tuple[str, ...] = (FOOL_GD, FOOL_EV)
PAPER_MIX: tuple[str, ...] = (*NATURAL, *FOOLING)
MIXES: dict[str, tuple[str, ...]] = {"natural": NATURAL, "paper": PAPER_MIX, "clean": (CLEAN,)}
UAPS: tuple[str, ...] = (UAP_DEEPFOOL, UAP_PGD)
UNTRAINED: tuple[str, ...] = ("msp", "maxlogit", "margin", "energy", "doctor", "entropy", "quality")
LR_RIGHT, GUARDED_UAP = "lr_right", "guarded_uap"
RECIPES: tuple[str, ...] = (SHIPPED, GUARDED_UAP, LR_RIGHT)  # fitted in every repeat and shift
SVM_GRID: dict[str, list[float]] = {
    "svc__C": [0.1, 1.0, 10.0],
    "svc__gamma": [0.05, 0.2],
    "weight__quality": [1.0, 4.0],
}


def right_flags(pop: Population, top1: np.ndarray, acceptable: list[frozenset[int] | None]) -> np.ndarray:
    """True where top-1 is in the image's acceptable set; fooling images (item -1) are always wrong."""
    return np.asarray(
        [
            i >= 0 and acceptable[i] is not None and int(t) in acceptable[i]
            for i, t in zip(pop.item, top1, strict=True)
        ]
    )


def _lr(c: float = 1.0) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def learned_sets() -> dict[str, tuple[str, ...]]:
    """Signal groups of every logistic-regression method (full model and its ablations)."""
    sets = {"fit_right": SIGNAL_GROUPS}
    for g in SIGNAL_GROUPS[1:]:
        sets[f"fit_right_no_{g}"] = tuple(s for s in SIGNAL_GROUPS if s != g)
        sets[f"fit_right_paper_{g}"] = ("paper", g)
    sets["fit_right_paper_only"] = ("paper",)
    return sets


def _svm(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Any:
    from fitguard.training.paper.svm import fit_detector

    return fit_detector(x, y, groups, target_far=None, grid=SVM_GRID, folds=3)


def _fit_lr(
    x: np.ndarray, right: np.ndarray, train: np.ndarray, stamps: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Scores of every row, and the same with out-of-fold scores (grouped by stamp) on the training rows.

    The operating threshold is read from the second: in-sample scores of a fitted model separate its own
    training rows better than new ones, so a threshold read from them passes too few right images.
    """
    from sklearn.model_selection import GroupKFold, cross_val_predict

    y = right[train].astype(int)
    scores = _lr().fit(x[train], y).decision_function(x)
    calib = scores.copy()
    calib[train] = cross_val_predict(
        _lr(),
        x[train],
        y,
        groups=cv_groups(stamps)[train],
        cv=GroupKFold(n_splits=5),
        method="decision_function",
    )
    return scores, calib


def cv_groups(stamps: np.ndarray) -> np.ndarray:
    """Stamps as cross-validation groups, every fooling image (stamp "") a group of its own."""
    return np.where(stamps == "", np.char.add("fool", np.arange(len(stamps)).astype(str)), stamps)


def fit_recipe(
    x: np.ndarray, right: np.ndarray, *, groups: np.ndarray, group: np.ndarray, recipe: str = SHIPPED
) -> tuple[Detector, np.ndarray]:
    """A detector recipe on these rows: ``groups`` from :func:`cv_groups`, ``group`` the population group
    of each row (its clean rows set the threshold). ``shipped``: MSP guarded by the two-tail veto, its
    limits read from the right natural rows; ``guarded_uap``: the same with the universal-perturbation
    rows counted as attacks, so left out of the rows the limits are read from; ``lr_right``: the
    logistic regression on right/wrong shipped before (fooling rows weighted).

    Returns the detector and the out-of-fold confidences of every row."""
    clean, fooling = group == CLEAN, np.isin(group, FOOLING)
    if recipe == LR_RIGHT:
        return fit_right_detector(x, right, groups=groups, clean=clean, fooling=fooling)
    attack = fooling | (np.isin(group, UAPS) if recipe == GUARDED_UAP else False)
    return fit_guarded_detector(x, right, clean=clean, attack=attack)


def _fit_recipe(
    x: np.ndarray, right: np.ndarray, train: np.ndarray, stamps: np.ndarray, group: np.ndarray, recipe: str
) -> tuple[np.ndarray, np.ndarray]:
    """A recipe's confidence on every row, and with out-of-fold ones on training rows."""
    det, oof = fit_recipe(
        x[train], right[train], groups=cv_groups(stamps)[train], group=group[train], recipe=recipe
    )
    scores = det.confidence(x).astype(np.float64)
    calib = scores.copy()
    calib[train] = oof
    return scores, calib


def score_all(
    signals: dict[str, np.ndarray],
    untrained: dict[str, np.ndarray],
    right: np.ndarray,
    pop: Population,
    stamps: np.ndarray,
    train: np.ndarray,
    svms: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every method's confidence on every row, the learned ones fitted on the ``train`` rows; and the
    confidences the thresholds are read from (out-of-fold on training rows for the regressions)."""
    conf = dict(untrained)
    calib = dict(untrained)
    xq = np.stack([untrained["msp"], signals["paper"][:, -1]], axis=1)
    conf["lr_msp_quality"], calib["lr_msp_quality"] = _fit_lr(xq, right, train, stamps)
    for recipe in RECIPES:
        conf[recipe], calib[recipe] = _fit_recipe(signals[SHIPPED], right, train, stamps, pop.group, recipe)
    for name, names in learned_sets().items():
        conf[name], calib[name] = _fit_lr(stack_signals(signals, names), right, train, stamps)
    if svms:
        x6 = signals["paper"]
        lab = np.where(right, FIT_LABEL, UNFIT_LABEL)
        det = _svm(x6[train], lab[train], stamps[train])
        conf["paper_right"] = calib["paper_right"] = det.pipeline.decision_function(x6)
        pairs = train & np.isin(pop.group, [CLEAN, UAP_DEEPFOOL])
        lab = np.where(pop.group == CLEAN, FIT_LABEL, UNFIT_LABEL)
        det = _svm(x6[pairs], lab[pairs], stamps[pairs])
        conf["paper_uap"] = calib["paper_uap"] = det.pipeline.decision_function(x6)
    return conf, calib


def untrained_scores(logits: np.ndarray, quality: np.ndarray) -> dict[str, np.ndarray]:
    return {**prob_scores(logits), "quality": quality.astype(np.float64)}


def thresholds(conf: dict[str, np.ndarray], right: np.ndarray, clean_train: np.ndarray) -> dict[str, float]:
    """Per method, the threshold that passes :data:`PASS_RATE` of the right clean training images."""
    rows = clean_train & right
    return {m: float(np.quantile(c[rows], 1.0 - PASS_RATE)) for m, c in conf.items()}


def stamp_split(stamps: np.ndarray, seed: int) -> np.ndarray:
    """Train mask: a seeded half of the stamps; fooling rows (stamp "") get a random half of their own."""
    rng = np.random.default_rng(seed)
    ids = np.unique(stamps[stamps != ""])
    train_ids = set(rng.permutation(ids)[: len(ids) // 2].tolist())
    train = np.isin(stamps, list(train_ids))
    fool = np.flatnonzero(stamps == "")
    train[fool[rng.permutation(len(fool)) < len(fool) // 2]] = True
    return train


def run_repeats(
    *,
    pop: Population,
    signals: dict[str, np.ndarray],
    untrained: dict[str, np.ndarray],
    right: np.ndarray,
    stamps: np.ndarray,
    repeats: int = REPEATS,
    seed: int = 0,
    svms: bool = True,
    trainable: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Per repeat: held-out confidences of every method, the right flags, and the thresholds.

    ``trainable`` marks the rows a method may learn from (default all): rows of shift sets are scored
    on held-out stamps but never trained on."""
    out = []
    for r in range(repeats):
        stamp_train = stamp_split(stamps, seed + r)
        train = stamp_train if trainable is None else stamp_train & trainable
        conf, calib = score_all(signals, untrained, right, pop, stamps, train, svms)
        thr = thresholds(calib, right, train & (pop.group == CLEAN))
        test = np.flatnonzero(~stamp_train)
        out.append(
            {
                "test": test,
                "conf": {m: c[test] for m, c in conf.items()},
                "threshold": thr,
                "right": right[test],
                "stamps": np.where(stamps[test] == "", [f"fool{i}" for i in test], stamps[test]),
                "group": pop.group[test],
            }
        )
    return out


def restrict(repeats: list[dict[str, Any]], groups: tuple[str, ...]) -> list[dict[str, Any]]:
    """The repeats' held-out rows of the named population groups only (one mix)."""
    out = []
    for r in repeats:
        keep = np.isin(r["group"], groups)
        out.append(
            {
                "conf": {m: c[keep] for m, c in r["conf"].items()},
                "right": r["right"][keep],
                "stamps": r["stamps"][keep],
                "group": r["group"][keep],
                "threshold": r["threshold"],
            }
        )
    return out


def table_v(repeats: list[dict[str, Any]], methods: list[str], groups: tuple[str, ...]) -> dict[str, Any]:
    """Per method and group at its threshold: share passed, accuracy of passed, baseline-1 accuracy, and
    the held-out images behind them per repeat (``n``, ``n_right``: means over the repeats)."""
    out: dict[str, Any] = {}
    for m in methods:
        rows: dict[str, dict[str, list[float]]] = {}
        for r in repeats:
            passed = r["conf"][m] >= r["threshold"][m]
            for g in groups:
                sel = r["group"] == g
                if not sel.any():
                    continue
                ok, p = r["right"][sel], passed[sel]
                d = rows.setdefault(
                    g,
                    {
                        "passed": [],
                        "fit_accuracy": [],
                        "baseline1": [],
                        "right_passed": [],
                        "n": [],
                        "n_right": [],
                    },
                )
                d["n"].append(float(sel.sum()))
                d["n_right"].append(float(ok.sum()))
                d["passed"].append(float(p.mean()))
                d["baseline1"].append(float(ok.mean()))
                if p.any():
                    d["fit_accuracy"].append(float(ok[p].mean()))
                if ok.any():
                    d["right_passed"].append(float(p[ok].mean()))
        # A rate with no rows in any repeat (fooling images have no right answers) is NaN, not a warning.
        out[m] = {
            g: {k: float(np.mean(v)) if v else float("nan") for k, v in d.items()} for g, d in rows.items()
        }
    return out
