"""TID2013-like image distortions at five levels (numpy, scipy and Pillow only; no torch).

Each distortion maps an RGB uint8 (H, W, 3) image to another of the same shape, deterministically for a
given ``seed``. Levels 1..5 grow in strength. Where ImageNet-C (Hendrycks & Dietterich, 2019) defines a
corruption, its severities are used; the others follow TID2013's types with levels chosen to span mild to
severe. All noise is drawn from ``numpy.random.default_rng(seed)``.

=====================  =========================================================================
kind                   levels 1..5 (pixel values on [0, 1] unless stated)
=====================  =========================================================================
gaussian_blur          Gaussian sigma 1, 2, 3, 4, 6 px (ImageNet-C)
white_noise            additive i.i.d. Gaussian noise, sigma .08, .12, .18, .26, .38 (ImageNet-C)
color_noise            Gaussian noise in YCbCr, chroma sigma .06, .09, .13, .19, .28, luma sigma a third
                       of that (TID2013 #2: noise stronger in the colour components)
impulse_noise          salt-and-pepper per channel, amount .03, .06, .09, .17, .27 (ImageNet-C)
jpeg                   Pillow JPEG quality 25, 18, 15, 10, 7 (ImageNet-C)
jpeg2000               Pillow/OpenJPEG JPEG 2000 (9/7 wavelet, YCbCr), compression ratio 24, 48, 96,
                       160, 320 (chosen so that PSNR on photos steps like TID2013's levels)
contrast_change        (x - mean) * c + mean, c = .7, .5, .35, .2, .1 (contrast reduction)
saturation_change      Pillow ImageEnhance.Color factor .6, .4, .25, .1, 0 (towards grey)
mean_shift             brightness shift of .06, .12, .18, .25, .35; the sign (brighter or darker)
                       comes from the seed, as TID2013 #16 has both
block_wise             32x32 blocks of random constant colour, 1, 2, 4, 7, 12 per 224x224 area
                       (2, 4, 8, 14, 24 % of the image)
                       (TID2013 #15, local block-wise distortions)
quantization           uniform quantisation of each channel to 24, 14, 9, 6, 4 levels
multiplicative_noise   speckle x + x * n, n ~ N(0, sigma), sigma .15, .2, .35, .45, .6 (ImageNet-C)
=====================  =========================================================================

The paper's "distorted" detector group uses ``gaussian_blur``, ``white_noise``, ``jpeg`` and
``jpeg2000`` at the five levels (:data:`PAPER_DISTORTIONS`).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance
from scipy.ndimage import gaussian_filter

from fitguard.preprocess import decode_image

LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)

# Per-kind parameters for levels 1..5 (documented in the module docstring and docs/iqa.md).
PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_blur": (1, 2, 3, 4, 6),
    "white_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "color_noise": (0.06, 0.09, 0.13, 0.19, 0.28),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "jpeg": (25, 18, 15, 10, 7),
    "jpeg2000": (24, 48, 96, 160, 320),
    "contrast_change": (0.7, 0.5, 0.35, 0.2, 0.1),
    "saturation_change": (0.6, 0.4, 0.25, 0.1, 0.0),
    "mean_shift": (0.06, 0.12, 0.18, 0.25, 0.35),
    "block_wise": (1, 2, 4, 7, 12),
    "quantization": (24, 14, 9, 6, 4),
    "multiplicative_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
}

PAPER_DISTORTIONS: tuple[str, ...] = ("gaussian_blur", "white_noise", "jpeg", "jpeg2000")

_BLOCK = 32


def _to_float(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _gaussian_blur(rgb: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(gaussian_filter(_to_float(rgb), sigma=(p, p, 0), mode="reflect"))


def _white_noise(rgb: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    x = _to_float(rgb)
    return _to_uint8(x + rng.normal(0.0, p, size=x.shape).astype(np.float32))


# ITU-R BT.601 full-range RGB <-> YCbCr (JPEG's), on [0, 1] with chroma centred on 0.
_RGB2YCC = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32
)
_YCC2RGB = np.linalg.inv(_RGB2YCC).astype(np.float32)


def _color_noise(rgb: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    ycc = _to_float(rgb) @ _RGB2YCC.T
    sigma = np.array([p / 3.0, p, p], np.float32)
    ycc = ycc + rng.normal(0.0, 1.0, size=ycc.shape).astype(np.float32) * sigma
    return _to_uint8(ycc @ _YCC2RGB.T)


def _impulse_noise(rgb: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    out = rgb.copy()
    u = rng.random(rgb.shape)
    out[u < p / 2] = 0
    out[(u >= p / 2) & (u < p)] = 255
    return out


def _encode_decode(rgb: np.ndarray, **save: object) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, **save)
    return decode_image(buf.getvalue())


def _jpeg(rgb: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return _encode_decode(rgb, format="JPEG", quality=int(p))


def _jpeg2000(rgb: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    # quality_mode="rates": each layer is a compression ratio; one layer at the level's ratio.
    return _encode_decode(
        rgb, format="JPEG2000", quality_mode="rates", quality_layers=[float(p)], irreversible=True
    )


def _contrast_change(rgb: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    x = _to_float(rgb)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return _to_uint8((x - mean) * p + mean)


def _saturation_change(rgb: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageEnhance.Color(Image.fromarray(rgb)).enhance(p), dtype=np.uint8).copy()


def _mean_shift(rgb: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    # The level's shift follows rng's first draw, so all levels of one seed shift the same way.
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return _to_uint8(_to_float(rgb) + sign * p)


def _block_wise(rgb: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    out = rgb.copy()
    h, w = rgb.shape[:2]
    size = min(_BLOCK, h, w)
    n = max(1, int(round(p * h * w / (224 * 224))))  # p blocks per 224 x 224 area
    for _ in range(n):
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        out[top : top + size, left : left + size] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return out


def _quantization(rgb: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    steps = int(p) - 1
    return _to_uint8(np.round(_to_float(rgb) * steps) / steps)


def _multiplicative_noise(rgb: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    x = _to_float(rgb)
    return _to_uint8(x + x * rng.normal(0.0, p, size=x.shape).astype(np.float32))


_FUNCS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "gaussian_blur": _gaussian_blur,
    "white_noise": _white_noise,
    "color_noise": _color_noise,
    "impulse_noise": _impulse_noise,
    "jpeg": _jpeg,
    "jpeg2000": _jpeg2000,
    "contrast_change": _contrast_change,
    "saturation_change": _saturation_change,
    "mean_shift": _mean_shift,
    "block_wise": _block_wise,
    "quantization": _quantization,
    "multiplicative_noise": _multiplicative_noise,
}

DISTORTIONS: tuple[str, ...] = tuple(_FUNCS)


def distort(rgb: np.ndarray, kind: str, level: int, seed: int = 0) -> np.ndarray:
    """Apply distortion ``kind`` at ``level`` (1 = mildest .. 5 = strongest).

    Args:
        rgb: uint8 array (H, W, 3).
        kind: one of :data:`DISTORTIONS`.
        level: one of :data:`LEVELS`.
        seed: seeds the random parts (noise, block positions, shift sign); same seed, same output.

    Returns:
        A new uint8 array of the same shape.
    """
    if kind not in _FUNCS:
        raise ValueError(f"unknown distortion {kind!r}; known: {', '.join(DISTORTIONS)}")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) array, got {rgb.dtype} {rgb.shape}")
    rgb = np.ascontiguousarray(rgb)
    # The stream depends on the seed and kind only, so levels of one seed share noise shape and sign.
    rng = np.random.default_rng([seed, DISTORTIONS.index(kind)])
    out = _FUNCS[kind](rgb, PARAMS[kind][level - 1], rng)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    return out


def distort_with(rgb: np.ndarray, kind: str, param: float, seed: int = 0) -> np.ndarray:
    """Apply distortion ``kind`` with an explicit parameter (a level's value from :data:`PARAMS` or one
    beyond the ladder): the shift tests send strengths the quality head and detector never saw."""
    if kind not in _FUNCS:
        raise ValueError(f"unknown distortion {kind!r}; known: {', '.join(DISTORTIONS)}")
    rng = np.random.default_rng([seed, DISTORTIONS.index(kind)])
    return _FUNCS[kind](np.ascontiguousarray(rgb, dtype=np.uint8), param, rng)
