"""Preprocessing: decoding every mode, limits, and parity of the classifier crop with torchvision."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fitguard.contract import INPUT_SIZE
from fitguard.preprocess import (
    BadImageError,
    Limits,
    classifier_crop,
    decode_image,
    encode_image,
    iqa_patches,
    patch_grid,
    prepare,
)
from fitguard.presets import Preset, preset_for


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decode_png_roundtrip_is_exact(photos):
    rgb = photos["chelsea"]
    assert np.array_equal(decode_image(encode_image(rgb)), rgb)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb(photos, mode):
    src = Image.fromarray(photos["coffee"])
    if mode == "I;16":  # a real 16-bit image spans 0..65535
        img = Image.fromarray(np.asarray(src.convert("L")).astype(np.uint16) * 257)
    elif mode in ("I", "F"):
        img = src.convert("L").convert(mode)
    else:
        img = src.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I;16", "I", "F") else "PNG"
    rgb = decode_image(_save(img, fmt))
    assert rgb.dtype == np.uint8 and rgb.shape == (*photos["coffee"].shape[:2], 3)
    assert rgb.std() > 10  # content survived, not a blank frame


def test_sixteen_bit_keeps_its_range():
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    rgb = decode_image(_save(Image.fromarray(ramp), "PNG"))
    assert rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255


def test_transparency_composites_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    rgb = decode_image(_save(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (rgb == 255).all()


def test_exif_orientation_applied(photos):
    img = Image.fromarray(photos["chelsea"])  # 451 wide, 300 high
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    rgb = decode_image(_save(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert rgb.shape[:2] == (451, 300)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    rgb = decode_image(buf.getvalue())
    assert rgb[0, 0, 0] > 200 and rgb[0, 0, 2] < 50


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, I am text", "not a recognised image"),
        (b"<html><body>hi</body></html>", "not a recognised image"),
    ],
)
def test_garbage_is_refused_with_reason(data, reason):
    with pytest.raises(BadImageError, match=reason):
        decode_image(data)


def test_truncated_jpeg_is_refused(photos):
    data = encode_image(photos["astronaut"], "JPEG")
    with pytest.raises(BadImageError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 3])


def test_size_limits():
    with pytest.raises(BadImageError, match="exceeds the limit"):
        decode_image(_save(Image.new("RGB", (20000, 5)), "PNG"))
    with pytest.raises(BadImageError, match="aspect ratio"):
        decode_image(_save(Image.new("RGB", (4000, 10)), "PNG"))
    with pytest.raises(BadImageError, match="pixels"):
        decode_image(_save(Image.new("L", (4000, 4000)), "PNG"), Limits(max_pixels=1_000_000))
    with pytest.raises(BadImageError, match="bytes"):
        decode_image(b"x" * 100, Limits(max_bytes=10))


def test_classifier_crop_matches_torchvision(photos):
    torchvision = pytest.importorskip("torchvision")
    from torchvision.transforms import v2

    preset = preset_for("resnet152")
    tf = v2.Compose([v2.Resize(preset.resize), v2.CenterCrop(preset.crop)])
    for rgb in photos.values():
        ref = np.asarray(tf(Image.fromarray(rgb))).transpose(2, 0, 1)
        ours = classifier_crop(rgb, preset)
        assert ours.shape == (3, INPUT_SIZE, INPUT_SIZE)
        assert np.array_equal(ours, ref), torchvision.__version__


def test_patches_native_resolution_and_deterministic(photos):
    rgb = photos["astronaut"]  # 512 x 512
    p = iqa_patches(rgb, 4)
    assert p.shape == (4, 3, INPUT_SIZE, INPUT_SIZE) and p.dtype == np.uint8
    # 2 x 2 grid centred on cell centres: first patch starts at (16, 16), cut without resampling.
    assert np.array_equal(p[0], rgb[16:240, 16:240].transpose(2, 0, 1))
    assert np.array_equal(p, iqa_patches(rgb, 4))


def test_small_images_are_upscaled_not_refused():
    tiny = np.full((1, 1, 3), 77, np.uint8)
    crop, patches = prepare(encode_image(tiny), Preset(), patches=3)
    assert crop.shape == (3, 224, 224) and patches.shape == (3, 3, 224, 224)
    assert (patches == 77).all()


def test_patch_grid_follows_aspect():
    assert patch_grid(4, 300, 300) == (2, 2)
    assert patch_grid(4, 100, 1000)[1] >= 4
    assert patch_grid(1, 50, 50) == (1, 1)
