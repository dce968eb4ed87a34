"""``fitguard export --preprocess dali``: the preprocess step as a serialized DALI pipeline, behind a
validating Python step.

The ensemble's contract is the Python repository's (``IMAGE`` BYTES [1]), so every client serves both.
What changes is inside: ``preprocess`` is the validating step (:mod:`fitguard.dali_check`, written as
``preprocess/1/model.py``), which refuses a bad image from its header alone and hands each good one to
``preprocess_dali`` (``backend: "dali"``, ``1/model.dali``, the encoded file as ``UINT8 [-1]`` with ragged
batching), retrying an image whose DALI batch failed alone on ``preprocess_dali_single``, the same
pipeline without dynamic batching. With ``--accelerator none`` the pipeline runs on the CPU; with a GPU
accelerator it decodes with nvJPEG and resizes and cuts on the GPU. In shared quality mode the pipeline
emits the classifier crop only. Before anything is written, the CPU build of the same pipeline is run
beside the Python step on real photos.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.contract import (
    DALI_PREPROCESS,
    DALI_PREPROCESS_SINGLE,
    IMAGE,
    NUM_CLASSES,
    PATCHES_MODE,
    PREPROCESS,
    signatures,
)
from fitguard.contract import Tensor as ContractTensor
from fitguard.dali_preprocess import DALI_IMAGE, MODEL_FILE, CpuRunner, Geometry, serialize
from fitguard.export.verify import VERIFY_PHOTOS, ParityReport
from fitguard.parameters import STEP

DALI_MODELS: tuple[str, ...] = (DALI_PREPROCESS, DALI_PREPROCESS_SINGLE)
# The validating step's adapter, written as preprocess/1/model.py of a DALI repository.
CHECK_MODEL_PY = Path(__file__).with_name("dali_check_model.py")
# Max |delta| of a uint8 pixel against the Python step on the verification photos: the classifier crop is
# resampled by a different (antialiased linear) filter, the quality patches of photos at least a patch
# wide are plain cuts and must be identical (docs/performance.md has the measured figures).
PIXEL_TOLERANCE = {"crop": 1.0, "patches": 0.0}


Signature = tuple[tuple[ContractTensor, ...], tuple[ContractTensor, ...]]


def signature(
    name: str, preprocess: str = "python", mode: str = PATCHES_MODE, num_classes: int = NUM_CLASSES
) -> Signature:
    """The contract of model ``name`` in a repository with the given preprocess step and quality mode.

    The ensemble and ``preprocess`` keep the Python repository's contract; the DALI models take the
    encoded file as a uint8 vector and give the preprocess step's outputs (``preprocess`` is one of
    :data:`fitguard.export.configs.PREPROCESS_STEPS`, which its caller checks).
    """
    contract = signatures(mode, num_classes)
    if name in DALI_MODELS and preprocess == "dali":
        return (DALI_IMAGE,), contract[PREPROCESS][1]
    return contract[name]


def device_for(accelerator: str) -> str:
    """Where the DALI pipeline runs: on the GPU wherever the models do."""
    return "cpu" if accelerator == "none" else "gpu"


def to_dali(config: Any, accelerator: str) -> None:
    """Mark a rendered preprocess config as the validating step of a DALI repository, in place (every other
    config, the ensemble's included, is the Python repository's)."""
    if config.name == PREPROCESS:
        config.parameters[STEP].string_value = f"dali on the {device_for(accelerator).upper()}"


def dali_config(check: Any, name: str, accelerator: str) -> Any:
    """The config of DALI model ``name`` from the rendered validating step's: same batch and outputs."""
    from tritonclient.grpc import model_config_pb2 as mc

    config = mc.ModelConfig()
    config.CopyFrom(check)
    config.name, config.backend = name, "dali"
    for key in ("parameters", "model_warmup", "input"):
        config.ClearField(key)
    image = config.input.add(name=IMAGE, data_type=mc.TYPE_UINT8, dims=[-1])
    image.allow_ragged_batch = True  # images of different lengths share a batch, as in DALI's examples
    if name == DALI_PREPROCESS_SINGLE:
        config.ClearField("dynamic_batching")  # the default scheduler: each request runs alone
    else:
        config.dynamic_batching.ClearField("default_queue_policy")  # the validating step admits
    gpu = device_for(accelerator) == "gpu"
    for group in config.instance_group:
        group.kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
        group.count = group.count if name == DALI_PREPROCESS else 1
    return config


def write_step(staging: Path, settings: Any, *, max_batch_size: int, accelerator: str) -> list[Path]:
    """The validating step's adapter as ``preprocess/1/model.py``, and the two DALI models beside it."""
    from fitguard.repository import config_path, read_config, write_config

    shutil.copyfile(CHECK_MODEL_PY, staging / PREPROCESS / "1" / "model.py")
    check = read_config(config_path(staging, PREPROCESS))
    written = []
    for name in DALI_MODELS:
        config = dali_config(
            check, name, accelerator
        )  # the header check's outputs, checked when it was rendered
        config_path(staging, name).parent.mkdir(parents=True, exist_ok=True)
        note = f"Written by `fitguard export --preprocess dali` from the {PREPROCESS} step's config."
        write_config(config_path(staging, name), config, [note])
        path = serialize(
            Geometry.from_settings(settings),
            staging / name / "1" / MODEL_FILE,
            max_batch_size=max_batch_size,
            device=device_for(accelerator),
        )
        written.append(path)
    return written


def _photos(names: tuple[str, ...]) -> list[bytes]:
    from skimage import data

    from fitguard.preprocess import encode_image

    return [encode_image(getattr(data, name)()) for name in names]


def check_parity(settings: Any, names: tuple[str, ...] = VERIFY_PHOTOS) -> ParityReport:
    """The CPU build of the DALI pipeline against the Python step on real photos (max |delta| per pixel)."""
    images = _photos(names)
    want = settings.prepare_batch(images)
    got = CpuRunner(Geometry.from_settings(settings), batch_size=len(images)).prepare_batch(images)
    deltas: dict[str, float] = {}
    for key, got_pixels, want_pixels in zip(("crop", "patches"), got, want, strict=True):
        if got_pixels is None and want_pixels is None:
            continue  # shared quality mode: no patches are cut
        if got_pixels is None or want_pixels is None or got_pixels.shape != want_pixels.shape:
            shapes = [None if a is None else a.shape for a in (got_pixels, want_pixels)]
            raise ValueError(f"DALI {key} shape {shapes[0]} differs from the Python step's {shapes[1]}")
        diff = np.abs(got_pixels.astype(np.int16) - want_pixels.astype(np.int16))
        deltas[key] = float(diff.max())
        deltas[f"{key}_share_differing"] = float(np.mean(diff > 0))
    tolerance = {k: v for k, v in PIXEL_TOLERANCE.items() if k in deltas}
    return ParityReport(PREPROCESS, len(images), deltas, tolerance)
