"""``fitguard export --preprocess dali``: the preprocess step as a serialized DALI pipeline.

The repository is the same as the Python one except for ``preprocess/``: ``backend: "dali"`` with
``1/model.dali`` instead of ``1/model.py``, and the encoded image travelling as ``UINT8 [-1]`` (what DALI's
Triton backend accepts) in the preprocess step and the ensemble. With ``--accelerator none`` the pipeline
runs on the CPU; with a GPU accelerator it decodes with nvJPEG and resizes and cuts on the GPU. Before
anything is written, the CPU build of the same pipeline is run beside the Python step on real photos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fitguard.contract import ENSEMBLE, IMAGE, PREPROCESS, SIGNATURES, Tensor
from fitguard.dali_preprocess import DALI_IMAGE, MODEL_FILE, CpuRunner, Geometry, serialize
from fitguard.export.verify import VERIFY_PHOTOS, ParityReport

PREPROCESS_STEPS: tuple[str, ...] = ("python", "dali")
# Max |delta| of a uint8 pixel against the Python step on the verification photos: the classifier crop is
# resampled by a different (antialiased linear) filter, the quality patches of photos at least a patch
# wide are plain cuts and must be identical (docs/performance.md has the measured figures).
PIXEL_TOLERANCE = {"crop": 1.0, "patches": 0.0}
_PYTHON_ONLY_PARAMETERS = ("verify_manifest",)  # read by model.py, which a DALI step does not have


def signature(name: str, preprocess: str = "python") -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The contract of model ``name`` in a repository with the given preprocess step."""
    if preprocess not in PREPROCESS_STEPS:
        raise ValueError(f"unknown preprocess step {preprocess!r}; choose from {', '.join(PREPROCESS_STEPS)}")
    inputs, outputs = SIGNATURES[name]
    if preprocess == "dali" and name in (PREPROCESS, ENSEMBLE):
        inputs = tuple(DALI_IMAGE if t.name == IMAGE else t for t in inputs)
    return inputs, outputs


def device_for(accelerator: str) -> str:
    """Where the DALI pipeline runs: on the GPU wherever the models do."""
    return "cpu" if accelerator == "none" else "gpu"


def to_dali(config: Any, accelerator: str) -> None:
    """Turn a rendered preprocess or ensemble ``ModelConfig`` into its DALI-repository form, in place."""
    from tritonclient.grpc import model_config_pb2 as mc

    for tensor in config.input:
        if tensor.name == IMAGE:
            tensor.data_type = mc.TYPE_UINT8
            del tensor.dims[:]
            tensor.dims.append(-1)
    if config.name != PREPROCESS:
        return
    config.backend = "dali"
    for key in _PYTHON_ONLY_PARAMETERS:
        if key in config.parameters:
            del config.parameters[key]
    for group in config.instance_group:
        gpu = device_for(accelerator) == "gpu"
        group.kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU


def write_step(staging: Path, settings: Any, *, max_batch_size: int, accelerator: str) -> Path:
    """Replace ``staging/preprocess/1`` (the Python adapter) with the serialized pipeline."""
    version = staging / PREPROCESS / "1"
    for path in version.iterdir():
        if path.is_file():
            path.unlink()
    return serialize(
        Geometry.from_settings(settings),
        version / MODEL_FILE,
        max_batch_size=max_batch_size,
        device=device_for(accelerator),
    )


def _photos(names: tuple[str, ...]) -> list[bytes]:
    from skimage import data

    from fitguard.preprocess import encode_image

    return [encode_image(getattr(data, name)()) for name in names]


def check_parity(settings: Any, names: tuple[str, ...] = VERIFY_PHOTOS) -> ParityReport:
    """The CPU build of the DALI pipeline against the Python step on real photos (max |delta| per pixel)."""
    images = _photos(names)
    want_crops, want_patches = settings.prepare_batch(images)
    got_crops, got_patches = CpuRunner(
        Geometry.from_settings(settings), batch_size=len(images)
    ).prepare_batch(images)
    deltas: dict[str, float] = {}
    for key, got, want in (("crop", got_crops, want_crops), ("patches", got_patches, want_patches)):
        if got.shape != want.shape:
            raise ValueError(f"DALI {key} shape {got.shape} differs from the Python step's {want.shape}")
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        deltas[key] = float(diff.max())
        deltas[f"{key}_share_differing"] = float(np.mean(diff > 0))
    return ParityReport(PREPROCESS, len(images), deltas, dict(PIXEL_TOLERANCE))
