"""``fitguard export --quality-features shared``: quality from the classifier's own backbone pass.

The repository differs from the patch-mode one in three steps and in the ensemble's wiring, never in the
ensemble's inputs and outputs: preprocess emits the centre crop only, the classifier graph also returns
the quality features of its pass (``IQA_FEATURES``), and the quality graph is the DTNIQ-f head on those
features. Each graph is checked against its original before anything is written: the classifier against
the plain classifier and the backbone's quality features, the quality graph against the patch-mode
quality model run on the centre crop as its one patch (what the head was trained on).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from fitguard.contract import (
    CLASSIFIER,
    CLASSIFIER_INPUT,
    ENERGY,
    ENSEMBLE,
    IQA_FEATURES,
    IQA_PATCHES,
    PREPROCESS,
    PROBS,
    QUALITY_MODEL,
    QUALITY_SCORE,
    SHARED_MODE,
)
from fitguard.export.onnx_export import BATCH_DIM, EXPORT_BATCH, annotate
from fitguard.export.verify import ParityReport, Tolerances, scaled_error, session
from fitguard.parameters import PATCHES
from fitguard.torch_onnx import torch_export

FEATURES_VALUE = "iqa_features"  # the ensemble's name for the classifier -> quality tensor


def export_shared_classifier(classifier: Any) -> onnx.ModelProto:
    """A :class:`fitguard.classifier.SharedClassifier` -> ``CLASSIFIER_INPUT`` -> ``PROBS``, ``ENERGY``,
    ``IQA_FEATURES`` (all from one backbone pass)."""
    import torch

    example = torch.zeros(EXPORT_BATCH, 3, 224, 224, dtype=torch.uint8)
    model = torch_export(classifier, example, CLASSIFIER_INPUT, (PROBS, ENERGY, IQA_FEATURES), {0: BATCH_DIM})
    net = classifier.backbone
    annotate(model, "classifier", backbone=net.name, weights_id=net.weights_id, quality_features=SHARED_MODE)
    return model


def export_feature_quality(quality: Any, feature_dim: int, backbone: Any) -> onnx.ModelProto:
    """A :class:`fitguard.quality.FeatureQuality` -> ``IQA_FEATURES`` [N, D] -> ``QUALITY`` [N, 1]."""
    import torch

    example = torch.zeros(EXPORT_BATCH, feature_dim, dtype=torch.float32)
    model = torch_export(quality, example, IQA_FEATURES, (QUALITY_SCORE,), {0: BATCH_DIM})
    annotate(
        model, "quality", backbone=backbone.name, weights_id=backbone.weights_id, quality_features=SHARED_MODE
    )
    return model


def check_shared_graphs(
    graphs: dict[str, onnx.ModelProto], originals: dict[str, Any], inputs: np.ndarray, tol: Tolerances
) -> tuple[list[ParityReport], np.ndarray, np.ndarray, np.ndarray]:
    """Both shared-mode graphs against their originals on real crops ``inputs``.

    ``originals``: ``classifier`` (the :class:`~fitguard.classifier.ServedClassifier`), ``backbone``,
    ``quality_model`` (the patch-mode :class:`~fitguard.quality.QualityModel` with the same head).
    Returns the reports and the originals' probabilities, qualities and energies (the detector check
    reuses them).
    """
    import torch

    from fitguard.backbones import UInt8Normalize

    probs, energy, features = session(graphs[CLASSIFIER]).run(
        [PROBS, ENERGY, IQA_FEATURES], {CLASSIFIER_INPUT: inputs}
    )
    x = torch.from_numpy(inputs)
    net = originals["backbone"]
    with torch.inference_mode():
        want_probs, want_energy = (t.numpy() for t in originals["classifier"](x))
        want_features = net.quality_features(UInt8Normalize(net.preset)(x)).numpy()
        want_quality = originals["quality_model"](x[:, None]).numpy()
    (quality,) = session(graphs[QUALITY_MODEL]).run([QUALITY_SCORE], {IQA_FEATURES: features})
    top = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    top_want = np.argsort(-want_probs, axis=1, kind="stable")[:, :5]
    reports = [
        ParityReport(
            CLASSIFIER,
            len(inputs),
            {
                "prob": float(np.max(np.abs(probs - want_probs))),
                "energy": scaled_error(energy, want_energy),
                "features": scaled_error(features, want_features),
            },
            {"prob": tol.prob, "energy": tol.prob, "features": tol.quality},
            {"top5": int(np.sum(np.any(top != top_want, axis=1)))},
        ),
        ParityReport(
            QUALITY_MODEL,
            len(inputs),
            {"quality": float(np.max(np.abs(quality - want_quality)))},
            {"quality": tol.quality},
        ),
    ]
    return reports, want_probs, want_quality, want_energy


def _drop_output_map(step: Any, key: str) -> None:
    if key in step.output_map:
        del step.output_map[key]


def to_shared(config: Any, feature_dim: int) -> None:
    """Turn a rendered patch-mode ``ModelConfig`` into its shared-mode form, in place."""
    from tritonclient.grpc import model_config_pb2 as mc

    if config.name == PREPROCESS:
        kept = [t for t in config.output if t.name != IQA_PATCHES]
        del config.output[:]
        config.output.extend(kept)
    elif config.name == CLASSIFIER:
        config.output.add(name=IQA_FEATURES, data_type=mc.TYPE_FP32, dims=[feature_dim])
    elif config.name == QUALITY_MODEL:
        del config.input[:]
        config.input.add(name=IQA_FEATURES, data_type=mc.TYPE_FP32, dims=[feature_dim])
        for warmup in config.model_warmup:
            del warmup.inputs[IQA_PATCHES]
            warmup.inputs[IQA_FEATURES].data_type = mc.TYPE_FP32
            warmup.inputs[IQA_FEATURES].dims.append(feature_dim)
            warmup.inputs[IQA_FEATURES].random_data = True
        if PATCHES in config.parameters:
            del config.parameters[PATCHES]
    elif config.name == ENSEMBLE:
        for step in config.ensemble_scheduling.step:
            if step.model_name == PREPROCESS:
                _drop_output_map(step, IQA_PATCHES)
            elif step.model_name == CLASSIFIER:
                step.output_map[IQA_FEATURES] = FEATURES_VALUE
            elif step.model_name == QUALITY_MODEL:
                del step.input_map[IQA_PATCHES]
                step.input_map[IQA_FEATURES] = FEATURES_VALUE
