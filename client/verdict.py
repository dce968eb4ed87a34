"""What the server says about one image, as immutable typed records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fitguard import contract
from fitguard.labels import imagenet_classes

from .calibration import Calibration
from .errors import FitguardError


@dataclass(frozen=True, slots=True)
class TopClass:
    """One of the K = min(5, N) most probable classes; ``label`` is the server's name for it, ``wnid`` its
    WordNet id where that name is ImageNet's ("" otherwise)."""

    class_id: int
    wnid: str
    label: str
    probability: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """The fitguard verdict on one image.

    ``fit`` is the detector's decision: True when the classifier's answer can be trusted for this
    image. ``fit_score`` is its signed margin (>= 0 means fit; further from 0 means more certain).
    ``quality`` is the predicted perceptual quality within ``quality_range`` (higher is better).
    ``detector_version`` and ``calibration_id`` say which threshold judged it: the detector version the
    ensemble pins and the ``fitguard calibrate`` run that wrote it (both None for the export's own).
    """

    label: str
    class_id: int
    wnid: str
    confidence: float
    top5: tuple[TopClass, ...]
    quality: float
    fit: bool
    fit_score: float
    model_version: str
    source: str | None = None
    quality_range: tuple[float, float] = contract.QUALITY_RANGE
    detector_version: str | None = None
    calibration_id: str | None = None
    ok: bool = field(default=True, init=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the CLI's ``--json`` line)."""
        return {
            "source": self.source,
            "label": self.label,
            "class_id": self.class_id,
            "wnid": self.wnid,
            "confidence": self.confidence,
            "top5": [
                {"class_id": t.class_id, "wnid": t.wnid, "label": t.label, "probability": t.probability}
                for t in self.top5
            ],
            "quality": self.quality,
            "quality_range": list(self.quality_range),
            "fit": self.fit,
            "fit_score": self.fit_score,
            "model_version": self.model_version,
            "detector_version": self.detector_version,
            "calibration_id": self.calibration_id,
        }


@dataclass(frozen=True, slots=True)
class Failure:
    """An image that got no verdict in :meth:`FitClient.classify_many` (the others still did)."""

    index: int
    source: str | None
    error: FitguardError
    ok: bool = field(default=False, init=False, repr=False)

    @property
    def reason(self) -> str:
        return getattr(self.error, "reason", None) or str(self.error)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "error": type(self.error).__name__, "reason": self.reason}


def served_labels(row: np.ndarray) -> dict[int, str]:
    """Index -> label from one row of the ensemble's classified PROBS ("score:index:label" strings)."""
    found = {}
    for entry in np.asarray(row).ravel():
        text = entry.decode("utf-8") if isinstance(entry, bytes) else str(entry)
        _, index, *label = text.split(":", 2)
        found[int(index)] = label[0] if label else index
    return found


def _top(class_id: int, probability: float, labels: Mapping[int, str] | None) -> TopClass:
    """The class's name from the server's labels file; ImageNet's table only for a repository exported
    before the ensemble offered PROBS (``labels`` None). The WordNet id where the name is ImageNet's."""
    table = imagenet_classes()
    known = table[class_id] if 0 <= class_id < len(table) else None
    fallback = known.name if known and labels is None else str(class_id)
    name = fallback if labels is None else labels.get(class_id, fallback)
    wnid = known.wnid if known and known.name == name else ""
    return TopClass(class_id, wnid, name, probability)


def verdicts_from_outputs(
    outputs: Mapping[str, np.ndarray],
    model_version: str,
    sources: list[str | None],
    calibration: Calibration | None = None,
) -> list[Verdict]:
    """Turn the ensemble's batched output tensors (leading dimension B) into B verdicts."""
    calibration = calibration or Calibration()
    class_ids = np.asarray(outputs[contract.CLASS_ID]).reshape(len(sources), -1)[:, 0]
    top_ids = np.asarray(outputs[contract.TOP5_IDS]).reshape(len(sources), -1)
    top_probs = np.asarray(outputs[contract.TOP5_PROBS], dtype=np.float64).reshape(len(sources), -1)
    classified = outputs.get(contract.PROBS)
    if classified is not None and np.asarray(classified).dtype.kind not in "OSU":
        classified = None  # raw probabilities, not the classification extension's strings
    rows = None if classified is None else np.asarray(classified).reshape(len(sources), -1)
    quality = np.asarray(outputs[contract.QUALITY_SCORE], dtype=np.float64).reshape(len(sources), -1)[:, 0]
    fit = np.asarray(outputs[contract.FIT]).reshape(len(sources), -1)[:, 0]
    score = np.asarray(outputs[contract.FIT_SCORE], dtype=np.float64).reshape(len(sources), -1)[:, 0]
    verdicts = []
    for i, source in enumerate(sources):
        labels = None if rows is None else served_labels(rows[i])
        top5 = tuple(_top(int(c), float(p), labels) for c, p in zip(top_ids[i], top_probs[i], strict=True))
        cls = _top(int(class_ids[i]), float(top_probs[i][0]), labels)
        # The detector's CLASS_ID is the argmax, i.e. TOP5_IDS[0]; take its probability from there.
        confidence = next((t.probability for t in top5 if t.class_id == cls.class_id), cls.probability)
        verdicts.append(
            Verdict(
                label=cls.label,
                class_id=cls.class_id,
                wnid=cls.wnid,
                confidence=confidence,
                top5=top5,
                quality=float(quality[i]),
                fit=bool(fit[i]),
                fit_score=float(score[i]),
                model_version=model_version,
                source=source,
                detector_version=calibration.detector_version,
                calibration_id=calibration.id,
            )
        )
    return verdicts
