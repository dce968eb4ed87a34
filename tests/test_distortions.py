"""Distortions on real photos: shapes, determinism, and strength that grows with the level."""

from __future__ import annotations

import numpy as np
import pytest

from fitguard.photos import PACKAGE_PHOTOS, folder_photos, load_photos
from fitguard.training.data.distortions import DISTORTIONS, LEVELS, PAPER_DISTORTIONS, PARAMS, distort

REQUIRED = (
    "gaussian_blur",
    "white_noise",
    "color_noise",
    "impulse_noise",
    "jpeg",
    "jpeg2000",
    "contrast_change",
    "saturation_change",
    "mean_shift",
    "block_wise",
    "quantization",
    "multiplicative_noise",
)


@pytest.fixture(scope="module")
def cat(photos: dict[str, np.ndarray]) -> np.ndarray:
    return photos["chelsea"][:160, 100:300]  # odd-sized crop: nothing assumes multiples of 8 or 32


def test_names_and_levels() -> None:
    assert set(REQUIRED) <= set(DISTORTIONS)
    assert set(PAPER_DISTORTIONS) <= set(DISTORTIONS)
    assert LEVELS == (1, 2, 3, 4, 5)
    assert all(len(PARAMS[k]) == len(LEVELS) for k in DISTORTIONS)
    # The ImageNet-C severities the paper's groups are compared against.
    assert PARAMS["white_noise"] == (0.08, 0.12, 0.18, 0.26, 0.38)
    assert PARAMS["gaussian_blur"] == (1, 2, 3, 4, 6)
    assert PARAMS["jpeg"] == (25, 18, 15, 10, 7)


@pytest.mark.parametrize("kind", DISTORTIONS)
def test_shape_dtype_determinism_and_change(cat: np.ndarray, kind: str) -> None:
    outs = [distort(cat, kind, level, seed=7) for level in LEVELS]
    for out in outs:
        assert out.shape == cat.shape and out.dtype == np.uint8
        assert not np.array_equal(out, cat), f"{kind} left the image unchanged"
    assert np.array_equal(outs[2], distort(cat, kind, 3, seed=7))
    assert not np.shares_memory(outs[0], cat)


@pytest.mark.parametrize("kind", DISTORTIONS)
def test_strength_grows_with_level(cat: np.ndarray, kind: str) -> None:
    err = [np.abs(distort(cat, kind, lvl, seed=1).astype(np.float64) - cat).mean() for lvl in LEVELS]
    # Lossy coders may wobble between neighbouring levels; the strongest is always clearly worse.
    assert err[-1] > err[0] * 1.3, (kind, err)
    if kind not in ("jpeg", "jpeg2000"):
        assert all(b >= a for a, b in zip(err, err[1:], strict=False)), (kind, err)


def test_noise_follows_the_seed(cat: np.ndarray) -> None:
    a, b = distort(cat, "white_noise", 2, seed=0), distort(cat, "white_noise", 2, seed=1)
    assert not np.array_equal(a, b)
    # sigma .12 on [0, 1]: the residual's spread matches, away from clipping.
    mid = (cat > 60) & (cat < 195)
    resid = (a.astype(np.float64) - cat)[mid] / 255.0
    assert abs(resid.std() - 0.12) < 0.01


def test_jpeg2000_is_a_real_codec(cat: np.ndarray) -> None:
    out = distort(cat, "jpeg2000", 5)
    # A wavelet coder at 1/320 of the bits smooths detail away but keeps the mean colour.
    assert abs(out.astype(np.float64).mean() - cat.mean()) < 3
    assert (
        np.abs(np.diff(out.astype(np.float64), axis=1)).mean()
        < np.abs(np.diff(cat.astype(np.float64), axis=1)).mean()
    )


def test_bad_arguments(cat: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown distortion"):
        distort(cat, "fog", 1)
    with pytest.raises(ValueError, match="level"):
        distort(cat, "jpeg", 6)
    with pytest.raises(ValueError, match="RGB uint8"):
        distort(cat[:, :, 0], "jpeg", 1)
    with pytest.raises(ValueError, match="RGB uint8"):
        distort(cat.astype(np.float32), "jpeg", 1)


def test_package_photos_are_colour() -> None:
    photos = load_photos()
    assert tuple(photos) == PACKAGE_PHOTOS
    for name, rgb in photos.items():
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
        assert min(rgb.shape[:2]) >= 224, name
        chroma = np.abs(rgb[..., 0].astype(int) - rgb[..., 2]).mean()
        assert chroma > 2, f"{name} looks grey"


def test_folder_photos_recursive_and_converted(tmp_path, photos: dict[str, np.ndarray]) -> None:
    from PIL import Image

    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(photos["coffee"]).save(tmp_path / "a" / "coffee.jpg", quality=95)
    Image.fromarray(photos["rocket"][:, :, 0]).save(tmp_path / "a" / "b" / "grey.png")
    Image.fromarray(photos["chelsea"]).convert("RGBA").save(tmp_path / "cat.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    got = folder_photos(tmp_path)
    assert sorted(got) == ["a/b/grey", "a/coffee", "cat"]
    assert got["a/b/grey"].shape == photos["rocket"].shape
    assert np.array_equal(got["cat"], photos["chelsea"])
    with pytest.raises(FileNotFoundError):
        folder_photos(tmp_path / "missing")
