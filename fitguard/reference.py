"""In-process pipelines that answer exactly like the served ``fitguard`` ensemble.

- :class:`ReferencePipeline`: the originals (torch Classifier + QualityModel, scikit-learn Detector). The
  served answer is checked against it.
- :class:`OnnxPipeline`: the exported ``model.onnx`` files of a repository run directly in ONNX Runtime,
  no server. The benchmark compares the served ensemble to it.

Both use the preprocess backend's own code (:class:`~fitguard.preprocess.PreprocessSettings` read from the
same config parameters) and return the ensemble's outputs: a dict of arrays keyed by the contract's
tensor names, each with a leading batch dimension. torch and onnxruntime load on first use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.contract import (
    CLASS_ID,
    CLASSIFIER,
    CLASSIFIER_INPUT,
    DEFAULT_PATCHES,
    DETECTOR,
    ENERGY,
    FIT,
    FIT_SCORE,
    IQA_FEATURES,
    IQA_PATCHES,
    PATCHES_MODE,
    PROBS,
    QUALITY_MODEL,
    QUALITY_SCORE,
    SHARED_MODE,
    TOP5_IDS,
    TOP5_PROBS,
)
from fitguard.preprocess import DEFAULT_LIMITS, Limits, PreprocessSettings
from fitguard.repository import DETECTOR_NAME, HEAD_NAME, MANIFEST_NAME, model_path, repository_settings

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class TorchModels:
    """The served classifier and quality model around one backbone, in eval mode: the torch originals
    that reference pipelines run, exports turn into graphs and training computes features with."""

    net: Any  # fitguard.backbones.Backbone
    classifier: Any  # fitguard.classifier.ServedClassifier
    quality: Any  # fitguard.quality.QualityModel
    head_info: dict[str, Any]


def load_torch_models(
    backbone: str,
    weights: str | None,
    head: str | Path,
    *,
    num_classes: int | None = None,
    preset: Any = None,
    classifier: Any = None,
) -> TorchModels:
    """The backbone by name (a head of ``num_classes``, the ``preset`` when given: a
    :class:`fitguard.classifier_spec.ClassifierSpec`'s) and the DTNIQ-f head file, assembled as the served
    steps use them. ``classifier``, a spec, names the backbone, weights, classes and preset instead."""
    from fitguard.backbones import build_backbone, build_classifier
    from fitguard.classifier import ServedClassifier
    from fitguard.quality import QualityModel, load_head

    if classifier is not None:
        net = build_classifier(classifier)
    else:
        net = build_backbone(backbone, weights, num_classes=num_classes, preset=preset)
    head_module, head_info = load_head(head, net)
    return TorchModels(
        net=net,
        classifier=ServedClassifier(net).eval(),
        quality=QualityModel(net, head_module).eval(),
        head_info=head_info,
    )


@dataclass
class _Pipeline:
    settings: PreprocessSettings

    def run(self, classifier_input: np.ndarray, patches: np.ndarray | None) -> Outputs:
        """The models on prepared inputs; ``patches`` is None in shared quality mode."""
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

    classifier: Any = None  # fitguard.classifier.Classifier
    quality_model: Any = None  # fitguard.quality.QualityModel
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
        quality_features: str = PATCHES_MODE,
        num_classes: int | None = None,
        preset: Any = None,
    ) -> ReferencePipeline:
        """In ``shared`` quality mode the quality model reads the centre crop as its one patch: the
        features the classifier's pass gives the served quality step."""
        from fitguard.detector import load_detector

        models = load_torch_models(backbone, weights, head, num_classes=num_classes, preset=preset)
        if quality_features == SHARED_MODE:
            patches = 0
        elif not patches:
            patches = DEFAULT_PATCHES
        settings = PreprocessSettings(models.net.preset, patches, limits, backbone, quality_features)
        return cls(
            settings,
            classifier=models.classifier,
            quality_model=models.quality,
            detector=load_detector(detector),
        )

    @classmethod
    def from_repository(cls, repository: str | Path) -> ReferencePipeline:
        """Rebuild the originals a repository was exported from (its manifest and the files beside it)."""
        repository = Path(repository)
        args = json.loads((repository / MANIFEST_NAME).read_text(encoding="utf-8"))["arguments"]
        settings = repository_settings(repository)
        pipeline = cls.from_files(
            args["backbone"],
            repository / HEAD_NAME,
            repository / DETECTOR_NAME,
            args["weights"],
            settings.patches,
            quality_features=settings.quality_features,
            num_classes=args.get("num_classes"),
            preset=settings.preset,
        )
        pipeline.settings = settings
        return pipeline

    def run(self, classifier_input: np.ndarray, patches: np.ndarray | None) -> Outputs:
        import torch

        crops = torch.from_numpy(np.ascontiguousarray(classifier_input))
        with torch.inference_mode():
            probs, energy = (t.numpy() for t in self.classifier(crops))
            views = crops[:, None] if patches is None else torch.from_numpy(np.ascontiguousarray(patches))
            quality = self.quality_model(views).numpy()
        return reference_outputs(probs, quality, self.detector, energy)


def reference_outputs(probs: np.ndarray, quality: np.ndarray, detector: Any, energy: np.ndarray) -> Outputs:
    """The detector step in numpy + scikit-learn: what the detector graph computes."""
    from fitguard.detector import top_k

    ids, top = top_k(probs)
    score = detector.score(detector.features(probs, quality, energy)).reshape(-1, 1)
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
            name: ort.InferenceSession(str(model_path(repository, name)), options, providers=list(providers))
            for name in (CLASSIFIER, QUALITY_MODEL, DETECTOR)
        }
        return cls(repository_settings(repository), sessions=sessions)

    def run(self, classifier_input: np.ndarray, patches: np.ndarray | None) -> Outputs:
        if patches is None:  # shared quality mode: the classifier's pass also gives the quality features
            probs, energy, features = self.sessions[CLASSIFIER].run(
                [PROBS, ENERGY, IQA_FEATURES], {CLASSIFIER_INPUT: classifier_input}
            )
            (quality,) = self.sessions[QUALITY_MODEL].run([QUALITY_SCORE], {IQA_FEATURES: features})
        else:
            probs, energy = self.sessions[CLASSIFIER].run(
                [PROBS, ENERGY], {CLASSIFIER_INPUT: classifier_input}
            )
            (quality,) = self.sessions[QUALITY_MODEL].run([QUALITY_SCORE], {IQA_PATCHES: patches})
        names = [CLASS_ID, TOP5_IDS, TOP5_PROBS, FIT, FIT_SCORE]
        detected = self.sessions[DETECTOR].run(names, {PROBS: probs, ENERGY: energy, QUALITY_SCORE: quality})
        return {**dict(zip(names, detected, strict=True)), QUALITY_SCORE: quality}
