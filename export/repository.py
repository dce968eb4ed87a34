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

from fitguard.classifier_spec import ClassifierSpec
from fitguard.contract import (
    CLASSIFIER,
    DEFAULT_PATCHES,
    ENSEMBLE,
    MONITOR,
    PATCHES_MODE,
    PREPROCESS,
    QUALITY_MODES,
    SHARED_MODE,
)
from fitguard.export.configs import Serving, render_config
from fitguard.export.graphs import Models, checked_graphs, load_models
from fitguard.export.monitoring import check_monitoring
from fitguard.export.overload import QueuePolicy
from fitguard.manifest import write_manifest
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
    quality_features: str,
    preprocess: str,
) -> None:
    from fitguard.export.verify import TOLERANCES

    if quality_features not in QUALITY_MODES:
        raise ValueError(
            f"unknown quality features {quality_features!r}; choose from {', '.join(QUALITY_MODES)}"
        )
    if patches < 1:
        raise ValueError(f"patches must be >= 1, got {patches}")
    if precision not in TOLERANCES:
        raise ValueError(f"unknown precision {precision!r}; available: {', '.join(TOLERANCES)}")
    _check_target(out)
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")


def _write_models(
    staging: Path,
    src: Path,
    graphs: dict[str, Any],
    *,
    settings: PreprocessSettings,
    threshold: float,
    serving: Serving,
    extra: dict[str, str],
    feature_dim: int,
    labels: str,
) -> None:
    """Configs rendered from the sources, the labels and the graphs, into ``staging``."""
    import onnx

    num_classes = labels.count("\n")
    shutil.copytree(
        src, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.pyc")
    )
    if not serving.monitoring:
        shutil.rmtree(staging / MONITOR, ignore_errors=True)
    for name in serving.models:
        text = render_config(
            src,
            name,
            settings,
            threshold=threshold,
            serving=serving,
            extra=extra,
            feature_dim=feature_dim,
            num_classes=num_classes,
        )
        config_path(staging, name).write_text(text, encoding="utf-8")
    if serving.preprocess == "dali":
        from fitguard.export import dali

        batch = read_config(config_path(staging, PREPROCESS)).max_batch_size
        dali.write_step(staging, settings, max_batch_size=batch, accelerator=serving.accelerator)
    # Triton's labels file of the classifier's PROBS and the ensemble's: the classes travel with the models.
    for name in (CLASSIFIER, ENSEMBLE):
        (staging / name / LABELS_NAME).write_text(labels, encoding="utf-8")
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


def _require_parity(reports: list[Any], out: Path, log: Callable[[str], None]) -> None:
    """Log every parity line; raise :class:`ParityError` naming the models that failed."""
    from fitguard.export.verify import ParityError

    for report in reports:
        log("parity " + report.line())
    failed = [r.model for r in reports if not r.passed]
    if failed:
        raise ParityError(f"parity check failed for {', '.join(failed)}; nothing written to {out}")


def _inputs_record(head: Path, detector: Path, models: Models) -> dict[str, Any]:
    return {
        "head": str(head.resolve()),
        "head_backbone": models.head_info.get("backbone"),
        "detector": str(detector.resolve()),
        "threshold": float(models.detector.threshold),
    }


def _serving(
    accelerator: str, instances: int, preprocess: str, monitoring: str, queue: QueuePolicy | None
) -> Serving:
    """How the models are served; ``monitoring`` checked, the default queue policy when none is given."""
    return Serving(
        accelerator=accelerator,
        instances=instances,
        preprocess=preprocess,
        monitoring=check_monitoring(monitoring),
        queue=queue or QueuePolicy(),
    )


def _labels_text(spec: ClassifierSpec, num_classes: int) -> str:
    """The labels file: the spec's classes, else ImageNet's; one name a line, one per output."""
    from fitguard.labels import labels_text

    text = "".join(f"{name}\n" for name in spec.classes) if spec.classes is not None else labels_text()
    if text.count("\n") != num_classes:
        raise ValueError(
            f"{spec.classes_file or 'labels'}: {text.count(chr(10))} classes, the head has {num_classes}"
        )
    return text


def _render_options(
    models: Models, settings: PreprocessSettings, serving: Serving, spec: ClassifierSpec
) -> dict[str, Any]:
    """What :func:`_write_models` renders the configs with; ``extra`` names the backbone in them."""
    extra = {
        "backbone": settings.backbone,
        "weights_id": models.net.weights_id,
        "quality_features": settings.quality_features,
    }
    return {
        "settings": settings,
        "threshold": models.detector.threshold,
        "serving": serving,
        "extra": extra,
        "feature_dim": models.net.quality_dim,
        "labels": _labels_text(spec, models.net.num_classes),
    }


def _manifest_arguments(
    spec: ClassifierSpec,
    head: Path,
    detector: Path,
    models: Models,
    settings: PreprocessSettings,
    precision: str,
    serving: Serving,
) -> dict[str, Any]:
    """The resolved arguments the manifest records; backbone, patches and mode as ``settings`` has them."""
    return {
        "backbone": settings.backbone,
        "weights": spec.weights,
        "weights_id": models.net.weights_id,
        **spec.to_dict(),
        **_inputs_record(head, detector, models),
        "patches": settings.patches,
        "quality_features": settings.quality_features,
        "precision": precision,
        **serving.to_dict(),
        "preset": models.net.preset.to_dict(),
    }


def export_repository(
    out: str | Path,
    *,
    backbone: str = "",
    head: str | Path,
    detector: str | Path,
    weights: str | None = "default",
    classifier: ClassifierSpec | None = None,
    patches: int = DEFAULT_PATCHES,
    precision: str = "fp32",
    accelerator: str = "none",
    instances: int = 1,
    preprocess: str = "python",
    monitoring: str = "on",
    queue: QueuePolicy | None = None,
    quality_features: str = PATCHES_MODE,
    source: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Export, verify and write a complete repository to ``out``; returns ``out``.

    ``classifier`` (:func:`fitguard.classifier_spec.classifier_spec`: architecture, weights, classes,
    preset) or ``backbone`` and ``weights`` name the classifier; its classes become the labels file of the
    classifier and of the ensemble's ``PROBS``.
    ``head`` from :func:`fitguard.quality.save_head`, trained on ``backbone`` features in the
    ``quality_features`` mode (``patches``: DTNIQ-f on P patches; ``shared``: the classifier's own pass);
    ``detector`` from :func:`fitguard.detector.save_detector`; accelerator, instances, preprocess,
    monitoring and queue say how it is served (:class:`fitguard.export.configs.Serving`).

    Raises:
        BadHeadError / BadDetectorError: unusable head or detector file.
        ParityError: a graph failed its checks (nothing is written then).
    """
    out, head, detector = Path(out), Path(head), Path(detector)
    spec = classifier or ClassifierSpec(backbone, weights)
    backbone = spec.name
    src = Path(source) if source is not None else source_repository()
    serving = _serving(accelerator, instances, preprocess, monitoring, queue)
    _check_arguments(
        out,
        (head, detector),
        patches=patches,
        precision=precision,
        quality_features=quality_features,
        preprocess=preprocess,
    )
    models = load_models(
        backbone,
        spec.weights,
        head=head,
        detector=detector,
        quality_features=quality_features,
        num_classes=spec.num_classes if spec.classes is not None else None,
        preset=spec.preset,
    )
    net = models.net
    if quality_features == SHARED_MODE:
        patches = 0  # no patches are cut: the classifier's pass gives the quality features
    settings = PreprocessSettings(net.preset, patches, backbone=backbone, quality_features=quality_features)
    log(
        f"exporting {backbone} ({net.weights_id}, {net.num_classes} classes), quality {quality_features}, "
        f"P={patches}, {precision}"
    )
    graphs, reports = checked_graphs(models, settings, precision=precision, preprocess=preprocess)
    _require_parity(reports, out, log)
    arguments = _manifest_arguments(spec, head, detector, models, settings, precision, serving)
    _publish(
        out,
        src=src,
        graphs=graphs,
        files={HEAD_NAME: head, DETECTOR_NAME: detector},
        render=_render_options(models, settings, serving, spec),
        manifest={"arguments": arguments, "parity": {r.model: r.to_dict() for r in reports}},
    )
    log(f"wrote {out} ({', '.join(sorted(graphs))} graphs, {preprocess} preprocess, {MANIFEST_NAME})")
    return out
