"""The deployable ``config.pbtxt`` of each step: rendered from the source configs in ``model_repository/``
and checked against the tensor contract (:mod:`fitguard.contract`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fitguard.contract import (
    CLASSIFIER,
    DETECTOR,
    ENSEMBLE,
    IQA_FEATURES,
    IQA_PATCHES,
    MODELS,
    MONITOR,
    NUM_CLASSES,
    PATCHES_MODE,
    PREPROCESS,
    PROBS,
    QUALITY_MODEL,
    TOP5_IDS,
    TOP5_PROBS,
    signatures,
    top_k,
)
from fitguard.export.accelerators import ACCELERATORS, apply_accelerator
from fitguard.export.monitoring import drop_monitor_step
from fitguard.export.overload import QueuePolicy, apply_admission, apply_queue_policy
from fitguard.parameters import MONITORING, PATCHES, THRESHOLD, flag
from fitguard.preprocess import PreprocessSettings
from fitguard.repository import config_path, config_text, read_config

# The preprocess step's implementations: the Python backend (any server) or a serialized DALI pipeline
# (the NGC image's DALI backend; see fitguard.export.dali).
PREPROCESS_STEPS = ("python", "dali")


def _check_preprocess(preprocess: str) -> None:
    if preprocess not in PREPROCESS_STEPS:
        raise ValueError(f"unknown preprocess step {preprocess!r}; choose from {', '.join(PREPROCESS_STEPS)}")


@dataclass(frozen=True)
class Serving:
    """How a repository is served: what the rendered configs and the manifest say beside the models.

    Attributes:
        accelerator: ``none`` (CPU), ``cuda`` or ``tensorrt-fp16`` (see :mod:`fitguard.export.accelerators`).
        instances: instances per model (preprocess, classifier, quality).
        preprocess: a name from :data:`PREPROCESS_STEPS`.
        monitoring: serve the monitor step and the bad-image counter (see :mod:`fitguard.export.monitoring`).
        queue: every model's queue policy (see :mod:`fitguard.export.overload`).
    """

    accelerator: str = "none"
    instances: int = 1
    preprocess: str = "python"
    monitoring: bool = True
    queue: QueuePolicy = field(default_factory=QueuePolicy)

    def __post_init__(self) -> None:
        _check_preprocess(self.preprocess)
        if self.accelerator not in ACCELERATORS:
            raise ValueError(
                f"unknown accelerator {self.accelerator!r}; choose from {', '.join(ACCELERATORS)}"
            )
        self.in_flight  # noqa: B018 - raises for an admission limit this repository cannot serve

    @property
    def in_flight(self) -> int:
        """Images admitted into the ensemble at once (0: no admission control; see export/overload.py):
        the Python preprocess step admits, the monitor step releases."""
        gated = self.monitoring and self.preprocess == "python"
        return self.queue.in_flight_limit(instances=self.instances, gated=gated)

    @property
    def models(self) -> tuple[str, ...]:
        """The steps this repository serves, the ensemble first."""
        return (ENSEMBLE, *MODELS, *((MONITOR,) if self.monitoring else ()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "accelerator": self.accelerator,
            "instances": self.instances,
            "preprocess": self.preprocess,
            "monitoring": "on" if self.monitoring else "off",
            **self.queue.to_dict(in_flight=self.in_flight),
        }


def _datatype(name: str) -> int:
    from tritonclient.grpc import model_config_pb2 as mc

    return mc.DataType.Value("TYPE_STRING" if name == "BYTES" else f"TYPE_{name}")


def check_signature(
    config: Any,
    patches: int,
    preprocess: str = "python",
    mode: str = PATCHES_MODE,
    feature_dim: int = -1,
    num_classes: int = NUM_CLASSES,
) -> None:
    """Raise ValueError unless ``config``'s inputs and outputs are the contract's (P = ``patches``, quality
    features of ``feature_dim``, a classifier of ``num_classes``) for a repository with the ``preprocess``
    step (``python`` or ``dali``) and the quality mode ``mode``."""
    _check_preprocess(preprocess)
    if preprocess == "python":
        inputs, outputs = signatures(mode, num_classes)[config.name]
    else:
        from fitguard.export.dali import signature

        inputs, outputs = signature(config.name, preprocess, mode, num_classes)
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


def _pin_classes(config: Any, num_classes: int) -> None:
    """PROBS [N] and the top-K outputs [K = min(5, N)] wherever the config declares or warms them up."""
    dims = {PROBS: num_classes, TOP5_IDS: top_k(num_classes), TOP5_PROBS: top_k(num_classes)}
    for tensor in (*config.input, *config.output):
        if tensor.name in dims:
            tensor.dims[:] = [dims[tensor.name]]
    for warmup in config.model_warmup:
        for name, value in warmup.inputs.items():
            if name in dims:
                value.dims[:] = [dims[name]]


def render_config(
    source: Path,
    name: str,
    settings: PreprocessSettings,
    *,
    threshold: float,
    serving: Serving,
    extra: dict[str, str],
    feature_dim: int = -1,
    num_classes: int = NUM_CLASSES,
) -> str:
    """The deployable ``config.pbtxt`` text of model ``name``, from its source config (``feature_dim``: the
    quality features' size, pinned in shared quality mode; ``num_classes``: the classifier's N)."""
    config = read_config(config_path(source, name))
    if config.name != name:
        raise ValueError(f"{config_path(source, name)} names model {config.name!r}, expected {name!r}")
    if name == PREPROCESS:
        _set_parameters(config, {**settings.to_parameters(), **extra, MONITORING: flag(serving.monitoring)})
    elif name == QUALITY_MODEL:
        _set_parameters(config, {PATCHES: str(settings.patches), **extra})
    elif name == CLASSIFIER:
        _set_parameters(config, extra)
    elif name == DETECTOR:
        _set_parameters(config, {THRESHOLD: repr(float(threshold))})
    elif name == ENSEMBLE and not serving.monitoring:
        drop_monitor_step(config)
    _pin_patches(config, settings.patches)
    _pin_classes(config, num_classes)
    if settings.shared:
        from fitguard.export.shared import to_shared

        to_shared(config, feature_dim)
    apply_queue_policy(config, serving.queue, entry=name == PREPROCESS)
    if name in (PREPROCESS, MONITOR) and serving.in_flight:
        apply_admission(config, serving.queue, limit=serving.in_flight)
    apply_accelerator(config, serving.accelerator, serving.instances)
    if serving.preprocess == "dali":
        from fitguard.export.dali import to_dali

        to_dali(config, serving.accelerator)
    check_signature(
        config, settings.patches, serving.preprocess, settings.quality_features, feature_dim, num_classes
    )
    return config_text(
        config,
        [f"Rendered by `fitguard export` from model_repository/{name}/config.pbtxt (comments are there)."],
    )
