"""The fit-for-task detector: features, the detector file, and its reference decision (no torch).

Feature of one image: its top-5 class probabilities sorted in descending order, then the logit of its
quality (6 values). The logit spreads the top of the quality scale, where clean and mildly degraded images
lie close together: on [0, 1] the scaler, fitted on clean and heavily degraded images alike, squeezes that
difference below what a smooth RBF kernel resolves (docs/evaluation.md compares the two). The SVM is a
scikit-learn pipeline (scaler + RBF SVC) trained with label 1 = fit, 0 = unfit;
``FIT_SCORE = decision_function - threshold`` and ``FIT = FIT_SCORE >= 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.contract import TOP_K

DETECTOR_FORMAT = "fitguard.detector/2"  # /2: the quality feature is a logit
QUALITY_EPS = 1e-4  # quality is clipped to [eps, 1 - eps] before the logit
FIT_LABEL, UNFIT_LABEL = 1, 0


class BadDetectorError(ValueError):
    """A detector file is corrupt or not a fitguard detector."""


def quality_logit(quality: np.ndarray) -> np.ndarray:
    """``log(q / (1 - q))`` of quality clipped to [eps, 1 - eps], in float32 as the exported graph has it."""
    q = np.clip(np.asarray(quality, dtype=np.float32), QUALITY_EPS, 1.0 - QUALITY_EPS)
    return (np.log(q) - np.log(np.float32(1.0) - q)).astype(np.float32)


def top_k(probs: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [N, k], probabilities float32 [N, k]) in descending order, like the graph's ONNX TopK."""
    ids = np.argsort(-probs, axis=1, kind="stable")[:, :k].astype(np.int64)
    return ids, np.take_along_axis(probs, ids, axis=1).astype(np.float32)


def detector_features(probs: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """[N, 1000] probabilities and [N] or [N, 1] quality in [0, 1] -> [N, 6] float32 features."""
    probs = np.asarray(probs, dtype=np.float32)
    top = -np.sort(-probs, axis=1)[:, :TOP_K]
    q = quality_logit(np.asarray(quality, dtype=np.float32).reshape(-1, 1))
    return np.concatenate([top, q], axis=1)


@dataclass
class Detector:
    """A trained detector: the scikit-learn pipeline and its operating threshold."""

    pipeline: Any  # sklearn Pipeline(StandardScaler, SVC(kernel="rbf")) predicting FIT_LABEL / UNFIT_LABEL
    threshold: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Signed distance past the threshold: >= 0 is fit. Shape [N] float32."""
        return (self.pipeline.decision_function(np.asarray(features, np.float32)) - self.threshold).astype(
            np.float32
        )

    def fit_verdict(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) >= 0


def save_detector(path: str | Path, detector: Detector) -> None:
    import joblib
    import sklearn

    classes = list(getattr(detector.pipeline, "classes_", []))
    if classes != [UNFIT_LABEL, FIT_LABEL]:
        raise ValueError(f"detector must be trained on labels [0 unfit, 1 fit], got classes {classes}")
    blob = {
        "format": DETECTOR_FORMAT,
        "pipeline": detector.pipeline,
        "threshold": float(detector.threshold),
        "meta": {**detector.meta, "sklearn_version": sklearn.__version__},
    }
    joblib.dump(blob, str(path))


def load_detector(path: str | Path) -> Detector:
    """Read a detector file written by :func:`save_detector`.

    Raises:
        BadDetectorError: unreadable, not a fitguard detector, or not a 6-feature binary classifier.
    """
    import joblib

    try:
        blob = joblib.load(str(path))
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise BadDetectorError(
            f"{path}: not a readable detector file ({exc.__class__.__name__}: {exc})"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != DETECTOR_FORMAT:
        raise BadDetectorError(f"{path}: not a fitguard detector file (format {DETECTOR_FORMAT} expected)")
    pipeline = blob["pipeline"]
    n_in = getattr(pipeline, "n_features_in_", None)
    if n_in != TOP_K + 1:
        raise BadDetectorError(f"{path}: detector takes {n_in} features, fitguard gives {TOP_K + 1}")
    return Detector(pipeline, float(blob["threshold"]), dict(blob.get("meta", {})))
