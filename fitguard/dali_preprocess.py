"""The preprocess step as an NVIDIA DALI pipeline, for the DALI backend of the NGC Triton image.

One definition, :func:`preprocess_pipeline`, serves both places: ``device="gpu"`` decodes with nvJPEG
("mixed") and resizes and cuts on the GPU (the serialized ``model.dali``); ``device="cpu"`` builds the same
graph on the CPU, which is how it is checked against :mod:`fitguard.preprocess` on machines without a GPU.

The geometry is exactly the Python step's, in integer arithmetic on the image header's shape: the shorter
side is resized to the preset's ``resize`` with the longer side floored (torchvision ``Resize(int)``), the
centre crop offset rounds half to even (Python's ``round``), the patch grid follows the aspect ratio and
patch offsets round like :func:`fitguard.preprocess.iqa_patches`. Only the resampling filter differs
(DALI's antialiased linear/cubic against Pillow's), which the parity check measures. The input limits are
checked from the header before decoding (a failed batch, DALI having no per-sample error); what DALI does
not do is the alpha flattening onto white (docs/deployment.md).

DALI's Triton backend takes encoded images as ``UINT8 [-1]``, not ``BYTES`` (:data:`DALI_IMAGE`): in a DALI
repository the ensemble keeps the ``BYTES`` contract and the validating step ahead of DALI
(:mod:`fitguard.dali_check`) hands the file's bytes on as a uint8 vector. In shared quality mode
(``patches`` 0) the pipeline emits the classifier crop only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.contract import IMAGE, INPUT_SIZE, Tensor
from fitguard.preprocess import DEFAULT_LIMITS, BadImageError, Limits

MODEL_FILE = "model.dali"
DALI_IMAGE = Tensor(IMAGE, "UINT8", (-1,))  # the DALI model's input: the encoded file as a uint8 vector
DEVICES = ("cpu", "gpu")
_INSTALL = "nvidia-dali-cuda120 (pip install 'fitguard[dali]')"


@dataclass(frozen=True)
class Geometry:
    """What the pipeline needs from a preset: resize target, crop side, filter, patch count (0: shared
    quality mode, the crop only) and side."""

    resize: int
    crop: int
    interpolation: str
    patches: int
    patch: int = INPUT_SIZE
    limits: Limits = DEFAULT_LIMITS

    @classmethod
    def from_settings(cls, settings: Any) -> Geometry:
        """From :class:`fitguard.preprocess.PreprocessSettings` (preset, patch count, limits)."""
        preset = settings.preset
        return cls(
            resize=preset.resize,
            crop=preset.crop,
            interpolation=preset.interpolation,
            patches=settings.patches,
            limits=settings.limits,
        )


def _dali() -> tuple[Any, Any, Any]:
    try:
        import nvidia.dali as dali
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
    except ImportError as exc:
        raise ImportError(f"the DALI preprocess step needs {_INSTALL}") from exc
    return dali, fn, types


def _round_half_even(numerator: Any, denominator: Any) -> Any:
    """round(n / d) as Python rounds (ties to even), for DALI integer nodes with n >= 0 and d > 0."""
    q = numerator // denominator
    twice_rem = 2 * (numerator - q * denominator)
    return q + _as_int(twice_rem > denominator) + _as_int(twice_rem == denominator) * (q & 1)


def _as_int(node: Any) -> Any:
    _, fn, types = _dali()
    return fn.cast(node, dtype=types.INT32)


def _cut(image: Any, top: Any, left: Any, side: int) -> Any:
    _, fn, types = _dali()
    anchor = fn.cast(fn.stack(top, left), dtype=types.INT32)  # anchor and shape must share a type
    return fn.slice(
        image, anchor, np.array([side, side], np.int32), axes=[0, 1], out_of_bounds_policy="error"
    )


def _resize(image: Any, width: Any, height: Any, interpolation: str) -> Any:
    _, fn, types = _dali()
    interp = {"bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC, "nearest": types.INTERP_NN}
    return fn.resize(
        image,
        resize_x=fn.cast(width, dtype=types.FLOAT),
        resize_y=fn.cast(height, dtype=types.FLOAT),
        interp_type=interp[interpolation],
        antialias=True,
    )


def _within_limits(encoded: Any, height: Any, width: Any, limits: Limits) -> Any:
    """``encoded`` itself, or a failed batch when the header breaks a limit, before anything is decoded.

    DALI has no assertion operator: a slice one byte past the end, with out-of-bounds slices an error,
    is the refusal. The decoder reads this node, so the check runs first.
    """
    dali, fn, types = _dali()
    size = encoded.shape(dtype=types.INT64)[0]
    long, short = dali.math.max(height, width), dali.math.min(height, width)
    aspect_milli = int(round(limits.max_aspect * 1000))
    broken = (
        _as_int(size > limits.max_bytes)
        + _as_int(height * width > limits.max_pixels)
        + _as_int(long > limits.max_side)
        + _as_int(long * 1000 > aspect_milli * short)
    )
    length = size + dali.math.min(broken, 1)
    start = fn.stack(size - size)  # int64 like the length: slice wants anchor and shape of one type
    return fn.slice(encoded, start, fn.stack(length), axes=[0], out_of_bounds_policy="error")


def _classifier_crop(image: Any, height: Any, width: Any, geo: Geometry) -> Any:
    dali, fn, _ = _dali()
    short = dali.math.min(height, width)
    new_w, new_h = (geo.resize * width) // short, (geo.resize * height) // short
    resized = _resize(image, new_w, new_h, geo.interpolation)
    top = _round_half_even(new_h - geo.crop, 2)
    left = _round_half_even(new_w - geo.crop, 2)
    return fn.transpose(_cut(resized, top, left, geo.crop), perm=[2, 0, 1])


def _patch_offset(index: Any, cells: Any, extent: Any, side: int) -> Any:
    """min(max(round((index + 0.5) * extent / cells - side / 2), 0), extent - side), exactly."""
    dali, _, _ = _dali()
    numerator = dali.math.max((2 * index + 1) * extent - side * cells, 0)
    return dali.math.min(_round_half_even(numerator, 2 * cells), extent - side)


def _iqa_patches(image: Any, height: Any, width: Any, geo: Geometry) -> Any:
    dali, fn, _ = _dali()
    short = dali.math.min(height, width)
    grown = dali.math.max(short, geo.patch)  # images smaller than a patch are upscaled (bicubic)
    h, w = (grown * height) // short, (grown * width) // short
    image = _resize(image, w, h, "bicubic")
    # cols = clamp(ceil(sqrt(P * w / h)), 1, P) without floating point: count c with c^2 h < P w.
    cols = 1
    for c in range(1, geo.patches):
        cols = cols + _as_int(c * c * h < geo.patches * w)
    rows = (geo.patches + cols - 1) // cols
    cuts = []
    for i in range(geo.patches):
        r = i // cols
        c = i - r * cols
        top = _patch_offset(r, rows, h, geo.patch)
        left = _patch_offset(c, cols, w, geo.patch)
        cuts.append(_cut(image, top, left, geo.patch))
    return fn.transpose(fn.stack(*cuts), perm=[0, 3, 1, 2])


def preprocess_pipeline(
    geometry: Geometry,
    *,
    device: str = "gpu",
    batch_size: int = 16,
    num_threads: int = 4,
    device_id: int | None = 0,
) -> Any:
    """The preprocess step as a DALI pipeline: IMAGE (encoded uint8) -> classifier crop, IQA patches (the
    crop only when ``geometry.patches`` is 0).

    Args:
        geometry: see :class:`Geometry`.
        device: ``"gpu"`` (decoding "mixed", i.e. nvJPEG; resize and cuts on the GPU) or ``"cpu"``.
        batch_size: the pipeline's maximum batch (the Triton config's ``max_batch_size``).
        device_id: the GPU; None for ``device="cpu"`` and for serializing (no GPU needed then).
    """
    dali, fn, types = _dali()
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if geometry.resize < geometry.crop or geometry.patches < 0:
        raise ValueError(f"unusable geometry {geometry}: resize >= crop and patches >= 0 are required")
    pipe = dali.Pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if device == "gpu" else None,
        prefetch_queue_depth=1,
    )
    with pipe:
        encoded = fn.external_source(name=IMAGE, dtype=types.UINT8, ndim=1, device="cpu")
        shape = fn.peek_image_shape(encoded, dtype=types.INT64)  # header only, EXIF orientation applied
        height, width = shape[0], shape[1]
        checked = _within_limits(encoded, height, width, geometry.limits)
        image = fn.decoders.image(
            checked, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB
        )
        crop = _classifier_crop(image, height, width, geometry)
        if geometry.patches == 0:  # shared quality mode: the classifier's pass gives the quality features
            pipe.set_outputs(crop)
        else:
            pipe.set_outputs(crop, _iqa_patches(image, height, width, geometry))
    return pipe


def serialize(geometry: Geometry, path: str | Path, *, max_batch_size: int, device: str = "gpu") -> Path:
    """Write the serialized pipeline (``model.dali``) that the DALI backend loads."""
    from nvidia.dali._utils import dali_trace

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Operator origin traces would write this machine's source paths into the file: the same pipeline
    # must serialize to the same bytes wherever it is exported (the manifest checksums it).
    was_tracing = dali_trace.is_tracing_enabled()
    dali_trace.set_tracing(enabled=False)
    try:
        # device_id None: serializing needs no GPU; the backend binds each instance to its own device.
        pipe = preprocess_pipeline(geometry, device=device, batch_size=max_batch_size, device_id=None)
        pipe.serialize(filename=str(path))
    finally:
        dali_trace.set_tracing(enabled=was_tracing)
    return path


class CpuRunner:
    """Runs the pipeline on the CPU, one batch at a time; a failed batch rebuilds it (DALI stops on
    errors)."""

    def __init__(self, geometry: Geometry, batch_size: int = 8, num_threads: int = 2) -> None:
        self.geometry, self.batch_size, self.num_threads = geometry, batch_size, num_threads
        self._pipe: Any = None

    def _pipeline(self) -> Any:
        if self._pipe is None:
            self._pipe = preprocess_pipeline(
                self.geometry, device="cpu", batch_size=self.batch_size, num_threads=self.num_threads
            )
            self._pipe.build()
        return self._pipe

    def prepare_batch(self, images: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray | None]:
        """Encoded images -> (crops [B, 3, crop, crop], patches [B, P, 3, side, side] or None in shared
        quality mode), uint8.

        Raises:
            BadImageError: DALI refused the batch (its message names the reason).
        """
        if not 0 < len(images) <= self.batch_size:
            raise ValueError(f"batch of {len(images)} images; this runner takes 1..{self.batch_size}")
        pipe = self._pipeline()
        pipe.feed_input(IMAGE, [np.frombuffer(bytes(b), dtype=np.uint8) for b in images])
        try:
            outputs = pipe.run()
        except RuntimeError as exc:
            self._pipe = None  # a pipeline that raised is not reused
            raise BadImageError(f"DALI refused the batch: {str(exc).splitlines()[0]}") from None
        stacked = [np.stack([np.array(t) for t in out]) for out in outputs]
        return stacked[0], stacked[1] if len(stacked) > 1 else None

    def prepare(self, data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
        crops, patches = self.prepare_batch([data])
        return crops[0], None if patches is None else patches[0]
