"""A corpus of hostile and unusual inputs, generated in code (deterministic, nothing downloaded).

Each :class:`BadInput` is a payload for the ensemble's IMAGE tensor plus what the server must do with it:
``"verdict"`` (a valid if odd image: the answer must come back), ``"error"`` (the request must fail with a
clear reason) or ``"either"`` (a damaged file a decoder may legitimately repair or refuse). Tensor-level abuse
(wrong datatype, shape, batch size) is in :func:`tensor_abuse_cases`, since it bypasses the image bytes.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, PngImagePlugin

Expect = Literal["verdict", "error", "either"]


@dataclass(frozen=True)
class BadInput:
    name: str
    payload: bytes
    expect: Expect
    why: str


def _save(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _photo(rng: np.random.Generator, height: int = 96, width: int = 128) -> np.ndarray:
    """A smooth, photo-like RGB image (gradients plus mild noise) that codecs treat like a photo."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=2)
    rgb += rng.normal(0, 8, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_header_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, followed by one tiny IDAT.

    Decoding it would need width*height*3 bytes (7.5 GB for the default); a safe server refuses it from
    the header alone.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def png_real_bomb(side: int = 9000) -> bytes:
    """A *valid* bilevel PNG of side x side pixels (81 M for 9000): tens of kB that decode to 243 MB RGB."""
    return _save(Image.new("1", (side, side), 0), "PNG", optimize=False)


def gif_header_bomb() -> bytes:
    """A GIF logical screen of 65535 x 65535 with a 1x1 frame."""
    small = _save(Image.new("P", (1, 1), 0), "GIF")
    return small[:6] + struct.pack("<HH", 65535, 65535) + small[10:]


def bmp_bad_header() -> bytes:
    """A BMP whose info header claims a 2^30-pixel-wide image and 1 byte of pixel data."""
    body = struct.pack("<IiiHHIIiiII", 40, 1 << 30, 1, 1, 24, 0, 0, 2835, 2835, 0, 0)
    header = b"BM" + struct.pack("<IHHI", 14 + len(body) + 1, 0, 0, 14 + len(body))
    return header + body + b"\x00"


def _corrupt(data: bytes, rng: np.random.Generator, start_fraction: float = 0.3, count: int = 64) -> bytes:
    buf = bytearray(data)
    start = int(len(buf) * start_fraction)
    for pos in rng.integers(start, len(buf) - 4, size=count):
        buf[pos] = int(rng.integers(0, 256))
    return bytes(buf)


def _exif_rotated_jpeg(rgb: np.ndarray) -> bytes:
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    return _save(img, "JPEG", exif=exif.tobytes(), quality=90)


def _huge_comment_jpeg(rgb: np.ndarray, megabytes: int = 2) -> bytes:
    """A JPEG carrying ``megabytes`` of COM segments (each at most 65533 bytes) before the scan."""
    jpeg = _save(Image.fromarray(rgb), "JPEG", quality=90)
    chunk = b"x" * 65533
    segments = b"".join(
        b"\xff\xfe" + struct.pack(">H", len(chunk) + 2) + chunk for _ in range(megabytes * 16)
    )
    return jpeg[:2] + segments + jpeg[2:]


def _huge_text_png(rgb: np.ndarray) -> bytes:
    """A PNG with 8 MB of text chunks: beyond Pillow's per-chunk limit, so decoding may refuse it."""
    info = PngImagePlugin.PngInfo()
    for i in range(4):
        info.add_text(f"comment{i}", "y" * (2 * 1024 * 1024))
    return _save(Image.fromarray(rgb), "PNG", pnginfo=info)


def _garbage_exif_jpeg(rgb: np.ndarray) -> bytes:
    jpeg = _save(Image.fromarray(rgb), "JPEG", quality=90)
    payload = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + b"\xff" * 200
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _animated_gif(rng: np.random.Generator) -> bytes:
    frames = [Image.fromarray(_photo(rng, 64, 64)) for _ in range(3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)


def _zip_of(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("photo.png", data)
    return buf.getvalue()


def bad_inputs(seed: int = 0) -> list[BadInput]:
    """The corpus, in a fixed order. Every entry has a distinct name."""
    rng = np.random.default_rng(seed)
    rgb = _photo(rng)
    img = Image.fromarray(rgb)
    jpeg = _save(img, "JPEG", quality=90)
    png = _save(img, "PNG")
    gray16 = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    palette = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0

    cases: list[tuple[str, Callable[[], bytes], Expect, str]] = [
        # Not images at all.
        ("empty", lambda: b"", "error", "no bytes"),
        ("single_zero_byte", lambda: b"\x00", "error", "one byte"),
        ("random_bytes", lambda: rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "error", "noise"),
        ("plain_text", lambda: b"This is not an image, it is a sentence.\n" * 20, "error", "text"),
        (
            "html",
            lambda: b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
            "error",
            "html",
        ),
        ("json", lambda: b'{"image": "chelsea.jpg", "label": 281}', "error", "json"),
        (
            "svg",
            lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9e9" height="9e9"/>',
            "error",
            "vector",
        ),
        ("pdf_header", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n%%EOF", "error", "pdf"),
        ("zip_archive", lambda: _zip_of(png), "error", "a PNG inside a zip"),
        ("gzip_png", lambda: gzip.compress(png, mtime=0), "error", "a gzipped PNG"),
        # Damaged images.
        ("jpeg_header_only", lambda: jpeg[:20], "error", "SOI and JFIF only"),
        ("truncated_jpeg", lambda: jpeg[: len(jpeg) // 2], "either", "half the entropy-coded data"),
        ("truncated_png", lambda: png[: len(png) // 2], "error", "half the IDAT stream"),
        ("corrupted_jpeg", lambda: _corrupt(jpeg, rng), "either", "64 random bytes in the scan"),
        ("corrupted_png", lambda: _corrupt(png, rng), "error", "64 random bytes in IDAT (CRC fails)"),
        ("png_bad_crc", lambda: png[:29] + b"\x00\x00\x00\x00" + png[33:], "error", "IHDR CRC zeroed"),
        ("png_signature_only", lambda: png[:8], "error", "8-byte signature"),
        # Bombs and absurd sizes.
        ("png_header_bomb_50000", png_header_bomb, "error", "header claims 50000x50000"),
        ("png_real_bomb_9000", png_real_bomb, "error", "valid 9000x9000 bilevel PNG, 81 Mpx"),
        ("gif_header_bomb", gif_header_bomb, "error", "logical screen 65535x65535"),
        ("bmp_bad_header", bmp_bad_header, "error", "BMP claims 2^30 pixels wide"),
        (
            "wide_20000x5",
            lambda: _save(Image.new("RGB", (20000, 5), (90, 60, 30)), "PNG"),
            "error",
            "aspect 4000",
        ),
        (
            "tall_10x1000",
            lambda: _save(Image.new("RGB", (10, 1000), (90, 60, 30)), "PNG"),
            "error",
            "aspect 100",
        ),
        # Valid but unusual images: the verdict must come back.
        ("one_pixel", lambda: _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "verdict", "1x1"),
        ("png_16bit_gray", lambda: _save(Image.fromarray(gray16), "PNG"), "verdict", "I;16"),
        ("tiff_float32", lambda: _save(img.convert("L").convert("F"), "TIFF"), "verdict", "mode F"),
        ("cmyk_jpeg", lambda: _save(img.convert("CMYK"), "JPEG", quality=90), "verdict", "Adobe CMYK"),
        ("palette_png_transparency", lambda: _save(palette, "PNG"), "verdict", "P with tRNS"),
        ("animated_gif", lambda: _animated_gif(rng), "verdict", "3 frames"),
        ("exif_rotated_jpeg", lambda: _exif_rotated_jpeg(rgb), "verdict", "orientation 6"),
        ("garbage_exif_jpeg", lambda: _garbage_exif_jpeg(rgb), "verdict", "broken APP1"),
        ("huge_comment_jpeg", lambda: _huge_comment_jpeg(rgb), "verdict", "2 MB of COM segments"),
        ("huge_text_png", lambda: _huge_text_png(rgb), "either", "8 MB of tEXt chunks"),
        ("webp", lambda: _save(img, "WEBP", quality=80), "verdict", "lossy WebP"),
        ("webp_lossless_alpha", lambda: _save(img.convert("RGBA"), "WEBP", lossless=True), "verdict", "RGBA"),
        ("tiff_lzw", lambda: _save(img, "TIFF", compression="tiff_lzw"), "verdict", "LZW TIFF"),
        ("bmp", lambda: _save(img, "BMP"), "verdict", "24-bit BMP"),
        ("grayscale_jpeg", lambda: _save(img.convert("L"), "JPEG", quality=90), "verdict", "mode L"),
        ("la_png", lambda: _save(img.convert("LA"), "PNG"), "verdict", "gray + alpha"),
        (
            "rgba_transparent_png",
            lambda: _save(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG"),
            "verdict",
            "alpha 0",
        ),
        ("bilevel_png", lambda: _save(img.convert("1"), "PNG"), "verdict", "mode 1"),
        ("ico", lambda: _save(img, "ICO", sizes=[(64, 64)]), "either", "Windows icon"),
    ]
    out = [BadInput(name, make(), expect, why) for name, make, expect, why in cases]
    assert len({c.name for c in out}) == len(out)
    return out


@dataclass(frozen=True)
class TensorAbuse:
    """A request that breaks the tensor contract itself: sent straight to the ensemble with tritonclient."""

    name: str
    why: str


def tensor_abuse_cases() -> list[TensorAbuse]:
    return [
        TensorAbuse("fp32_to_image", "FP32 tensor where BYTES is declared"),
        TensorAbuse("uint8_to_image", "UINT8 pixels where encoded bytes are declared"),
        TensorAbuse("wrong_shape", "IMAGE of shape [1, 2] instead of [1, 1]"),
        TensorAbuse("oversized_batch", "batch of max_batch_size + 1"),
        TensorAbuse("empty_batch", "batch of 0"),
        TensorAbuse("missing_input", "no IMAGE input"),
        TensorAbuse("unknown_input", "an input the model does not declare"),
        TensorAbuse("unknown_output", "asks for an output the model does not have"),
        TensorAbuse("unknown_model", "a model name the server does not serve"),
    ]
