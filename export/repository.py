"""Write a verified Triton model repository: graphs, rendered configs, labels and a manifest.

The committed ``model_repository/`` is the source: its configs are parsed with Triton's own protobuf
schema (``model_config_pb2``), the export-time values are set (patch count, backbone preset, threshold,
instance groups), and they are written back. Everything is built in a staging folder beside the target
and moved into place only after every graph passed its checks: a failed export writes nothing.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from fitguard.contract import (
    CLASSIFIER,
    DEFAULT_PATCHES,
    DETECTOR,
    ENSEMBLE,
    IQA_FEATURES,
    IQA_PATCHES,
    MODELS,
    PATCHES_MODE,
    PREPROCESS,
    QUALITY,
    QUALITY_MODES,
    SHARED_MODE,
    signatures,
)
from fitguard.export.accelerators import ACCELERATORS, apply_accelerator
from fitguard.export.manifest import write_manifest
from fitguard.preprocess import PreprocessSettings
from fitguard.repository import (
    DETECTOR_NAME,
    HEAD_NAME,
    LABELS_NAME,
    MANIFEST_NAME,
    config_path,
    model_path,
    read_config,
)

SOURCE = Path(__file__).resolve().parents[1] / "model_repository"
# The preprocess step's implementations: the Python backend (any server) or a serialized DALI pipeline
# (the NGC image's DALI backend; see fitguard.export.dali).
PREPROCESS_STEPS = ("python", "dali")
_VERSIONED_PACKAGES = (
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "scikit-learn",
    "skl2onnx",
    "numpy",
    "Pillow",
)


def source_repository() -> Path:
    if not config_path(SOURCE, ENSEMBLE).is_file():
        raise FileNotFoundError(
            f"model repository sources not found at {SOURCE}; run from a fitguard source checkout "
            "(pip install -e .) or pass source=/path/to/model_repository"
        )
    return SOURCE


# --------------------------------------------------------------------------------------------- configs


def _datatype(name: str) -> int:
    from tritonclient.grpc import model_config_pb2 as mc

    return mc.DataType.Value("TYPE_STRING" if name == "BYTES" else f"TYPE_{name}")


def check_signature(
    config: Any, patches: int, preprocess: str = "python", mode: str = PATCHES_MODE, feature_dim: int = -1
) -> None:
    """Raise ValueError unless ``config``'s inputs and outputs are the contract's (P = ``patches``, quality
    features of ``feature_dim``) for a repository with the ``preprocess`` step (``python`` or ``dali``) and
    the quality mode ``mode``."""
    if preprocess == "python":
        inputs, outputs = signatures(mode)[config.name]
    else:
        from fitguard.export.dali import signature

        inputs, outputs = signature(config.name, preprocess)
    pinned = {IQA_PATCHES: patches, IQA_FEATURES: feature_dim}
    for kind, declared, expected in (("input", config.input, inputs), ("output", config.output, outputs)):
        got = {t.name: (t.data_type, tuple(t.dims)) for t in declared}
        want = {
            t.name: (
                _datatype(t.datatype),
                tuple(pinned.get(t.name, d) if d == -1 else d for d in t.shape),
            )
            for t in expected
        }
        if got != want:
            raise ValueError(f"{config.name}: {kind}s {got} do not match the tensor contract {want}")


def _set_parameters(config: Any, values: dict[str, str]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = value


def _pin_patches(config: Any, patches: int) -> None:
    for tensor in (*config.input, *config.output):
        if tensor.name == IQA_PATCHES:
            tensor.dims[0] = patches
    for warmup in config.model_warmup:
        if IQA_PATCHES in warmup.inputs:
            warmup.inputs[IQA_PATCHES].dims[0] = patches


def render_config(
    source: Path,
    name: str,
    settings: PreprocessSettings,
    threshold: float,
    accelerator: str,
    instances: int,
    extra: dict[str, str],
    preprocess: str = "python",
    feature_dim: int = -1,
) -> str:
    """The deployable ``config.pbtxt`` text of model ``name``, from its source config (``feature_dim``: the
    quality features' size, used in shared quality mode)."""
    from google.protobuf import text_format

    config = read_config(config_path(source, name))
    if config.name != name:
        raise ValueError(f"{config_path(source, name)} names model {config.name!r}, expected {name!r}")
    if name == PREPROCESS:
        _set_parameters(config, {**settings.to_parameters(), **extra})
    elif name == QUALITY:
        _set_parameters(config, {"patches": str(settings.patches), **extra})
    elif name == CLASSIFIER:
        _set_parameters(config, extra)
    elif name == DETECTOR:
        _set_parameters(config, {"threshold": repr(float(threshold))})
    _pin_patches(config, settings.patches)
    if settings.shared:
        from fitguard.export.shared import to_shared

        to_shared(config, feature_dim)
    apply_accelerator(config, accelerator, instances)
    if preprocess == "dali":
        from fitguard.export.dali import to_dali

        to_dali(config, accelerator)
    check_signature(config, settings.patches, preprocess, settings.quality_features, feature_dim)
    header = (
        f"# Rendered by `fitguard export` from model_repository/{name}/config.pbtxt (comments are there).\n"
    )
    return header + text_format.MessageToString(config)


# ---------------------------------------------------------------------------------------------- export


def _versions() -> dict[str, str]:
    from fitguard import __version__

    found = {"fitguard": __version__, "python": platform.python_version()}
    for package in _VERSIONED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def _replace(staging: Path, out: Path) -> None:
    """Move the finished staging folder to ``out``, replacing an earlier export there."""
    if not out.exists():
        staging.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    out.rename(old)
    try:
        staging.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file())):
        raise FileExistsError(
            f"{out} exists and is not a fitguard repository (no {MANIFEST_NAME}); refusing to replace it"
        )


def _check_arguments(
    out: Path,
    files: tuple[Path, ...],
    *,
    patches: int,
    precision: str,
    accelerator: str,
    preprocess: str,
    quality_features: str,
) -> None:
    from fitguard.export.verify import TOLERANCES

    if quality_features not in QUALITY_MODES:
        raise ValueError(
            f"unknown quality features {quality_features!r}; choose from {', '.join(QUALITY_MODES)}"
        )
    if quality_features == SHARED_MODE and preprocess != "python":
        raise ValueError("--quality-features shared is served with the python preprocess step only")
    if patches < 1:
        raise ValueError(f"patches must be >= 1, got {patches}")
    if precision not in TOLERANCES:
        raise ValueError(f"unknown precision {precision!r}; available: {', '.join(TOLERANCES)}")
    if preprocess not in PREPROCESS_STEPS:
        raise ValueError(f"unknown preprocess step {preprocess!r}; choose from {', '.join(PREPROCESS_STEPS)}")
    if accelerator not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {accelerator!r}; choose from {', '.join(ACCELERATORS)}")
    _check_target(out)
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")


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
        QUALITY: apply_precision(export_quality(quality_model), precision),
        DETECTOR: export_detector(det),
    }
    for name, graph in graphs.items():
        check_graph(graph, name)
    tol = TOLERANCES[precision]
    inputs, patch_batch = verification_inputs(settings)
    clf_report, probs = check_classifier(graphs[CLASSIFIER], classifier, inputs, tol)
    q_report, quality = check_quality(graphs[QUALITY], quality_model, patch_batch, tol)
    return graphs, [clf_report, q_report, check_detector(graphs[DETECTOR], det, probs, quality, tol)]


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
        QUALITY: apply_precision(
            export_feature_quality(FeatureQuality(quality_model.head).eval(), net.quality_dim, net), precision
        ),
        DETECTOR: export_detector(det),
    }
    for name, graph in graphs.items():
        check_graph(graph, name)
    tol = TOLERANCES[precision]
    inputs, _ = verification_inputs(settings)
    originals = {"classifier": classifier, "backbone": net, "quality_model": quality_model}
    reports, probs, quality = check_shared_graphs(graphs, originals, inputs, tol)
    return graphs, [*reports, check_detector(graphs[DETECTOR], det, probs, quality, tol)]


def _write_models(
    staging: Path,
    src: Path,
    graphs: dict[str, Any],
    *,
    settings: PreprocessSettings,
    threshold: float,
    accelerator: str,
    instances: int,
    extra: dict[str, str],
    preprocess: str,
    feature_dim: int,
) -> None:
    """Configs rendered from the sources, the labels and the graphs, into ``staging``."""
    import onnx

    from fitguard.labels import labels_text

    shutil.copytree(
        src, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.pyc")
    )
    for name in (ENSEMBLE, *MODELS):
        text = render_config(
            src, name, settings, threshold, accelerator, instances, extra, preprocess, feature_dim
        )
        config_path(staging, name).write_text(text, encoding="utf-8")
    if preprocess == "dali":
        from fitguard.export import dali

        batch = read_config(config_path(staging, PREPROCESS)).max_batch_size
        dali.write_step(staging, settings, max_batch_size=batch, accelerator=accelerator)
    (staging / CLASSIFIER / LABELS_NAME).write_text(labels_text(), encoding="utf-8")
    for name, graph in graphs.items():
        model_path(staging, name).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(graph, str(model_path(staging, name)))


def _publish(
    out: Path,
    *,
    src: Path,
    graphs: dict[str, Any],
    files: dict[str, Path],
    render: dict[str, Any],
    manifest: dict[str, Any],
) -> None:
    """Write everything into a staging folder beside ``out``, then move it into place: all or nothing."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        _write_models(staging, src, graphs, **render)
        for name, path in files.items():
            shutil.copyfile(path, staging / name)
        write_manifest(
            staging,
            manifest["arguments"],
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            versions=_versions(),
            parity=manifest["parity"],
        )
        os.chmod(staging, 0o755)  # mkdtemp makes 0700; servers in containers may run as another user
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def export_repository(
    out: str | Path,
    *,
    backbone: str,
    head: str | Path,
    detector: str | Path,
    weights: str | None = "default",
    patches: int = DEFAULT_PATCHES,
    precision: str = "fp32",
    accelerator: str = "none",
    instances: int = 1,
    preprocess: str = "python",
    quality_features: str = PATCHES_MODE,
    source: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Export, verify and write a complete repository to ``out``; returns ``out``.

    Args:
        backbone: a name from :func:`fitguard.backbones.backbone_names`.
        head: a quality-head file (:func:`fitguard.quality.save_head`) trained on ``backbone`` features.
        detector: a detector file (:func:`fitguard.detector.save_detector`).
        weights: backbone weights (see :func:`fitguard.backbones.build_backbone`).
        patches: IQA patches per image (P).
        precision: graph precision, a key of :data:`fitguard.export.onnx_export.PRECISIONS`.
        accelerator: ``none`` (CPU), ``cuda`` or ``tensorrt-fp16`` (see :mod:`fitguard.export.accelerators`).
        instances: instances per model (preprocess, classifier, quality).
        quality_features: ``patches`` (DTNIQ-f on P patches) or ``shared`` (the classifier's pass gives
            the quality features; the head must have been trained in that mode, and P does not apply).
        log: where the parity report lines go.

    Raises:
        BadHeadError / BadDetectorError: unusable head or detector file.
        ParityError: a graph failed ``onnx.checker`` or its parity check. Nothing is written then.
    """
    from fitguard.backbones import build_backbone
    from fitguard.classifier import Classifier
    from fitguard.detector import load_detector
    from fitguard.export.verify import ParityError
    from fitguard.quality import QualityModel, check_head_mode, load_head

    out, head, detector = Path(out), Path(head), Path(detector)
    src = Path(source) if source is not None else source_repository()
    _check_arguments(
        out,
        (head, detector),
        patches=patches,
        precision=precision,
        accelerator=accelerator,
        preprocess=preprocess,
        quality_features=quality_features,
    )
    net = build_backbone(backbone, weights)
    head_module, head_info = load_head(head, net)
    check_head_mode(head_info, quality_features, head)
    det = load_detector(detector)
    classifier, quality_model = Classifier(net).eval(), QualityModel(net, head_module).eval()
    if quality_features == SHARED_MODE:
        patches = 0  # no patches are cut: the classifier's pass gives the quality features
    settings = PreprocessSettings(net.preset, patches, backbone=backbone, quality_features=quality_features)
    log(
        f"exporting {backbone} (weights {net.weights_id}), quality features {quality_features}, "
        f"P={patches}, precision {precision}"
    )
    graphs, reports = _verified_graphs(classifier, quality_model, det, settings, precision)
    if preprocess == "dali":
        from fitguard.export import dali

        reports.append(dali.check_parity(settings))
    for report in reports:
        log("parity " + report.line())
    failed = [r.model for r in reports if not r.passed]
    if failed:
        raise ParityError(f"parity check failed for {', '.join(failed)}; nothing written to {out}")
    arguments = {
        "backbone": backbone,
        "weights": weights,
        "weights_id": net.weights_id,
        "head": str(head.resolve()),
        "head_backbone": head_info.get("backbone"),
        "detector": str(detector.resolve()),
        "threshold": float(det.threshold),
        **{"patches": patches, "precision": precision, "accelerator": accelerator, "instances": instances},
        "preprocess": preprocess,
        "quality_features": quality_features,
        "preset": net.preset.to_dict(),
    }
    _publish(
        out,
        src=src,
        graphs=graphs,
        files={HEAD_NAME: head, DETECTOR_NAME: detector},
        render={
            "settings": settings,
            "threshold": det.threshold,
            "accelerator": accelerator,
            "instances": instances,
            "extra": {
                "backbone": backbone,
                "weights_id": net.weights_id,
                "quality_features": quality_features,
            },
            "preprocess": preprocess,
            "feature_dim": net.quality_dim,
        },
        manifest={"arguments": arguments, "parity": {r.model: r.to_dict() for r in reports}},
    )
    log(
        f"wrote {out} ({', '.join(sorted(graphs))} graphs, {preprocess} preprocess, "
        f"manifest {out / MANIFEST_NAME})"
    )
    return out
