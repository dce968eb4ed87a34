"""Scoring one repeat of the evaluation: every method's unfit scores on the test rows, and what each repeat
records (threshold-free metrics, detection at fixed false-alarm rates, operating points, selective
classification)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fitguard.contract import TOP_K
from fitguard.training.image_groups import ORIGINALS
from fitguard.training.metrics import (
    accuracy_at_coverage,
    aurc,
    auroc,
    far_threshold,
    fpr_at_tpr,
    risk_coverage,
)
from fitguard.training.paper.features import GroupFeatures
from fitguard.training.paper.protocol import COVERAGES, FARS, METHODS, QUALITY_THRESHOLD, Accumulator

TOP5 = slice(0, TOP_K)
OPERATING_POINTS: tuple[str, ...] = ("detector", "detector_all", "svm_top5", "baseline2")


def base_scores(feats: GroupFeatures) -> dict[str, np.ndarray]:
    """Scores that need no training: quality, and MSP / energy through pytorch-ood."""
    import torch
    from pytorch_ood.detector import EnergyBased, MaxSoftmax

    logits = torch.from_numpy(feats.logits)
    return {
        "quality": -feats.quality.astype(np.float64),
        "msp": MaxSoftmax.score(logits).double().numpy(),
        "energy": EnergyBased.score(logits).double().numpy(),
    }


def score_rows(
    dets: dict[str, Any],
    x: np.ndarray,
    base: dict[str, np.ndarray],
    quality: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Unfit scores of every method, and fit verdicts at every operating point, for feature rows ``x``."""
    det, det_all, det5 = dets["detector"], dets["detector_all"], dets["svm_top5"]
    scores = {
        "detector": -det.pipeline.decision_function(x),
        "detector_all": -det_all.pipeline.decision_function(x),
        "svm_top5": -det5.pipeline.decision_function(x[:, TOP5]),
        **base,
    }
    fit = {
        "detector": det.fit_verdict(x),
        "detector_all": det_all.fit_verdict(x),
        "svm_top5": det5.fit_verdict(x[:, TOP5]),
        "baseline2": quality >= QUALITY_THRESHOLD,
    }
    return scores, fit


def add_method_metrics(
    acc: Accumulator,
    group: str,
    scores: dict[str, np.ndarray],
    clean: dict[str, np.ndarray],
    ok: np.ndarray | None,
) -> None:
    """Threshold-free metrics and detection at each fixed clean false-alarm rate, per method."""
    for m in METHODS:
        s, c = scores[m], clean[m]
        acc.add((m, group, "auroc"), auroc(c, s))
        acc.add((m, group, "fpr_at_95tpr"), fpr_at_tpr(c, s))
        acc.add((m, group, "n_images"), len(s))
        acc.add((m, group, "n_clean"), len(c))
        for far in FARS:
            thr = far_threshold(c, far)
            flagged = s > thr
            key = f"far_{far:g}"
            acc.add((m, group, key, "detection_rate"), float(flagged.mean()))
            acc.add((m, group, key, "realized_far"), float(np.mean(c > thr)))
            acc.add((m, group, key, "threshold"), thr)
            if ok is not None and (~flagged).any():
                acc.add((m, group, key, "accuracy_fit"), float(ok[~flagged].mean()))


def add_operating_points(
    acc: Accumulator,
    group: str,
    fit_op: dict[str, np.ndarray],
    ok: np.ndarray | None,
    tags: np.ndarray | None,
) -> None:
    """Detection rate and accuracy on what passes, at each method's own operating point."""
    for op, f in fit_op.items():
        path = ("operating_point", op, group)
        acc.add((*path, "detection_rate"), float(np.mean(~f)))
        acc.add((*path, "n_images"), len(f))
        acc.add((*path, "n_detected"), int(np.sum(~f)))
        if ok is not None:
            acc.add((*path, "accuracy_fit"), float(ok[f].mean()) if f.any() else float("nan"))
            acc.add((*path, "n_fit"), int(f.sum()))
            acc.add((*path, "n_fit_correct"), int(ok[f].sum()))
        if tags is not None:
            for kind in sorted(set(tags.tolist())):
                acc.add(("operating_point", op, "distorted_by_kind", kind), float(np.mean(~f[tags == kind])))
    if ok is not None:
        acc.add(("baseline1", group, "accuracy"), float(ok.mean()))
        acc.add(("baseline1", group, "n_images"), len(ok))


def add_clean_points(acc: Accumulator, fit_op: dict[str, np.ndarray], dets: dict[str, Any]) -> None:
    """Clean originals passed at each operating point, and the thresholds of the fitted detectors."""
    for op in OPERATING_POINTS:
        f = fit_op[op]
        acc.add(("operating_point", op, ORIGINALS, "clean_pass_rate"), float(f.mean()))
        acc.add(("operating_point", op, ORIGINALS, "n_images"), len(f))
    for name in ("detector", "svm_top5", "detector_all"):
        acc.add(("operating_point", name, "threshold"), dets[name].threshold)


def add_selective(
    acc: Accumulator,
    curves: dict[str, list[np.ndarray]],
    clean: dict[str, np.ndarray],
    distorted: dict[str, np.ndarray],
    ok: np.ndarray,
    grid: np.ndarray,
) -> None:
    """Selective classification on clean + distorted test images: AURC, accuracy at fixed coverages."""
    acc.add(("selective", "n_images"), len(ok))
    acc.add(("selective", "base_accuracy"), float(ok.mean()))
    for m in METHODS:
        conf = -np.concatenate([clean[m], distorted[m]])
        acc.add(("selective", m, "aurc"), aurc(conf, ok))
        for cov in COVERAGES:
            acc.add(("selective", m, f"accuracy_at_{cov:g}"), accuracy_at_coverage(conf, ok, cov))
        cv, risk = risk_coverage(conf, ok)
        curves[m].append(np.interp(grid, cv, risk))
