"""The fit-for-task detector: features, the detector file, and its reference decision (no torch).

A detector file names its feature set (:data:`FEATURE_SETS`), each computed from what the classifier
and quality steps serve (``PROBS``, ``ENERGY``, ``QUALITY``), so every set serves through the same graphs:

- ``paper``: the paper's six numbers, the top-5 class probabilities sorted in descending order, then
  the logit of quality. The logit spreads the top of the quality scale, where clean and mildly degraded
  images lie close together (docs/evaluation.md compares it with raw quality).
- ``fit``: the paper's six plus the energy, the logsumexp of the classifier's logits: the scale of the
  logits that softmax removes. The shipped detector uses it, trained on fit = the classifier's answer
  is right; docs/fit_right.md measures it beside entropy and DOCTOR, which add nothing held out beyond
  it and make the linear model's coefficients unstable (they are near-copies of the top-1 probability).

The quality logit is always the last feature. A detector is one of two kinds:

- ``learned``: a scikit-learn pipeline (scaler + a binary classifier with ``decision_function``, trained
  with label 1 = fit, 0 = unfit) ranks answers: ``FIT_SCORE = decision - threshold``;
- ``guarded`` (shipped, no pipeline): the classifier's own max softmax probability ranks answers and a
  :class:`Veto` acts in the tail: ``FIT_SCORE = MSP - [energy >= e and quality logit <= q] - threshold``.
  The veto fires only where the classifier is more confident than natural images make it *and* the
  image's quality is low, the mark of a fooling image; either alone is common in real photos (a clean
  close-up on a plain background, a noisy snapshot). A vetoed answer drops below every answer that is
  not, so the veto moves the tail and never reorders the rest.

``FIT = FIT_SCORE >= 0``; changing ``threshold`` alone re-calibrates either kind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.contract import TOP_K

DETECTOR_FORMAT = "fitguard.detector/4"  # /4: learned or guarded (a veto); /3: names its feature set
READABLE_FORMATS = ("fitguard.detector/2", "fitguard.detector/3", DETECTOR_FORMAT)  # /2: paper features
QUALITY_EPS = 1e-4  # quality is clipped to [eps, 1 - eps] before the logit
FIT_LABEL, UNFIT_LABEL = 1, 0
PAPER, FIT_SET = "paper", "fit"
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    PAPER: (*(f"top{k}" for k in range(1, TOP_K + 1)), "quality_logit"),
    FIT_SET: (*(f"top{k}" for k in range(1, TOP_K + 1)), "energy", "quality_logit"),
}


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


def detector_features(
    probs: np.ndarray, quality: np.ndarray, feature_set: str = PAPER, energy: np.ndarray | None = None
) -> np.ndarray:
    """[N, C] probabilities, [N] or [N, 1] quality in [0, 1] and (for the ``fit`` set) [N] or [N, 1]
    energy -> [N, d] float32 features of the set."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown detector feature set {feature_set!r}; known: {sorted(FEATURE_SETS)}")
    probs = np.asarray(probs, dtype=np.float32)
    top = -np.sort(-probs, axis=1)[:, :TOP_K]
    # Fewer than five classes: the classes that do not exist have probability 0, so every feature set keeps
    # its columns (a veto reads them by position) whatever the classifier's N.
    parts = [np.pad(top, ((0, 0), (0, TOP_K - top.shape[1])))]
    if feature_set == FIT_SET:
        if energy is None:
            raise ValueError("the fit feature set needs the classifier's energy")
        parts.append(np.asarray(energy, dtype=np.float32).reshape(-1, 1))
    parts.append(quality_logit(np.asarray(quality, dtype=np.float32).reshape(-1, 1)))
    return np.concatenate(parts, axis=1)


ENERGY_COLUMN = FEATURE_SETS[FIT_SET].index("energy")


@dataclass(frozen=True)
class Veto:
    """Fires where the energy is at least ``energy_min`` and the quality logit at most
    ``quality_logit_max``: both tails at once (module docstring)."""

    energy_min: float
    quality_logit_max: float

    def fires(self, features: np.ndarray) -> np.ndarray:
        """``fit`` set features [N, 7] -> [N] bool, in float32 as the exported graph compares."""
        x = np.asarray(features, np.float32)
        return (x[:, ENERGY_COLUMN] >= np.float32(self.energy_min)) & (
            x[:, -1] <= np.float32(self.quality_logit_max)
        )


@dataclass
class Detector:
    """A trained detector: a scikit-learn pipeline (learned) or a veto (guarded), and its operating
    threshold (module docstring)."""

    pipeline: Any  # learned: sklearn Pipeline(StandardScaler, binary classifier) predicting FIT / UNFIT
    threshold: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    feature_set: str = PAPER
    veto: Veto | None = None  # guarded: MSP ranks and this vetoes; the pipeline is None

    @property
    def guarded(self) -> bool:
        return self.veto is not None

    def features(
        self, probs: np.ndarray, quality: np.ndarray, energy: np.ndarray | None = None
    ) -> np.ndarray:
        return detector_features(probs, quality, self.feature_set, energy)

    def confidence(self, features: np.ndarray) -> np.ndarray:
        """The ranking before the threshold: the decision (learned) or MSP minus the veto (guarded)."""
        x = np.asarray(features, np.float32)
        if self.veto is None:
            return self.pipeline.decision_function(x).astype(np.float32)
        return (x[:, 0] - self.veto.fires(x).astype(np.float32)).astype(np.float32)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Signed distance past the threshold: >= 0 is fit. Shape [N] float32."""
        return (self.confidence(features) - np.float32(self.threshold)).astype(np.float32)

    def fit_verdict(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) >= 0


def save_detector(path: str | Path, detector: Detector) -> None:
    import joblib
    import sklearn

    classes = list(getattr(detector.pipeline, "classes_", []))
    if detector.veto is not None:
        if detector.pipeline is not None or detector.feature_set != FIT_SET:
            raise ValueError("a guarded detector has a veto on the fit feature set and no pipeline")
    elif classes != [UNFIT_LABEL, FIT_LABEL]:
        raise ValueError(f"detector must be trained on labels [0 unfit, 1 fit], got classes {classes}")
    blob = {
        "format": DETECTOR_FORMAT,
        "feature_set": detector.feature_set,
        "pipeline": detector.pipeline,
        "threshold": float(detector.threshold),
        "veto": None if detector.veto is None else asdict(detector.veto),
        "meta": {**detector.meta, "sklearn_version": sklearn.__version__},
    }
    joblib.dump(blob, str(path))


def load_detector(path: str | Path) -> Detector:
    """Read a detector file written by :func:`save_detector`.

    Raises:
        BadDetectorError: unreadable, not a fitguard detector, or its classifier does not take the
            number of features its feature set has.
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
    if not isinstance(blob, dict) or blob.get("format") not in READABLE_FORMATS:
        raise BadDetectorError(f"{path}: not a fitguard detector file (format {DETECTOR_FORMAT} expected)")
    feature_set = blob.get("feature_set", PAPER)
    if feature_set not in FEATURE_SETS:
        raise BadDetectorError(f"{path}: unknown feature set {feature_set!r}")
    pipeline, veto = blob["pipeline"], blob.get("veto")
    n_in, n_set = getattr(pipeline, "n_features_in_", None), len(FEATURE_SETS[feature_set])
    if veto is not None:
        if feature_set != FIT_SET or set(veto) != {"energy_min", "quality_logit_max"}:
            raise BadDetectorError(f"{path}: a guarded detector needs the fit set and both veto limits")
        veto = Veto(float(veto["energy_min"]), float(veto["quality_logit_max"]))
    elif n_in != n_set:
        raise BadDetectorError(f"{path}: detector takes {n_in} features, its set {feature_set!r} has {n_set}")
    return Detector(pipeline, float(blob["threshold"]), dict(blob.get("meta", {})), feature_set, veto)
