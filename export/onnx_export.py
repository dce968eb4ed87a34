"""The three graphs of the repository, with the contract's tensor names and a dynamic batch dimension.

- classifier: ``CLASSIFIER_INPUT`` uint8 [N, 3, 224, 224] -> ``PROBS`` fp32 [N, 1000], ``ENERGY`` fp32
  [N, 1] (torch.onnx, dynamo).
- quality: ``IQA_PATCHES`` uint8 [N, P, 3, 224, 224] -> ``QUALITY`` fp32 [N, 1], N and P dynamic.
- detector: skl2onnx's scaler + classifier (logistic regression or SVC), composed with a TopK/Concat
  prefix and a threshold suffix into one graph: ``PROBS``, ``ENERGY``, ``QUALITY`` -> ``CLASS_ID``,
  ``TOP5_IDS``, ``TOP5_PROBS``, ``FIT``, ``FIT_SCORE``.

Precision is a separate, explicit step (:func:`apply_precision`) so a lower-precision variant is one
entry in :data:`PRECISIONS` plus its tolerances in :mod:`fitguard.export.verify`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fitguard.contract import (
    CLASS_ID,
    CLASSIFIER_INPUT,
    ENERGY,
    FIT,
    FIT_SCORE,
    IQA_PATCHES,
    NUM_CLASSES,
    PROBS,
    QUALITY_SCORE,
    TOP5_IDS,
    TOP5_PROBS,
    TOP_K,
    top_k,
)
from fitguard.detector import FEATURE_SETS, FIT_SET, QUALITY_EPS
from fitguard.torch_onnx import OPSET, torch_export

ML_OPSET = 3
EXPORT_BATCH = 2  # verification runs another batch size, so a batch baked into the graph is caught
EXPORT_PATCHES = 2
BATCH_DIM = "batch"
PATCH_DIM = "patches"


class ExportError(RuntimeError):
    """A model could not be turned into a valid graph."""


def export_classifier(classifier: Any) -> onnx.ModelProto:
    """A :class:`fitguard.classifier.ServedClassifier` -> ``CLASSIFIER_INPUT`` -> ``PROBS``, ``ENERGY``."""
    import torch

    example = torch.zeros(EXPORT_BATCH, 3, 224, 224, dtype=torch.uint8)
    model = torch_export(classifier, example, CLASSIFIER_INPUT, (PROBS, ENERGY), {0: BATCH_DIM})
    annotate(
        model, "classifier", backbone=classifier.backbone.name, weights_id=classifier.backbone.weights_id
    )
    return model


def export_quality(quality_model: Any) -> onnx.ModelProto:
    """A :class:`fitguard.quality.QualityModel` -> graph ``IQA_PATCHES`` -> ``QUALITY`` (N and P dynamic)."""
    import torch

    example = torch.zeros(EXPORT_BATCH, EXPORT_PATCHES, 3, 224, 224, dtype=torch.uint8)
    model = torch_export(quality_model, example, IQA_PATCHES, QUALITY_SCORE, {0: BATCH_DIM, 1: PATCH_DIM})
    annotate(
        model, "quality", backbone=quality_model.backbone.name, weights_id=quality_model.backbone.weights_id
    )
    return model


# ------------------------------------------------------------------------------------------------ detector


def _sklearn_graph(pipeline: Any, input_name: str, n_features: int) -> onnx.ModelProto:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    final = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    options: dict[str, Any] = {"zipmap": False}  # plain [N, 2] scores, not a list of dicts
    if not hasattr(final, "support_vectors_"):  # linear models: decision_function, not probabilities
        options["raw_scores"] = True
    # skl2onnx reads SVC's probA_/probB_, which scikit-learn >= 1.9 flags as deprecated.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return to_onnx(
                pipeline,
                initial_types=[(input_name, FloatTensorType([None, n_features]))],
                options={id(final): options},
                target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
            )
        except Exception as exc:
            raise ExportError(f"skl2onnx cannot convert the detector pipeline: {exc}") from exc


def probe_inputs(
    rows: int = 256, seed: int = 0, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detector inputs spread over what real images give: probabilities [rows, num_classes] and energies
    [rows, 1] of logits from flat to peaked (a few classes lifted above Gaussian noise of random
    scale), and qualities in [0, 1] [rows, 1]."""
    rng = np.random.default_rng(seed)
    from fitguard.classifier import logsumexp

    logits = rng.normal(0, 1, (rows, num_classes)) * rng.uniform(0.5, 3, (rows, 1))
    lifted = rng.integers(0, num_classes, (rows, 3))
    np.put_along_axis(logits, lifted, rng.uniform(0, 20, (rows, 3)), axis=1)
    energy = logsumexp(logits)[:, None]
    probs = np.exp(logits - energy)
    quality = rng.uniform(0, 1, size=(rows, 1))
    return probs.astype(np.float32), quality.astype(np.float32), energy.astype(np.float32)


def _score_column(
    svm: onnx.ModelProto, detector: Any, input_name: str, scores_name: str
) -> tuple[int, float]:
    """Which column (and sign) of skl2onnx's score output is sklearn's ``decision_function``.

    skl2onnx 1.20 emits ``[d, -d]`` for a binary SVC (column 0 carries the positive class's score),
    unlike ``predict_proba``'s column order; probing keeps us right if a release changes that.
    """
    import onnxruntime as ort

    features = detector.features(*probe_inputs(64, seed=1))
    session = ort.InferenceSession(svm.SerializeToString(), providers=["CPUExecutionProvider"])
    (scores,) = session.run([scores_name], {input_name: features})
    expected = detector.pipeline.decision_function(features)
    if scores.ndim != 2 or expected.ndim != 1:
        raise ExportError(f"detector must be a binary classifier; ONNX scores have shape {scores.shape}")
    errors = {
        (col, sign): float(np.max(np.abs(sign * scores[:, col] - expected)))
        for col in range(scores.shape[1])
        for sign in (1.0, -1.0)
    }
    (col, sign), err = min(errors.items(), key=lambda item: item[1])
    if err > 1e-3 * (1.0 + float(np.max(np.abs(expected)))):
        raise ExportError(f"no column of skl2onnx's scores matches decision_function (best error {err:.3g})")
    return col, sign


def _common_constants(threshold: float, num_classes: int) -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array(np.array([top_k(num_classes)], np.int64), "fg_k"),
        numpy_helper.from_array(np.array([threshold], np.float32), "fg_threshold"),
        numpy_helper.from_array(np.array([0.0], np.float32), "fg_zero"),
        numpy_helper.from_array(np.array([0], np.int64), "fg_start"),
        numpy_helper.from_array(np.array([1], np.int64), "fg_one"),
        numpy_helper.from_array(np.array(QUALITY_EPS, np.float32), "fg_eps"),
        numpy_helper.from_array(np.array(1.0 - QUALITY_EPS, np.float32), "fg_1_eps"),
        numpy_helper.from_array(np.array([[1.0]], np.float32), "fg_unit"),
    ]


def _prefix_nodes() -> list[onnx.NodeProto]:
    """TopK of PROBS, and the quality logit (:func:`fitguard.detector.quality_logit`) as fg_quality_logit."""
    return [
        helper.make_node("TopK", [PROBS, "fg_k"], [TOP5_PROBS, TOP5_IDS], axis=1, largest=1, sorted=1),
        helper.make_node("Clip", [QUALITY_SCORE, "fg_eps", "fg_1_eps"], ["fg_q"]),
        helper.make_node("Log", ["fg_q"], ["fg_log_q"]),
        helper.make_node("Sub", ["fg_unit", "fg_q"], ["fg_1_q"]),
        helper.make_node("Log", ["fg_1_q"], ["fg_log_1_q"]),
        helper.make_node("Sub", ["fg_log_q", "fg_log_1_q"], ["fg_quality_logit"]),
    ]


def _verdict_nodes(confidence: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Sub", [confidence, "fg_threshold"], [FIT_SCORE]),
        helper.make_node("GreaterOrEqual", [FIT_SCORE, "fg_zero"], [FIT]),
        helper.make_node("Slice", [TOP5_IDS, "fg_start", "fg_one", "fg_one"], [CLASS_ID]),
    ]


def _graph_inputs(num_classes: int) -> list[onnx.ValueInfoProto]:
    return [
        helper.make_tensor_value_info(PROBS, TensorProto.FLOAT, [BATCH_DIM, num_classes]),
        helper.make_tensor_value_info(ENERGY, TensorProto.FLOAT, [BATCH_DIM, 1]),
        helper.make_tensor_value_info(QUALITY_SCORE, TensorProto.FLOAT, [BATCH_DIM, 1]),
    ]


def _graph_outputs(num_classes: int) -> list[onnx.ValueInfoProto]:
    n, k = BATCH_DIM, top_k(num_classes)
    return [
        helper.make_tensor_value_info(CLASS_ID, TensorProto.INT64, [n, 1]),
        helper.make_tensor_value_info(TOP5_IDS, TensorProto.INT64, [n, k]),
        helper.make_tensor_value_info(TOP5_PROBS, TensorProto.FLOAT, [n, k]),
        helper.make_tensor_value_info(FIT, TensorProto.BOOL, [n, 1]),
        helper.make_tensor_value_info(FIT_SCORE, TensorProto.FLOAT, [n, 1]),
    ]


def _guarded_graph(detector: Any, num_classes: int) -> onnx.ModelProto:
    """A guarded detector (:class:`fitguard.detector.Veto`): confidence = TOP5_PROBS[:, :1] minus 1 where
    ENERGY >= energy_min and the quality logit <= quality_logit_max."""
    veto = detector.veto
    consts = [
        *_common_constants(detector.threshold, num_classes),
        numpy_helper.from_array(np.array([[veto.energy_min]], np.float32), "fg_energy_min"),
        numpy_helper.from_array(np.array([[veto.quality_logit_max]], np.float32), "fg_quality_logit_max"),
    ]
    nodes = [
        *_prefix_nodes(),
        helper.make_node("GreaterOrEqual", [ENERGY, "fg_energy_min"], ["fg_confident"]),
        helper.make_node("LessOrEqual", ["fg_quality_logit", "fg_quality_logit_max"], ["fg_low_quality"]),
        helper.make_node("And", ["fg_confident", "fg_low_quality"], ["fg_veto_flag"]),
        helper.make_node("Cast", ["fg_veto_flag"], ["fg_veto"], to=TensorProto.FLOAT),
        helper.make_node("Slice", [TOP5_PROBS, "fg_start", "fg_one", "fg_one"], ["fg_msp"]),
        helper.make_node("Sub", ["fg_msp", "fg_veto"], ["fg_confidence"]),
        *_verdict_nodes("fg_confidence"),
    ]
    graph = helper.make_graph(
        nodes, "fitguard_detector", _graph_inputs(num_classes), _graph_outputs(num_classes), consts
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    annotate(
        model,
        "detector",
        threshold=repr(float(detector.threshold)),
        feature_set=detector.feature_set,
        veto_energy_min=repr(float(veto.energy_min)),
        veto_quality_logit_max=repr(float(veto.quality_logit_max)),
    )
    onnx.checker.check_model(model)
    return model


def export_detector(detector: Any, num_classes: int = NUM_CLASSES) -> onnx.ModelProto:
    """A :class:`fitguard.detector.Detector` -> one graph from ``PROBS`` (``num_classes``), ``ENERGY``,
    ``QUALITY`` to the verdict (a feature set that does not read ``ENERGY`` leaves that input unused).

    prefix: TopK(PROBS, K = min(5, N)) -> TOP5_PROBS, TOP5_IDS (padded to five with zeros in the features);
    logit of QUALITY clipped to [eps, 1 - eps]
    (:func:`fitguard.detector.quality_logit`); Concat -> the detector's features (for the ``fit`` set
    with ENERGY before the quality logit).
    suffix: FIT_SCORE = confidence - threshold, the confidence being the decision (learned) or the
    top-1 probability minus the veto (guarded, :func:`_guarded_graph`); FIT = FIT_SCORE >= 0;
    CLASS_ID = TOP5_IDS[:, :1].
    """
    if detector.guarded:
        return _guarded_graph(detector, num_classes)
    features = "detector_features"
    svm = _sklearn_graph(detector.pipeline, features, len(FEATURE_SETS[detector.feature_set]))
    scores_name = svm.graph.output[-1].name
    col, sign = _score_column(svm, detector, features, scores_name)

    graph = svm.graph
    consts = [
        *_common_constants(detector.threshold, num_classes),
        numpy_helper.from_array(np.array([col], np.int64), "fg_score_col"),
        numpy_helper.from_array(np.array([sign], np.float32), "fg_score_sign"),
    ]
    prefix = _prefix_nodes()
    top = TOP5_PROBS
    if top_k(num_classes) < TOP_K:
        # Fewer than five classes: the features pad the top-K to five with zeros (detector_features).
        top, pads = "fg_top_padded", np.array([0, 0, 0, TOP_K - top_k(num_classes)], np.int64)
        consts.append(numpy_helper.from_array(pads, "fg_top_pads"))
        prefix.append(helper.make_node("Pad", [TOP5_PROBS, "fg_top_pads"], [top], mode="constant"))
    columns = [top, ENERGY] if detector.feature_set == FIT_SET else [top]
    prefix.append(helper.make_node("Concat", [*columns, "fg_quality_logit"], [features], axis=1))
    suffix = [
        helper.make_node("Gather", [scores_name, "fg_score_col"], ["fg_decision"], axis=1),
        helper.make_node("Mul", ["fg_decision", "fg_score_sign"], ["fg_signed"]),
        *_verdict_nodes("fg_signed"),
    ]
    nodes = [*prefix, *graph.node, *suffix]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(consts)
    del graph.input[:]
    graph.input.extend(_graph_inputs(num_classes))
    del graph.output[:]
    graph.output.extend(_graph_outputs(num_classes))
    graph.name = "fitguard_detector"
    annotate(
        svm,
        "detector",
        threshold=repr(float(detector.threshold)),
        feature_set=detector.feature_set,
        score_column=str(col),
        score_sign=str(sign),
    )
    return svm


def annotate(model: onnx.ModelProto, role: str, **meta: str) -> None:
    from fitguard import __version__

    model.producer_name, model.producer_version = "fitguard", __version__
    model.doc_string = f"fitguard {role}"
    for key, value in {"fitguard.role": role, **{f"fitguard.{k}": str(v) for k, v in meta.items()}}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


# ----------------------------------------------------------------------------------------------- precision


def _fp32(model: onnx.ModelProto) -> onnx.ModelProto:
    return model  # the exporter's native precision


# Precision name -> graph transform, applied to the classifier and quality graphs (the SVM stays fp32).
PRECISIONS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {"fp32": _fp32}


def apply_precision(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    try:
        transform = PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; available: {', '.join(PRECISIONS)}") from None
    return transform(model)
