"""Fuzzing the preprocessing functions the server runs on every request (hypothesis, bounded budget).

Contract under test: ``decode_image`` returns an RGB uint8 (H, W, 3) array or raises ``BadImageError``;
nothing else escapes (no OSError, no MemoryError from a bomb, no struct.error, no hang). Crops and patches
always have the shapes the tensor contract declares, whatever the image size.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fitguard.contract import INPUT_SIZE
from fitguard.preprocess import BadImageError, Limits, classifier_crop, decode_image, iqa_patches, prepare
from fitguard.presets import preset_for

pytestmark = [pytest.mark.reliability]

# Bounded: a few hundred examples per decoding property (milliseconds each), fewer for the pixel work.
FUZZ = settings(
    max_examples=400,
    deadline=2000,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Small limits so that hostile sizes are refused quickly and the test never allocates much.
LIMITS = Limits(max_bytes=4 * 1024 * 1024, max_pixels=4_000_000, max_side=4096, max_aspect=32.0)
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")


def _seed_image(fmt: str, width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _assert_decodes_or_refuses(data: bytes) -> None:
    try:
        rgb = decode_image(data, LIMITS)
    except BadImageError as exc:
        assert str(exc), "a refusal must say why"
        return
    assert isinstance(rgb, np.ndarray)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[0] >= 1 and rgb.shape[1] >= 1
    assert rgb.shape[0] * rgb.shape[1] <= LIMITS.max_pixels


@FUZZ
@given(st.binary(max_size=4096))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    _assert_decodes_or_refuses(data)


@FUZZ
@given(
    fmt=st.sampled_from(FORMATS),
    width=st.integers(1, 64),
    height=st.integers(1, 64),
    seed=st.integers(0, 2**16),
    edits=st.lists(st.tuples(st.floats(0, 1, allow_nan=False), st.integers(0, 255)), max_size=24),
    cut=st.one_of(st.none(), st.floats(0, 1, allow_nan=False)),
)
def test_decode_mutated_images(fmt: str, width: int, height: int, seed: int, edits, cut) -> None:
    """Valid files of every format with bytes overwritten (headers included) and optional truncation."""
    data = bytearray(_seed_image(fmt, width, height, seed))
    for where, value in edits:
        data[min(int(where * len(data)), len(data) - 1)] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    _assert_decodes_or_refuses(bytes(data))


@FUZZ
@given(
    width=st.integers(1, 20000),
    height=st.integers(1, 20000),
    fmt=st.sampled_from(("PNG", "GIF", "BMP")),
)
def test_decode_forged_dimensions(width: int, height: int, fmt: str) -> None:
    """Headers claiming any size up to 20000x20000 over a tiny payload: refused or decoded, never a crash."""
    data = bytearray(_seed_image(fmt, 2, 2, 0))
    if fmt == "PNG":
        import struct
        import zlib

        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    elif fmt == "GIF":
        data[6:10] = int(width % 65536).to_bytes(2, "little") + int(height % 65536).to_bytes(2, "little")
    else:
        data[18:26] = width.to_bytes(4, "little") + height.to_bytes(4, "little")
    _assert_decodes_or_refuses(bytes(data))


@settings(max_examples=40, deadline=5000, derandomize=True)
@given(
    height=st.integers(1, 600),
    width=st.integers(1, 600),
    patches=st.integers(1, 9),
    backbone=st.sampled_from(("resnet152", "efficientnet_lite0")),
)
def test_crop_and_patch_shapes(height: int, width: int, patches: int, backbone: str) -> None:
    rng = np.random.default_rng(height * 1000 + width)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    preset = preset_for(backbone)
    crop = classifier_crop(rgb, preset)
    assert crop.shape == (3, preset.crop, preset.crop) and crop.dtype == np.uint8
    assert crop.flags.c_contiguous
    out = iqa_patches(rgb, patches)
    assert out.shape == (patches, 3, INPUT_SIZE, INPUT_SIZE) and out.dtype == np.uint8
    # Deterministic: the same image gives the same patches.
    assert np.array_equal(out, iqa_patches(rgb, patches))


@settings(max_examples=40, deadline=5000, derandomize=True)
@given(
    fmt=st.sampled_from(FORMATS),
    width=st.integers(1, 400),
    height=st.integers(1, 400),
    patches=st.integers(1, 6),
)
def test_prepare_end_to_end_shapes(fmt: str, width: int, height: int, patches: int) -> None:
    data = _seed_image(fmt, width, height, width + height)
    try:
        crop, out = prepare(data, preset_for("resnet152"), patches, LIMITS)
    except BadImageError as exc:
        # Only the aspect-ratio rule can refuse a well-formed image of these sizes.
        assert max(width, height) / min(width, height) > LIMITS.max_aspect, str(exc)
        return
    assert crop.shape == (3, INPUT_SIZE, INPUT_SIZE)
    assert out.shape == (patches, 3, INPUT_SIZE, INPUT_SIZE)
