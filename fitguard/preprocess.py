"""The preprocess step: what the preprocess backend runs, also used by the reference pipelines and training.

Decode -> validate -> RGB uint8 HWC, then the classifier crop (per the backbone preset) and P quality
patches cut at native resolution (quality must not be resampled away). :class:`PreprocessSettings` is
what the backend reads from its config's ``parameters`` (:mod:`fitguard.parameters`). Only numpy and Pillow.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fitguard import parameters as keys
from fitguard.contract import DEFAULT_PATCHES, INPUT_SIZE, PATCHES_MODE, QUALITY_MODES, SHARED_MODE
from fitguard.parameters import Parameters
from fitguard.presets import Preset

# File suffixes of the image formats the decoder reads; folders of images are listed by these.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
)


class BadImageError(ValueError):
    """The input cannot be judged: it is not an image we can decode, or its size is out of bounds."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what the server accepts; each guards memory or time against hostile input."""

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 64_000_000  # decompression bombs are refused before decoding
    max_side: int = 16384
    max_aspect: float = 32.0


DEFAULT_LIMITS = Limits()
# A reduced-scale decode keeps the shorter side at least this many times the resize target: the resize then
# still averages over several decoded pixels, so the crop stays close to the full decode's
# (docs/performance.md has the measured differences at 1x and 2x).
REDUCED_DECODE_MARGIN = 2

_INTERPOLATION = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def decode_image(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array of shape (H, W, 3).

    Applies EXIF orientation, takes the first frame of animations, flattens transparency onto white
    and maps any mode (L, LA, P, RGBA, CMYK, I;16, I, F) to 8-bit RGB.

    Raises:
        BadImageError: empty, oversized, undecodable or absurdly shaped input, with the reason.
    """
    return to_rgb(_open(data, limits, None)[0])


def decode_file(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """:func:`decode_image` of a file: every photo that is classified or quality-scored, in training,
    evaluation and serving alike, is decoded by it (EXIF orientation, mode conversion)."""
    return decode_image(Path(path).read_bytes(), limits)


def decode_rgba(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Image.Image:
    """A cut-out kept with its alpha for compositing, oriented as :func:`decode_image` orients; the
    composite is then what the server would decode."""
    return _open(data, limits, None)[0].convert("RGBA")


def image_files(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (recursively, by :data:`IMAGE_EXTENSIONS`), in sorted order."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def decode_scaled(
    data: bytes | bytearray | memoryview, short_side: int, limits: Limits = DEFAULT_LIMITS
) -> tuple[np.ndarray, tuple[int, int]]:
    """Like :func:`decode_image`, but a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose
    shorter side is still at least ``short_side``; returns the RGB array and the full (width, height)
    after EXIF orientation, so a resize can place pixels exactly as from the full-size decode.

    libjpeg's scaled IDCT decodes a 12 MP photo in a fraction of the full time; the resize that follows
    then starts from fewer pixels. Other formats decode at full size.
    """
    img, full = _open(data, limits, short_side)
    return to_rgb(img), full


def _open(
    data: bytes | bytearray | memoryview, limits: Limits, draft_short_side: int | None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decoded (and EXIF-oriented) PIL image, and its full size after orientation."""
    data = bytes(data)
    if not data:
        raise BadImageError("empty input: no image bytes")
    if len(data) > limits.max_bytes:
        raise BadImageError(f"input is {len(data)} bytes, more than the limit of {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_size(img.size, limits)  # from the header, before any pixel is decoded
            img.seek(0)
            full = img.size
            if draft_short_side and img.format == "JPEG" and min(full) >= 2 * draft_short_side:
                scale = draft_short_side / min(full)
                img.draft(None, (math.ceil(full[0] * scale), math.ceil(full[1] * scale)))
            drafted = img.size
            img.load()
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(f"decompression bomb refused: {exc}") from None
    except Image.UnidentifiedImageError:
        raise BadImageError("not a recognised image format (JPEG, PNG, WebP, BMP, TIFF, GIF)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImageError(f"corrupt or truncated image: {exc}") from None
    # Broken EXIF must not cost the verdict: keep the stored orientation.
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img)
    if img.size != drafted:  # a quarter turn swapped the sides
        full = (full[1], full[0])
    return img, full


def _check_size(size: tuple[int, int], limits: Limits) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise BadImageError(f"image has no pixels ({w}x{h})")
    if w * h > limits.max_pixels:
        raise BadImageError(f"image is {w}x{h} = {w * h} pixels, more than the limit of {limits.max_pixels}")
    if max(w, h) > limits.max_side:
        raise BadImageError(f"image side {max(w, h)} exceeds the limit of {limits.max_side}")
    if max(w, h) / min(w, h) > limits.max_aspect:
        raise BadImageError(f"image aspect ratio {w}x{h} exceeds the limit of {limits.max_aspect}:1")


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode to an RGB uint8 (H, W, 3) array; transparency is composited onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def resize_shorter(
    rgb: np.ndarray, size: int, interpolation: str = "bilinear", full_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Resize so the shorter side is ``size`` (torchvision ``Resize(int)`` semantics on PIL images).

    ``full_size``: the (width, height) of the image ``rgb`` was decoded from at reduced scale; the output
    size is computed from it, so it is the full-size decode's.
    """
    h, w = rgb.shape[:2]
    fw, fh = full_size or (w, h)
    short, long = (fw, fh) if fw <= fh else (fh, fw)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if fw <= fh else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return rgb
    img = Image.fromarray(rgb).resize((new_w, new_h), _INTERPOLATION[interpolation])
    return np.asarray(img, dtype=np.uint8)


def center_offset(length: int, size: int) -> int:
    """Where a centred window of ``size`` starts along ``length`` (torchvision ``CenterCrop``'s rounding).

    The one definition of the crop geometry: serving crops with it and training cuts canvases with it.
    """
    return int(round((length - size) / 2.0))


def center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """torchvision ``CenterCrop`` offsets; pads with zeros if the image is smaller than ``size``."""
    h, w = rgb.shape[:2]
    if h < size or w < size:
        pad_h, pad_w = max(size - h, 0), max(size - w, 0)
        rgb = np.pad(rgb, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
        h, w = rgb.shape[:2]
    top, left = center_offset(h, size), center_offset(w, size)
    return rgb[top : top + size, left : left + size]


def classifier_crop(rgb: np.ndarray, preset: Preset, full_size: tuple[int, int] | None = None) -> np.ndarray:
    """The classifier input: resize, centre crop, HWC -> CHW uint8 of shape (3, crop, crop).

    ``full_size``: see :func:`resize_shorter` (for ``rgb`` from :func:`decode_scaled`).
    """
    crop = center_crop(resize_shorter(rgb, preset.resize, preset.interpolation, full_size), preset.crop)
    return np.ascontiguousarray(crop.transpose(2, 0, 1))


def patch_grid(patches: int, height: int, width: int) -> tuple[int, int]:
    """Rows and columns of the patch grid, following the image's aspect ratio."""
    cols = max(1, min(patches, math.ceil(math.sqrt(patches * width / height))))
    rows = math.ceil(patches / cols)
    return rows, cols


def iqa_patches(rgb: np.ndarray, patches: int = DEFAULT_PATCHES, size: int = INPUT_SIZE) -> np.ndarray:
    """P patches of ``size`` x ``size`` at native resolution, centred on the cells of a grid.

    Images smaller than a patch are upscaled (bicubic) until the shorter side equals ``size``; the
    verdict still comes back. Deterministic: the same image always gives the same patches.

    Returns:
        uint8 array of shape (P, 3, size, size).
    """
    if patches < 1:
        raise ValueError(f"patches must be >= 1, got {patches}")
    h, w = rgb.shape[:2]
    if min(h, w) < size:
        rgb = resize_shorter(rgb, size, "bicubic")
        h, w = rgb.shape[:2]
    rows, cols = patch_grid(patches, h, w)
    out = np.empty((patches, 3, size, size), dtype=np.uint8)
    for i in range(patches):
        r, c = divmod(i, cols)
        cy, cx = (r + 0.5) * h / rows, (c + 0.5) * w / cols
        top = min(max(int(round(cy - size / 2)), 0), h - size)
        left = min(max(int(round(cx - size / 2)), 0), w - size)
        out[i] = rgb[top : top + size, left : left + size].transpose(2, 0, 1)
    return out


def quality_views(
    rgb: np.ndarray, preset: Preset, mode: str = PATCHES_MODE, patches: int = DEFAULT_PATCHES
) -> np.ndarray:
    """What the quality head's backbone features are computed on, as served in quality mode ``mode``.

    ``patches``: the P native-resolution patches (P, 3, 224, 224). ``shared``: the classifier's own input,
    the centre crop, as one view (1, 3, crop, crop). Training cuts its inputs with this function so the
    head learns the features it is served.
    """
    if mode == SHARED_MODE:
        return classifier_crop(rgb, preset)[None]
    if mode != PATCHES_MODE:
        raise ValueError(f"unknown quality mode {mode!r}; choose from {', '.join(QUALITY_MODES)}")
    return iqa_patches(rgb, patches)


def prepare(
    data: bytes, preset: Preset, patches: int = DEFAULT_PATCHES, limits: Limits = DEFAULT_LIMITS
) -> tuple[np.ndarray, np.ndarray]:
    """Encoded bytes -> (classifier input (3, 224, 224), IQA patches (P, 3, 224, 224)), both uint8."""
    rgb = decode_image(data, limits)
    return classifier_crop(rgb, preset), iqa_patches(rgb, patches)


def encode_image(image: np.ndarray | Image.Image, format: str = "PNG", quality: int = 95) -> bytes:
    """Encode an RGB array or PIL image to bytes (lossless PNG by default)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    kwargs = {"quality": quality} if format.upper() in ("JPEG", "WEBP") else {}
    img.save(buf, format=format, **kwargs)
    return buf.getvalue()


@dataclass(frozen=True)
class PreprocessSettings:
    """What the preprocess step needs: the backbone's preset, the patch count, the input limits and the
    quality mode (in ``shared`` mode no patches are cut: the classifier's pass gives the quality features)."""

    preset: Preset
    patches: int
    limits: Limits = DEFAULT_LIMITS
    backbone: str = ""
    quality_features: str = PATCHES_MODE
    # Shared mode needs the classifier crop only: decode JPEGs at reduced DCT scale (decode_scaled).
    reduced_decode: bool = True

    @property
    def shared(self) -> bool:
        return self.quality_features == SHARED_MODE

    def to_parameters(self) -> dict[str, str]:
        p = self.preset
        return {
            keys.BACKBONE: self.backbone,
            keys.QUALITY_FEATURES: self.quality_features,
            keys.REDUCED_DECODE: keys.flag(self.reduced_decode),
            keys.PATCHES: str(self.patches),
            keys.RESIZE: str(p.resize),
            keys.CROP: str(p.crop),
            keys.INTERPOLATION: p.interpolation,
            keys.MEAN: ",".join(repr(x) for x in p.mean),
            keys.STD: ",".join(repr(x) for x in p.std),
            keys.MAX_BYTES: str(self.limits.max_bytes),
            keys.MAX_PIXELS: str(self.limits.max_pixels),
            keys.MAX_SIDE: str(self.limits.max_side),
            keys.MAX_ASPECT: repr(self.limits.max_aspect),
        }

    @classmethod
    def from_parameters(cls, params: Parameters | Mapping[str, str]) -> PreprocessSettings:
        p = params if isinstance(params, Parameters) else Parameters(params)
        base, limits = Preset(), DEFAULT_LIMITS
        preset = Preset(
            resize=p.int(keys.RESIZE, base.resize),
            crop=p.int(keys.CROP, base.crop),
            mean=p.floats(keys.MEAN, base.mean),  # type: ignore[arg-type]
            std=p.floats(keys.STD, base.std),  # type: ignore[arg-type]
            interpolation=p.str(keys.INTERPOLATION, base.interpolation),
        )
        return cls(
            preset=preset,
            patches=p.int(keys.PATCHES),
            limits=Limits(
                max_bytes=p.int(keys.MAX_BYTES, limits.max_bytes),
                max_pixels=p.int(keys.MAX_PIXELS, limits.max_pixels),
                max_side=p.int(keys.MAX_SIDE, limits.max_side),
                max_aspect=p.float(keys.MAX_ASPECT, limits.max_aspect),
            ),
            backbone=p.str(keys.BACKBONE, cls.backbone),
            quality_features=p.str(keys.QUALITY_FEATURES, cls.quality_features),
            reduced_decode=p.bool(keys.REDUCED_DECODE, cls.reduced_decode),
        )

    def prepare(self, data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
        """One encoded image -> (classifier input [3, 224, 224], patches [P, 3, 224, 224] or None in
        shared mode), uint8."""
        if self.shared:
            if not self.reduced_decode:
                return classifier_crop(decode_image(data, self.limits), self.preset), None
            rgb, full = decode_scaled(data, REDUCED_DECODE_MARGIN * self.preset.resize, self.limits)
            return classifier_crop(rgb, self.preset, full), None
        return prepare(data, self.preset, self.patches, self.limits)

    def prepare_batch(self, images: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray | None]:
        """Encoded images -> stacked inputs (patches None in shared mode). Raises :class:`BadImageError` on
        the first bad one."""
        pairs = [self.prepare(data) for data in images]
        crops = np.stack([c for c, _ in pairs])
        return crops, None if self.shared else np.stack([q for _, q in pairs])
