"""Selective classification on right/wrong labels: confidence signals, and metrics with bootstrap intervals.

Confidences are "higher = more likely right". The signals a served pipeline can compute come in groups
(the feature-group ablation removes or adds one at a time):

- ``paper``: the paper's six numbers, [top-5 sorted probabilities, quality logit];
- ``probvec``: scores of the whole probability vector: negative entropy, energy (logsumexp of the
  logits), DOCTOR's sum of squared probabilities;
- ``patches``: the classifier on the P quality patches: share whose top-1 equals the centre crop's,
  mean and minimum probability the patches give the centre crop's class, mean patch max probability;
- ``levels``: per-level mean and spread of the feature maps the quality head reads.

Intervals: per bootstrap draw, the held-out stamps of every repeat are resampled with replacement, the
metric is computed per repeat and averaged over repeats; the 2.5% and 97.5% percentiles of those draws
bound the mean. Differences between methods use the same draws (paired).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fitguard.classifier import logsumexp, softmax
from fitguard.detector import FIT_SET, detector_features
from fitguard.training.fit.features import FitFeatures
from fitguard.training.metrics import accuracy_at_coverage, aurc

SIGNAL_GROUPS: tuple[str, ...] = ("paper", "probvec", "patches", "levels")
SHIPPED = "shipped"  # beside the groups: the shipped detector's features, as its graph computes them
COVERAGES: tuple[float, ...] = (0.8, 0.9, 0.95)


def prob_scores(logits: np.ndarray) -> dict[str, np.ndarray]:
    """Untrained confidences from the logits: MSP, max logit, top-1 minus top-2 probability, energy,
    DOCTOR (sum of p^2), negative entropy."""
    logits = logits.astype(np.float64)
    p = softmax(logits)
    top2 = -np.sort(-p, axis=1)[:, :2]
    return {
        "msp": p.max(axis=1),
        "maxlogit": logits.max(axis=1),
        "margin": top2[:, 0] - top2[:, 1],
        "energy": logsumexp(logits),
        "doctor": (p**2).sum(axis=1),
        "entropy": (p * np.log(np.clip(p, 1e-12, None))).sum(axis=1),
    }


def signal_groups(feats: FitFeatures) -> dict[str, np.ndarray]:
    """The signal groups of the module docstring, each [N, d] float64."""
    probs = softmax(feats.logits.astype(np.float64))
    top1 = probs.argmax(axis=1)
    ps = prob_scores(feats.logits)
    patch_p = softmax(feats.patch_logits.astype(np.float64))  # [N, P, 1000]
    rows = np.arange(len(top1))
    p_centre = patch_p[rows, :, top1]  # [N, P]
    agree = (patch_p.argmax(axis=2) == top1[:, None]).mean(axis=1)
    return {
        "paper": detector_features(probs, feats.quality).astype(np.float64),
        "probvec": np.stack([ps["entropy"], ps["energy"], ps["doctor"]], axis=1),
        "patches": np.stack([agree, p_centre.mean(1), p_centre.min(1), patch_p.max(2).mean(1)], axis=1),
        "levels": feats.level_stats.astype(np.float64),
        SHIPPED: detector_features(
            probs.astype(np.float32), feats.quality, FIT_SET, energy=ps["energy"].astype(np.float32)
        ).astype(np.float64),
    }


def stack_signals(signals: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    return np.concatenate([signals[n] for n in names], axis=1)


def selective_metrics(conf: np.ndarray, right: np.ndarray) -> dict[str, float]:
    """AURC and accuracy at the :data:`COVERAGES` of one ranking."""
    out = {"aurc": aurc(conf, right)}
    for cov in COVERAGES:
        out[f"accuracy_at_{cov:g}"] = accuracy_at_coverage(conf, right, cov)
    return out


Metric = Callable[[np.ndarray, np.ndarray], float]


def metric(name: str) -> Metric:
    """``aurc`` or ``accuracy_at_<coverage>`` as a function of (confidence, right)."""
    if name == "aurc":
        return aurc
    coverage = float(name.rsplit("_", 1)[1])
    return lambda conf, ok: accuracy_at_coverage(conf, ok, coverage)


def _stamp_rows(stamps: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    ids, inverse = np.unique(stamps, return_inverse=True)
    return ids, [np.flatnonzero(inverse == k) for k in range(len(ids))]


def bootstrap(
    repeats: list[dict[str, Any]],
    methods: list[str],
    metric: Metric,
    draws: int = 200,
    seed: int = 0,
    reference: str = "msp",
) -> dict[str, Any]:
    """Mean over repeats of ``metric(conf, right)`` per method, with stamp-bootstrap intervals.

    Each repeat is ``{"conf": {method: [n]}, "right": [n], "stamps": [n]}`` (held-out rows of one mix).
    Adds, per method, the paired difference to ``reference`` and its interval.
    """
    rng = np.random.default_rng(seed)
    point = {m: float(np.mean([metric(r["conf"][m], r["right"]) for r in repeats])) for m in methods}
    groups = [_stamp_rows(r["stamps"])[1] for r in repeats]
    reps = np.empty((draws, len(methods)))
    for b in range(draws):
        per_repeat = np.empty((len(repeats), len(methods)))
        for k, (r, rows) in enumerate(zip(repeats, groups, strict=True)):
            pick = rng.integers(0, len(rows), size=len(rows))
            idx = np.concatenate([rows[i] for i in pick])
            ok = r["right"][idx]
            per_repeat[k] = [metric(r["conf"][m][idx], ok) for m in methods]
        reps[b] = np.nanmean(per_repeat, axis=0)
    out: dict[str, Any] = {}
    ref = methods.index(reference) if reference in methods else None
    for j, m in enumerate(methods):
        lo, hi = np.nanpercentile(reps[:, j], [2.5, 97.5])
        entry = {"mean": point[m], "ci95": [float(lo), float(hi)]}
        if ref is not None and j != ref:
            diff = reps[:, j] - reps[:, ref]
            dlo, dhi = np.nanpercentile(diff, [2.5, 97.5])
            entry[f"minus_{reference}"] = {
                "mean": point[m] - point[reference],
                "ci95": [float(dlo), float(dhi)],
                "relative": (point[m] - point[reference]) / point[reference] if point[reference] else None,
            }
        out[m] = entry
    return out


def _matched(r: dict[str, Any], idx: np.ndarray, method: str, reference: str) -> tuple[float, ...]:
    """Coverage of ``method`` at its threshold on rows ``idx``, its accuracy there, and the accuracy of
    ``reference`` on the same share of rows it ranks highest."""
    conf, ok = r["conf"][method][idx], r["right"][idx]
    passed = conf >= r["threshold"][method]
    if not passed.any():
        return 0.0, float("nan"), float("nan")
    coverage = float(passed.mean())
    return coverage, float(ok[passed].mean()), accuracy_at_coverage(r["conf"][reference][idx], ok, coverage)


def coverage_matched(
    repeats: list[dict[str, Any]], method: str, reference: str = "msp", draws: int = 200, seed: int = 0
) -> dict[str, Any]:
    """At ``method``'s operating threshold: its coverage and the accuracy of what it passes, beside the
    accuracy ``reference`` keeps at the same coverage; means over repeats, stamp-bootstrap intervals
    (the difference paired on the same draws)."""
    rng = np.random.default_rng(seed)
    rows = [_stamp_rows(r["stamps"])[1] for r in repeats]
    point = np.nanmean([_matched(r, np.arange(len(r["right"])), method, reference) for r in repeats], axis=0)
    reps = np.empty((draws, 3))
    for b in range(draws):
        per = []
        for r, groups in zip(repeats, rows, strict=True):
            idx = np.concatenate([groups[i] for i in rng.integers(0, len(groups), size=len(groups))])
            per.append(_matched(r, idx, method, reference))
        reps[b] = np.nanmean(per, axis=0)
    diff = reps[:, 1] - reps[:, 2]

    def ci(values: np.ndarray) -> list[float]:
        return [float(v) for v in np.nanpercentile(values, [2.5, 97.5])]

    return {
        "coverage": {"mean": float(point[0]), "ci95": ci(reps[:, 0])},
        "accuracy": {"mean": float(point[1]), "ci95": ci(reps[:, 1])},
        f"{reference}_accuracy": {"mean": float(point[2]), "ci95": ci(reps[:, 2])},
        f"minus_{reference}": {"mean": float(point[1] - point[2]), "ci95": ci(diff)},
    }


def mean_curve(repeats: list[dict[str, Any]], method: str, grid: np.ndarray) -> list[float]:
    """Risk-coverage curve of ``method`` on ``grid`` coverages, averaged over repeats."""
    from fitguard.training.metrics import risk_coverage

    curves = []
    for r in repeats:
        cov, risk = risk_coverage(r["conf"][method], r["right"])
        curves.append(np.interp(grid, cov, risk))
    return np.mean(curves, axis=0).tolist()
