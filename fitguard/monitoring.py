"""Verdict metrics on Triton's Prometheus endpoint, through the Python backend's custom metrics API.

The monitor step (``model_repository/monitor``) counts every verdict the ensemble returns; the preprocess
step counts the images it refuses. Both register their families through ``pb_utils.MetricFamily``, so the
figures appear on the server's own ``/metrics`` beside Triton's request and queue metrics. The names and
buckets live here, once: the model adapters, the dashboard, the alert rules and the tests read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fitguard.parameters import DEFAULT_MAX_CLASSES

VERDICTS = "fitguard_verdicts_total"
REFUSALS = "fitguard_refusals_total"
QUALITY = "fitguard_quality"
FIT_SCORE = "fitguard_fit_score"
UNFIT_BY_CLASS = "fitguard_unfit_by_class_total"

REASON_BAD_IMAGE = "bad_image"
REASON_UNFIT = "unfit"
OTHER_CLASS = "other"

# Quality is a normalised MOS in [0, 1]: 0.05 steps resolve a median shift of a few hundredths.
QUALITY_BUCKETS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 21))
# FIT_SCORE is the SVM decision value minus the threshold (0 = the boundary): finer near the boundary.
FIT_SCORE_BUCKETS: tuple[float, ...] = (-4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


class _ClassCounters:
    """Unfit counters per top-1 class, at most ``limit`` classes (then ``other``): bounded cardinality."""

    def __init__(self, family: Any, version: str, names: Sequence[str], limit: int) -> None:
        self._family, self._version, self._names, self._limit = family, version, names, limit
        self._metrics: dict[str, Any] = {}

    def _metric(self, class_id: int) -> Any:
        key = str(class_id) if len(self._metrics) < self._limit or str(class_id) in self._metrics else None
        key = key or OTHER_CLASS
        if key not in self._metrics:
            label = self._names[class_id] if key != OTHER_CLASS and 0 <= class_id < len(self._names) else key
            self._metrics[key] = self._family.Metric(
                labels={"class_id": key, "label": label, "version": self._version}
            )
        return self._metrics[key]

    def add(self, class_ids: np.ndarray) -> None:
        ids, counts = np.unique(class_ids, return_counts=True)
        for class_id, count in zip(ids.tolist(), counts.tolist(), strict=True):
            self._metric(int(class_id)).increment(count)


class VerdictMetrics:
    """The monitor step's metrics. ``pb_utils`` is ``triton_python_backend_utils`` (passed in: tests fake
    it)."""

    def __init__(
        self,
        pb_utils: Any,
        *,
        version: str,
        class_names: Sequence[str],
        max_classes: int = DEFAULT_MAX_CLASSES,
    ) -> None:
        mf = pb_utils.MetricFamily
        verdicts = mf(name=VERDICTS, description="Verdicts returned, by verdict", kind=mf.COUNTER)
        refusals = refusal_family(pb_utils)
        quality = mf(name=QUALITY, description="Predicted quality of judged images", kind=mf.HISTOGRAM)
        score = mf(name=FIT_SCORE, description="Detector score minus threshold", kind=mf.HISTOGRAM)
        by_class = mf(name=UNFIT_BY_CLASS, description="Unfit verdicts by top-1 class", kind=mf.COUNTER)
        self._families = (verdicts, refusals, quality, score, by_class)  # must outlive their metrics
        labels = {"version": version}
        self.fit = verdicts.Metric(labels={"verdict": "fit", **labels})
        self.unfit = verdicts.Metric(labels={"verdict": "unfit", **labels})
        self.refused_unfit = refusals.Metric(labels={"reason": REASON_UNFIT, **labels})
        self.quality = quality.Metric(labels=labels, buckets=list(QUALITY_BUCKETS))
        self.fit_score = score.Metric(labels=labels, buckets=list(FIT_SCORE_BUCKETS))
        self.by_class = _ClassCounters(by_class, version, class_names, max_classes)

    def record(
        self, *, class_id: np.ndarray, quality: np.ndarray, fit: np.ndarray, score: np.ndarray
    ) -> None:
        """Count one batch of verdicts (arrays of any shape, one element per image)."""
        fit = np.asarray(fit, dtype=bool).reshape(-1)
        unfit = int(fit.size - fit.sum())
        if fit.size - unfit:
            self.fit.increment(int(fit.size - unfit))
        if unfit:
            self.unfit.increment(unfit)
            self.refused_unfit.increment(unfit)
            self.by_class.add(np.asarray(class_id).reshape(-1)[~fit])
        for value in np.asarray(quality, dtype=np.float64).reshape(-1).tolist():
            self.quality.observe(value)
        for value in np.asarray(score, dtype=np.float64).reshape(-1).tolist():
            self.fit_score.observe(value)


def refusal_family(pb_utils: Any) -> Any:
    """``fitguard_refusals_total``: registered by both steps; Triton merges families of the same name."""
    mf = pb_utils.MetricFamily
    return mf(name=REFUSALS, description="Inputs refused, by reason", kind=mf.COUNTER)


class BadImageCounter:
    """The preprocess step's share of the refusals: images that could not be judged at all."""

    def __init__(self, pb_utils: Any, *, version: str) -> None:
        self._family = refusal_family(pb_utils)
        self._metric = self._family.Metric(labels={"reason": REASON_BAD_IMAGE, "version": version})

    def add(self, count: int = 1) -> None:
        self._metric.increment(count)
