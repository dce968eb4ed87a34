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
    IQA_PATCHES,
    MODELS,
    MONITOR,
    PREPROCESS,
    QUALITY,
    SIGNATURES,
)
from fitguard.export.accelerators import ACCELERATORS, apply_accelerator
from fitguard.export.manifest import MANIFEST_NAME, write_manifest
from fitguard.export.monitoring import check_monitoring, drop_monitor_step
from fitguard.export.overload import QueuePolicy, apply_queue_policy
from fitguard.pipeline import DETECTOR_NAME, HEAD_NAME, PreprocessSettings, read_config

SOURCE = Path(__file__).resolve().parents[1] / "model_repository"
LABELS_NAME = "labels.txt"
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
    if not (SOURCE / ENSEMBLE / "config.pbtxt").is_file():
        raise FileNotFoundError(
            f"model repository sources not found at {SOURCE}; run from a fitguard source checkout "
            "(pip install -e .) or pass source=/path/to/model_repository"
        )
    return SOURCE


# --------------------------------------------------------------------------------------------- configs


def _datatype(name: str) -> int:
    from tritonclient.grpc import model_config_pb2 as mc

    return mc.DataType.Value("TYPE_STRING" if name == "BYTES" else f"TYPE_{name}")


def check_signature(config: Any, patches: int) -> None:
    """Raise ValueError unless ``config``'s inputs and outputs are exactly the contract's (P = ``patches``)."""
    inputs, outputs = SIGNATURES[config.name]
    for kind, declared, expected in (("input", config.input, inputs), ("output", config.output, outputs)):
        got = {t.name: (t.data_type, tuple(t.dims)) for t in declared}
        want = {
            t.name: (_datatype(t.datatype), tuple(patches if d == -1 else d for d in t.shape))
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
    queue: QueuePolicy | None = None,
    monitoring: bool = True,
) -> str:
    """The deployable ``config.pbtxt`` text of model ``name``, from its source config."""
    from google.protobuf import text_format

    config = read_config(source / name / "config.pbtxt")
    if config.name != name:
        raise ValueError(f"{source / name / 'config.pbtxt'} names model {config.name!r}, expected {name!r}")
    if name == PREPROCESS:
        _set_parameters(config, {**settings.to_parameters(), **extra, "monitoring": str(monitoring).lower()})
    elif name == QUALITY:
        _set_parameters(config, {"patches": str(settings.patches), **extra})
    elif name == CLASSIFIER:
        _set_parameters(config, extra)
    elif name == DETECTOR:
        _set_parameters(config, {"threshold": repr(float(threshold))})
    elif name == ENSEMBLE and not monitoring:
        drop_monitor_step(config)
    _pin_patches(config, settings.patches)
    apply_queue_policy(config, queue or QueuePolicy(), entry=name == PREPROCESS)
    apply_accelerator(config, accelerator, instances)
    check_signature(config, settings.patches)
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
    monitoring: str = "on",
    queue: QueuePolicy | None = None,
    source: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Export, verify and write a complete repository to ``out``; returns ``out``.

    Args:
        backbone: a name from :func:`fitguard.models.backbone_names`.
        head: a quality-head file (:func:`fitguard.models.save_head`) trained on ``backbone`` features.
        detector: a detector file (:func:`fitguard.detector.save_detector`).
        weights: backbone weights (see :func:`fitguard.models.build_backbone`).
        patches: IQA patches per image (P).
        precision: graph precision, a key of :data:`fitguard.export.onnx_export.PRECISIONS`.
        accelerator: ``none`` (CPU), ``cuda`` or ``tensorrt-fp16`` (see :mod:`fitguard.export.accelerators`).
        instances: instances per model (preprocess, classifier, quality).
        monitoring: ``on`` serves the monitor step and the bad-image counter (verdict metrics on
            ``/metrics``), ``off`` leaves both out (see :mod:`fitguard.export.monitoring`).
        queue: every model's queue policy (see :mod:`fitguard.export.overload`); default when None.
        log: where the parity report lines go.

    Raises:
        BadHeadError / BadDetectorError: unusable head or detector file.
        ParityError: a graph failed ``onnx.checker`` or its parity check. Nothing is written then.
    """
    from fitguard.detector import load_detector
    from fitguard.export.onnx_export import (
        apply_precision,
        export_classifier,
        export_detector,
        export_quality,
    )
    from fitguard.export.verify import (
        TOLERANCES,
        ParityError,
        check_classifier,
        check_detector,
        check_graph,
        check_quality,
        verification_inputs,
    )
    from fitguard.labels import labels_text
    from fitguard.models import Classifier, QualityModel, build_backbone, load_head

    out, head, detector = Path(out), Path(head), Path(detector)
    src = Path(source) if source is not None else source_repository()
    if patches < 1:
        raise ValueError(f"patches must be >= 1, got {patches}")
    if precision not in TOLERANCES:
        raise ValueError(f"unknown precision {precision!r}; available: {', '.join(TOLERANCES)}")
    if accelerator not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {accelerator!r}; choose from {', '.join(ACCELERATORS)}")
    monitored = check_monitoring(monitoring)
    queue = queue or QueuePolicy()
    _check_target(out)
    for path in (head, detector):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")

    net = build_backbone(backbone, weights)
    head_module, head_info = load_head(head, net)
    det = load_detector(detector)
    classifier, quality_model = Classifier(net).eval(), QualityModel(net, head_module).eval()
    settings = PreprocessSettings(net.preset, patches, backbone=backbone)

    log(f"exporting {backbone} (weights {net.weights_id}), P={patches}, precision {precision}")
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
    reports = [clf_report, q_report, check_detector(graphs[DETECTOR], det, probs, quality, tol)]
    for report in reports:
        log("parity " + report.line())
    failed = [r.model for r in reports if not r.passed]
    if failed:
        raise ParityError(f"parity check failed for {', '.join(failed)}; nothing written to {out}")

    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        shutil.copytree(
            src, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.pyc")
        )
        if not monitored:
            shutil.rmtree(staging / MONITOR, ignore_errors=True)
        extra = {"backbone": backbone, "weights_id": net.weights_id}
        for name in (ENSEMBLE, *MODELS, *((MONITOR,) if monitored else ())):
            text = render_config(
                src, name, settings, det.threshold, accelerator, instances, extra, queue, monitored
            )
            (staging / name / "config.pbtxt").write_text(text, encoding="utf-8")
        (staging / CLASSIFIER / LABELS_NAME).write_text(labels_text(), encoding="utf-8")
        for name, graph in graphs.items():
            (staging / name / "1").mkdir(parents=True, exist_ok=True)
            onnx.save(graph, str(staging / name / "1" / "model.onnx"))
        shutil.copyfile(head, staging / HEAD_NAME)
        shutil.copyfile(detector, staging / DETECTOR_NAME)
        arguments = {
            "backbone": backbone,
            "weights": weights,
            "weights_id": net.weights_id,
            "head": str(head.resolve()),
            "head_backbone": head_info.get("backbone"),
            "detector": str(detector.resolve()),
            "threshold": float(det.threshold),
            "patches": patches,
            "precision": precision,
            "accelerator": accelerator,
            "instances": instances,
            "monitoring": monitoring,
            **queue.to_dict(),
            "preset": net.preset.to_dict(),
        }
        write_manifest(
            staging,
            arguments,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            versions=_versions(),
            parity={r.model: r.to_dict() for r in reports},
        )
        os.chmod(staging, 0o755)  # mkdtemp makes 0700; servers in containers may run as another user
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"wrote {out} ({', '.join(sorted(graphs))} graphs, manifest {out / MANIFEST_NAME})")
    return out
