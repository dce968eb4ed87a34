"""Evaluation of a quality model by scene: splits, correlations, ordering, calibration, left-out kinds.

Pure numpy (scipy for the rank statistics). A model enters the protocol as a ``fit`` function,
``fit(train_idx, split) -> (predict, info)`` with ``predict(idx) -> scores``, so the learned head and
the classical baseline (:mod:`fitguard.training.quality.brisque`) are measured on exactly the same splits and
checks.

- SRCC / PLCC between predicted and labelled quality on the held-out scenes' images, per split.
- Ordering: per held-out scene and distortion kind, Spearman between quality and the reversed level
  over a *ladder* (one content at every level 1..5 of the kind, plus the same content undistorted when
  present): 1 means the score falls with every step of the degradation.
- Calibration: on every held-out ladder, the undistorted image scores above the level-3 image of every
  kind; and the median quality of the held-out scenes' undistorted images sits near that of the
  training scenes' (the score means the same on a scene the model has not seen).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fitguard.training.data.distortions import LEVELS

# Names how :func:`reference_splits` draws splits; build stamps record it, so a new scheme retrains.
SPLIT_SCHEME = "repeated-kfold/2"
# Names what a quality head's evaluation measures (ladders, calibration, baseline, left-out kinds).
EVALUATION = "scene-protocol/1"
CALIBRATION_LEVEL = 3

Predict = Callable[[np.ndarray], np.ndarray]
Fit = Callable[[np.ndarray, int], tuple[Predict, dict[str, Any]]]


def correlations(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(SRCC, PLCC). PLCC is on the raw predictions, without the logistic fit some papers apply first."""
    from scipy.stats import pearsonr, spearmanr

    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if len(pred) < 3 or np.ptp(pred) == 0 or np.ptp(true) == 0:
        return float("nan"), float("nan")
    return float(spearmanr(pred, true)[0]), float(pearsonr(pred, true)[0])


def reference_splits(
    references: np.ndarray, splits: int, test_fraction: float = 0.2, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``splits`` (train, test) index pairs; each reference lies wholly on one side.

    The splits are repeated k-fold over shuffled references, k = ``round(1 / test_fraction)`` (5 at
    20%, the usual 80/20 protocol on TID2013; fewer where there are fewer references): within a repeat
    every reference is held out exactly once, so ten splits test each reference twice. Independent
    random draws would not: with few references they repeat a pair and skip some entirely, and the mean
    then rests on whichever scenes were drawn. ``splits`` a multiple of k holds every reference out
    equally often.
    """
    refs = np.unique(references)
    if len(refs) < 3:
        raise ValueError(f"need at least 3 reference images to split, got {len(refs)}")
    folds = max(2, min(len(refs), round(1 / test_fraction)))
    rng = np.random.default_rng(seed)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    seen: set[frozenset[str]] = set()
    while len(out) < splits:
        for _ in range(100):  # a repeat whose folds all differ from earlier ones, where there is one
            parts = [frozenset(f) for f in np.array_split(rng.permutation(refs), folds)]
            if not seen & set(parts):
                break
        seen.update(parts)
        for fold in parts:
            test = np.isin(references, list(fold))
            out.append((np.flatnonzero(~test), np.flatnonzero(test)))
    return out[:splits]


@dataclass(frozen=True)
class Labels:
    """What the checks need of every image: label, scene, kind, level and the content it shows.

    ``views`` names the content: the images of one view differ only in their distortion. Undistorted
    images have kind ``"reference"`` and level 0.
    """

    scores: np.ndarray
    references: np.ndarray
    kinds: np.ndarray
    levels: np.ndarray
    views: np.ndarray

    @classmethod
    def from_items(cls, items: Sequence[Any]) -> Labels:
        """From :class:`fitguard.training.quality.data.IQAItem` s (``view`` defaults to the reference)."""
        return cls(
            scores=np.array([it.score for it in items], dtype=np.float64),
            references=np.array([it.reference for it in items]),
            kinds=np.array([it.distortion for it in items]),
            levels=np.array([it.level for it in items], dtype=np.int64),
            views=np.array([getattr(it, "view", None) or it.reference for it in items]),
        )

    def distorted_kinds(self) -> list[str]:
        return sorted(set(self.kinds.tolist()) - {"reference"})


def ladders(labels: Labels, idx: np.ndarray) -> list[tuple[str, str, np.ndarray, int | None]]:
    """(view, kind, indices of levels 1..5 in order, index of the clean image or None) of every ladder.

    A ladder is one view with exactly one image at every level of a kind; views with a partial set
    (the synthetic set's shuffled views) are left out.
    """
    out = []
    clean = {labels.views[i]: i for i in idx if labels.kinds[i] == "reference"}
    groups: dict[tuple[str, str], dict[int, list[int]]] = {}
    for i in idx:
        if labels.kinds[i] != "reference":
            groups.setdefault((labels.views[i], labels.kinds[i]), {}).setdefault(labels.levels[i], []).append(
                i
            )
    for (view, kind), by_level in sorted(groups.items()):
        if sorted(by_level) == list(LEVELS) and all(len(v) == 1 for v in by_level.values()):
            out.append((view, kind, np.array([by_level[lvl][0] for lvl in LEVELS]), clean.get(view)))
    return out


def ordering(pred: np.ndarray, labels: Labels, idx: np.ndarray) -> list[dict[str, Any]]:
    """Per ladder among ``idx``: Spearman between quality and the reversed level (clean = level 0).

    ``pred`` holds a score for every image of ``labels`` (others may be NaN).
    """
    from scipy.stats import spearmanr

    out = []
    for view, kind, steps, clean in ladders(labels, idx):
        members = steps if clean is None else np.concatenate([[clean], steps])
        levels = labels.levels[members]
        rho = float(spearmanr(pred[members], -levels)[0]) if np.ptp(pred[members]) > 0 else 0.0
        ref = labels.references[steps[0]]
        out.append({"reference": str(ref), "view": str(view), "kind": str(kind), "spearman": rho})
    return out


def calibration(pred: np.ndarray, labels: Labels, idx: np.ndarray) -> list[dict[str, Any]]:
    """Per ladder with a clean image: does the clean image score above its level-3 image?"""
    out = []
    for _, kind, steps, clean in ladders(labels, idx):
        if clean is None:
            continue
        level3 = steps[list(LEVELS).index(CALIBRATION_LEVEL)]
        out.append(
            {
                "reference": str(labels.references[clean]),
                "kind": str(kind),
                "clean": float(pred[clean]),
                "level3": float(pred[level3]),
                "above": bool(pred[clean] > pred[level3]),
            }
        )
    return out


def _clean_median(pred: np.ndarray, labels: Labels, idx: np.ndarray) -> float | None:
    clean = idx[labels.kinds[idx] == "reference"]
    return float(np.median(pred[clean])) if len(clean) else None


def _spread(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None and not np.isnan(x)], dtype=np.float64)
    if not len(v):
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def _by_kind(pred: np.ndarray, labels: Labels, idx: np.ndarray) -> dict[str, float]:
    """SRCC within each kind's distorted images among ``idx``."""
    return {
        k: correlations(pred[idx[labels.kinds[idx] == k]], labels.scores[idx[labels.kinds[idx] == k]])[0]
        for k in labels.distorted_kinds()
    }


def split_record(pred: np.ndarray, labels: Labels, train: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """Every check of one split; ``pred`` covers the test images and the training scenes' clean images."""
    srcc, plcc = correlations(pred[test], labels.scores[test])
    order = ordering(pred, labels, test)
    cal = calibration(pred, labels, test)
    med_test, med_train = _clean_median(pred, labels, test), _clean_median(pred, labels, train)
    return {
        "srcc": srcc,
        "plcc": plcc,
        "test_references": sorted(set(labels.references[test].tolist())),
        "srcc_by_kind": _by_kind(pred, labels, test),
        "ordering": order,
        "ordering_mean": float(np.mean([o["spearman"] for o in order])) if order else None,
        "calibration": cal,
        "clean_above_level3": float(np.mean([c["above"] for c in cal])) if cal else None,
        "clean_median_test": med_test,
        "clean_median_train": med_train,
        "clean_median_gap": None if med_test is None or med_train is None else med_test - med_train,
    }


def scene_protocol(
    fit: Fit,
    labels: Labels,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], list[tuple[np.ndarray, np.ndarray]]]:
    """Fit on each split's training scenes, check on its held-out scenes; returns (summary, held-out
    predictions).

    The predictions are ``(test_idx, pred)`` per split, for the plots.
    """
    records, held_out = [], []
    for k, (train, test) in enumerate(splits):
        predict, info = fit(train, k)
        pred = np.full(len(labels.scores), np.nan)
        train_clean = train[labels.kinds[train] == "reference"]
        pred[test] = predict(test)
        if len(train_clean):
            pred[train_clean] = predict(train_clean)
        rec = {"split": k, **info, **split_record(pred, labels, train, test)}
        records.append(rec)
        held_out.append((test, pred[test]))
        if log:
            log(
                f"split {k}: SRCC {rec['srcc']:.4f}  PLCC {rec['plcc']:.4f}  ordering "
                f"{rec['ordering_mean'] or float('nan'):.3f}  test {rec['test_references']}"
            )
    return summarise_splits(records, labels), held_out


def summarise_splits(records: list[dict[str, Any]], labels: Labels) -> dict[str, Any]:
    """Means and spreads over the splits of every figure :func:`split_record` gives."""
    srcc, plcc = _spread([r["srcc"] for r in records]), _spread([r["plcc"] for r in records])
    ladders_all = [o for r in records for o in r["ordering"]]
    cal_all = [c for r in records for c in r["calibration"]]
    failures: dict[tuple[str, str], int] = {}
    for c in cal_all:
        if not c["above"]:
            failures[(c["reference"], c["kind"])] = failures.get((c["reference"], c["kind"]), 0) + 1
    kinds = labels.distorted_kinds()
    scenes = sorted({o["reference"] for o in ladders_all})
    return {
        "srcc_mean": srcc["mean"],
        "srcc_std": srcc["std"],
        "srcc_min": srcc["min"],
        "srcc_max": srcc["max"],
        "plcc_mean": plcc["mean"],
        "plcc_std": plcc["std"],
        "plcc_min": plcc["min"],
        "plcc_max": plcc["max"],
        "srcc_by_kind": {k: _spread([r["srcc_by_kind"][k] for r in records])["mean"] for k in kinds},
        "ordering": {
            **_spread([o["spearman"] for o in ladders_all]),
            "ladders": len(ladders_all),
            "per_kind": {
                k: _spread([o["spearman"] for o in ladders_all if o["kind"] == k])["mean"] for k in kinds
            },
            "per_reference": {
                r: _spread([o["spearman"] for o in ladders_all if o["reference"] == r])["mean"]
                for r in scenes
            },
        },
        "calibration": {
            "clean_above_level3": float(np.mean([c["above"] for c in cal_all])) if cal_all else None,
            "ladders": len(cal_all),
            "failures": [{"reference": r, "kind": k, "splits": n} for (r, k), n in sorted(failures.items())],
            "clean_median_test": _spread([r["clean_median_test"] for r in records]),
            "clean_median_train": _spread([r["clean_median_train"] for r in records]),
            "clean_median_gap": _spread([r["clean_median_gap"] for r in records]),
            "clean_median_gap_max_abs": max(
                (abs(r["clean_median_gap"]) for r in records if r["clean_median_gap"] is not None),
                default=None,
            ),
        },
        "splits": [{k: v for k, v in r.items() if k not in ("ordering", "calibration")} for r in records],
    }


def left_out_kinds(
    fit: Fit,
    labels: Labels,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    included: Sequence[dict[str, Any]] | None = None,
    log: Callable[[str], None] | None = None,
    kinds: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per kind: train without any image of it, test on it (held-out scenes of split ``i mod splits``).

    ``included``: the split records of :func:`scene_protocol` (same splits, every kind in training);
    their SRCC on the kind is copied as ``srcc_included``, so the cost of leaving it out shows.
    ``kinds``: only these (each keeps its split and seed, so parts of the run can run apart).
    """
    out = {}
    for i, kind in enumerate(labels.distorted_kinds()):
        if kinds is not None and kind not in kinds:
            continue
        s = i % len(splits)
        train, test = splits[s]
        test_kind = test[labels.kinds[test] == kind]
        test_clean = test[labels.kinds[test] == "reference"]
        predict, info = fit(train[labels.kinds[train] != kind], 1000 + i)
        pred = np.full(len(labels.scores), np.nan)
        both = np.concatenate([test_kind, test_clean])
        pred[both] = predict(both)
        srcc, plcc = correlations(pred[test_kind], labels.scores[test_kind])
        order = ordering(pred, labels, both)
        out[kind] = {
            "split": s,
            "images": int(len(test_kind)),
            "srcc": srcc,
            "plcc": plcc,
            "ordering_mean": float(np.mean([o["spearman"] for o in order])) if order else None,
            "srcc_included": included[s]["srcc_by_kind"].get(kind) if included else None,
            **info,
        }
        if log:
            log(
                f"left out {kind}: SRCC {srcc:.4f}  ordering {out[kind]['ordering_mean'] or float('nan'):.3f}"
            )
    return out
