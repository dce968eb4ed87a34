"""In-process pipelines that answer exactly like the served ``fitguard`` ensemble.

- :class:`ReferencePipeline`: the originals (torch Classifier + QualityModel, scikit-learn Detector). The
  served answer is checked against it.
- :class:`OnnxPipeline`: the exported ``model.onnx`` files of a repository run directly in ONNX Runtime,
  no server. The benchmark compares the served ensemble to it.

Both use the same preprocessing as the preprocess backend (:class:`PreprocessSettings` read from the same
config parameters) and return the ensemble's outputs: a dict of arrays keyed by the contract's tensor
names, each with a leading batch dimension. This module imports neither torch nor onnxruntime at top
level: the preprocess backend reads its settings from here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.contract import (
    CLASS_ID,
    CLASSIFIER,
    CLASSIFIER_INPUT,
    DETECTOR,
    FIT,
    FIT_SCORE,
    IQA_PATCHES,
    PREPROCESS,
    PROBS,
    QUALITY,
    QUALITY_SCORE,
    TOP5_IDS,
    TOP5_PROBS,
    TOP_K,
)
from fitguard.preprocess import DEFAULT_LIMITS, Limits, prepare
from fitguard.presets import Preset

Outputs = dict[str, np.ndarray]
MANIFEST_NAME = "manifest.json"
HEAD_NAME = "iqa_head.pt"  # copies of the source files, kept beside the manifest (Triton ignores plain files)
DETECTOR_NAME = "detector.joblib"


class Parameters:
    """Typed read access to a Triton config's ``parameters {}`` block (all values are strings there)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Parameters:
        """From the JSON model config the Python backend receives (``args["model_config"]``)."""
        return cls({k: str(v.get("string_value", "")) for k, v in (config.get("parameters") or {}).items()})

    def str(self, key: str, default: str | None = None) -> str:
        value = self._values.get(key, default)
        if value is None:
            raise KeyError(f"config parameter {key!r} is missing")
        return value

    def int(self, key: str, default: int | None = None) -> int:
        return int(self.str(key, None if default is None else str(default)))

    def float(self, key: str, default: float | None = None) -> float:
        return float(self.str(key, None if default is None else repr(default)))

    def bool(self, key: str, default: bool | None = None) -> bool:
        text = self.str(key, None if default is None else str(default)).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config parameter {key!r} is not a boolean: {text!r}")

    def floats(self, key: str, default: Sequence[float] | None = None) -> tuple[float, ...]:
        fallback = None if default is None else ",".join(repr(x) for x in default)
        return tuple(float(x) for x in self.str(key, fallback).split(","))

    def to_dict(self) -> dict[str, str]:
        return dict(self._values)


@dataclass(frozen=True)
class PreprocessSettings:
    """What the preprocess step needs: the backbone's preset, the patch count and the input limits."""

    preset: Preset
    patches: int
    limits: Limits = DEFAULT_LIMITS
    backbone: str = ""

    def to_parameters(self) -> dict[str, str]:
        p = self.preset
        return {
            "backbone": self.backbone,
            "patches": str(self.patches),
            "resize": str(p.resize),
            "crop": str(p.crop),
            "interpolation": p.interpolation,
            "mean": ",".join(repr(x) for x in p.mean),
            "std": ",".join(repr(x) for x in p.std),
            "max_bytes": str(self.limits.max_bytes),
            "max_pixels": str(self.limits.max_pixels),
            "max_side": str(self.limits.max_side),
            "max_aspect": repr(self.limits.max_aspect),
        }

    @classmethod
    def from_parameters(cls, params: Parameters | Mapping[str, str]) -> PreprocessSettings:
        p = params if isinstance(params, Parameters) else Parameters(params)
        base, limits = Preset(), DEFAULT_LIMITS
        preset = Preset(
            resize=p.int("resize", base.resize),
            crop=p.int("crop", base.crop),
            mean=p.floats("mean", base.mean),  # type: ignore[arg-type]
            std=p.floats("std", base.std),  # type: ignore[arg-type]
            interpolation=p.str("interpolation", base.interpolation),
        )
        return cls(
            preset=preset,
            patches=p.int("patches"),
            limits=Limits(
                max_bytes=p.int("max_bytes", limits.max_bytes),
                max_pixels=p.int("max_pixels", limits.max_pixels),
                max_side=p.int("max_side", limits.max_side),
                max_aspect=p.float("max_aspect", limits.max_aspect),
            ),
            backbone=p.str("backbone", ""),
        )

    def prepare(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """One encoded image -> (classifier input [3, 224, 224], patches [P, 3, 224, 224]), uint8."""
        return prepare(data, self.preset, self.patches, self.limits)

    def prepare_batch(self, images: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Encoded images -> stacked inputs. Raises :class:`~fitguard.preprocess.BadImageError` on the first bad one."""
        pairs = [self.prepare(data) for data in images]
        return np.stack([c for c, _ in pairs]), np.stack([q for _, q in pairs])


def read_config(path: str | Path) -> Any:
    """Parse a ``config.pbtxt`` into a ``ModelConfig`` protobuf message."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(Path(path).read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def repository_settings(repository: str | Path) -> PreprocessSettings:
    """The preprocess settings a repository serves with, read from ``preprocess/config.pbtxt``."""
    config = read_config(Path(repository) / PREPROCESS / "config.pbtxt")
    return PreprocessSettings.from_parameters({k: v.string_value for k, v in config.parameters.items()})


def top_k(probs: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [N, k], probabilities float32 [N, k]) in descending order, like ONNX TopK."""
    ids = np.argsort(-probs, axis=1, kind="stable")[:, :k].astype(np.int64)
    return ids, np.take_along_axis(probs, ids, axis=1).astype(np.float32)


@dataclass
class _Pipeline:
    settings: PreprocessSettings

    def run(self, classifier_input: np.ndarray, patches: np.ndarray) -> Outputs:
        raise NotImplementedError

    def predict(self, images: Sequence[bytes]) -> Outputs:
        """Encoded images -> the ensemble's outputs for the batch.

        Raises:
            BadImageError: for the first image that cannot be judged (nothing is returned for the batch).
        """
        if not images:
            raise ValueError("predict needs at least one image")
        return self.run(*self.settings.prepare_batch(images))


@dataclass
class ReferencePipeline(_Pipeline):
    """The originals in-process: torch classifier and quality model, scikit-learn detector."""

    classifier: Any = None  # fitguard.models.Classifier
    quality_model: Any = None  # fitguard.models.QualityModel
    detector: Any = None  # fitguard.detector.Detector
    _torch: Any = field(default=None, repr=False)

    @classmethod
    def from_files(
        cls,
        backbone: str,
        head: str | Path,
        detector: str | Path,
        weights: str | None = "default",
        patches: int | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> ReferencePipeline:
        from fitguard.contract import DEFAULT_PATCHES
        from fitguard.detector import load_detector
        from fitguard.models import Classifier, QualityModel, build_backbone, load_head

        net = build_backbone(backbone, weights)
        head_module, _ = load_head(head, net)
        settings = PreprocessSettings(net.preset, patches or DEFAULT_PATCHES, limits, backbone)
        return cls(
            settings,
            classifier=Classifier(net).eval(),
            quality_model=QualityModel(net, head_module).eval(),
            detector=load_detector(detector),
        )

    @classmethod
    def from_repository(cls, repository: str | Path) -> ReferencePipeline:
        """Rebuild the originals a repository was exported from (its manifest and the files kept beside it)."""
        repository = Path(repository)
        args = json.loads((repository / MANIFEST_NAME).read_text(encoding="utf-8"))["arguments"]
        settings = repository_settings(repository)
        pipeline = cls.from_files(
            args["backbone"],
            repository / HEAD_NAME,
            repository / DETECTOR_NAME,
            args["weights"],
            settings.patches,
        )
        pipeline.settings = settings
        return pipeline

    def run(self, classifier_input: np.ndarray, patches: np.ndarray) -> Outputs:
        import torch

        with torch.inference_mode():
            probs = self.classifier(torch.from_numpy(np.ascontiguousarray(classifier_input))).numpy()
            quality = self.quality_model(torch.from_numpy(np.ascontiguousarray(patches))).numpy()
        return reference_outputs(probs, quality, self.detector)


def reference_outputs(probs: np.ndarray, quality: np.ndarray, detector: Any) -> Outputs:
    """The detector step in numpy + scikit-learn: what the detector graph computes."""
    from fitguard.detector import detector_features

    ids, top = top_k(probs)
    score = detector.score(detector_features(probs, quality)).reshape(-1, 1)
    return {
        CLASS_ID: ids[:, :1],
        TOP5_IDS: ids,
        TOP5_PROBS: top,
        QUALITY_SCORE: np.asarray(quality, np.float32).reshape(-1, 1),
        FIT: score >= 0,
        FIT_SCORE: score,
    }


@dataclass
class OnnxPipeline(_Pipeline):
    """A repository's ``model.onnx`` files run directly in ONNX Runtime, with the served preprocessing."""

    sessions: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_repository(
        cls, repository: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int = 0
    ) -> OnnxPipeline:
        import onnxruntime as ort

        repository = Path(repository)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default
        sessions = {
            name: ort.InferenceSession(
                str(repository / name / "1" / "model.onnx"), options, providers=list(providers)
            )
            for name in (CLASSIFIER, QUALITY, DETECTOR)
        }
        return cls(repository_settings(repository), sessions=sessions)

    def run(self, classifier_input: np.ndarray, patches: np.ndarray) -> Outputs:
        (probs,) = self.sessions[CLASSIFIER].run([PROBS], {CLASSIFIER_INPUT: classifier_input})
        (quality,) = self.sessions[QUALITY].run([QUALITY_SCORE], {IQA_PATCHES: patches})
        names = [CLASS_ID, TOP5_IDS, TOP5_PROBS, FIT, FIT_SCORE]
        detected = self.sessions[DETECTOR].run(names, {PROBS: probs, QUALITY_SCORE: quality})
        return {**dict(zip(names, detected, strict=True)), QUALITY_SCORE: quality}
