"""The graphs of an export, each checked against its original before anything is written.

``onnx.checker`` first, then ONNX Runtime beside the torch / scikit-learn original on a batch size other
than the export's (:mod:`fitguard.export.verify`); for a DALI preprocess step its outputs beside the
Python step's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitguard.contract import CLASSIFIER, DETECTOR, QUALITY_MODEL
from fitguard.preprocess import PreprocessSettings
from fitguard.reference import TorchModels, load_torch_models


@dataclass(frozen=True)
class Models(TorchModels):
    """The modules an export turns into graphs, all in eval mode: the torch originals and the detector."""

    detector: Any


def load_models(
    backbone: str,
    weights: str | None,
    *,
    head: Path,
    detector: Path,
    quality_features: str,
    num_classes: int | None = None,
    preset: Any = None,
) -> Models:
    """The backbone (a head of ``num_classes``, ``preset`` when given), the classifier and quality modules
    around it, and the detector, all in eval mode."""
    from fitguard.detector import load_detector
    from fitguard.quality import check_head_mode

    torch_models = load_torch_models(backbone, weights, head, num_classes=num_classes, preset=preset)
    check_head_mode(torch_models.head_info, quality_features, head)
    return Models(
        net=torch_models.net,
        classifier=torch_models.classifier,
        quality=torch_models.quality,
        detector=load_detector(detector),
        head_info=torch_models.head_info,
    )


def _verified_graphs(
    classifier: Any, quality_model: Any, det: Any, settings: PreprocessSettings, precision: str
) -> tuple[dict[str, Any], list[Any]]:
    """The three graphs, each through ``onnx.checker`` and its parity check against the original."""
    if settings.shared:
        return _verified_shared_graphs(classifier, quality_model, det, settings, precision)
    from fitguard.export.onnx_export import (
        apply_precision,
        export_classifier,
        export_detector,
        export_quality,
    )
    from fitguard.export.verify import (
        TOLERANCES,
        check_classifier,
        check_detector,
        check_graph,
        check_quality,
        verification_inputs,
    )

    graphs = {
        CLASSIFIER: apply_precision(export_classifier(classifier), precision),
        QUALITY_MODEL: apply_precision(export_quality(quality_model), precision),
        DETECTOR: export_detector(det, classifier.backbone.num_classes),
    }
    for name, graph in graphs.items():
        check_graph(graph, name)
    tol = TOLERANCES[precision]
    inputs, patch_batch = verification_inputs(settings)
    clf_report, probs, energy = check_classifier(graphs[CLASSIFIER], classifier, inputs, tol)
    q_report, quality = check_quality(graphs[QUALITY_MODEL], quality_model, patch_batch, tol)
    return graphs, [clf_report, q_report, check_detector(graphs[DETECTOR], det, probs, quality, energy, tol)]


def _verified_shared_graphs(
    classifier: Any, quality_model: Any, det: Any, settings: PreprocessSettings, precision: str
) -> tuple[dict[str, Any], list[Any]]:
    """Shared quality mode: the two-output classifier, the head on features, the detector; each checked."""
    from fitguard.classifier import SharedClassifier
    from fitguard.export.onnx_export import apply_precision, export_detector
    from fitguard.export.shared import check_shared_graphs, export_feature_quality, export_shared_classifier
    from fitguard.export.verify import TOLERANCES, check_detector, check_graph, verification_inputs
    from fitguard.quality import FeatureQuality

    net = classifier.backbone
    graphs = {
        CLASSIFIER: apply_precision(export_shared_classifier(SharedClassifier(net).eval()), precision),
        QUALITY_MODEL: apply_precision(
            export_feature_quality(FeatureQuality(quality_model.head).eval(), net.quality_dim, net), precision
        ),
        DETECTOR: export_detector(det, classifier.backbone.num_classes),
    }
    for name, graph in graphs.items():
        check_graph(graph, name)
    tol = TOLERANCES[precision]
    inputs, _ = verification_inputs(settings)
    originals = {"classifier": classifier, "backbone": net, "quality_model": quality_model}
    reports, probs, quality, energy = check_shared_graphs(graphs, originals, inputs, tol)
    return graphs, [*reports, check_detector(graphs[DETECTOR], det, probs, quality, energy, tol)]


def checked_graphs(
    models: Models, settings: PreprocessSettings, *, precision: str, preprocess: str
) -> tuple[dict[str, Any], list[Any]]:
    """The verified graphs and every parity report, the DALI step's against the Python step included."""
    graphs, reports = _verified_graphs(
        models.classifier, models.quality, models.detector, settings, precision
    )
    if preprocess == "dali":
        from fitguard.export import dali

        reports.append(dali.check_parity(settings))
    return graphs, reports
