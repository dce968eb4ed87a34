"""The validating step ahead of the DALI preprocess step: refuse a bad image alone, before DALI sees it.

DALI's Triton backend runs the merged requests of a dynamic batch in one pipeline call, and one bad
sample fails them all. So in a DALI repository the ``preprocess`` step is a light Python step that makes
the Python step's checks without decoding pixels (:func:`check_header`: size limit, a signature
allow-list of the formats DALI decodes, the header parsed by Pillow, the dimension limits) and answers a
bad image with its own per-request error. What passes goes to the batching DALI model; a failure there
(a corrupt body behind a valid header fails every sample of its batch) is retried alone on the
non-batching twin, so that only the request at fault fails (:func:`refusal`). The Triton adapter is
``fitguard/export/dali_check_model.py``; this module needs only Pillow and is tested without Triton.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from fitguard.preprocess import DEFAULT_LIMITS, BadImageError, Limits, _check_size

# Leading bytes of the formats DALI's image decoder reads (its CPU and nvJPEG paths alike), with the
# name Pillow gives the format. GIF is not among them (the Python step takes its first frame).
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    *((f"P{k}".encode(), "PPM") for k in range(1, 7)),
)
_WEBP = (b"RIFF", b"WEBP")  # RIFF, 4 bytes of length, WEBP
FORMATS = ("JPEG", "PNG", "WebP", "BMP", "TIFF", "PNM")
# Triton's words for a request it refused to protect latency: passed on as they are, never as a bad image.
_NOT_THE_IMAGE = ("exceeds maximum queue size", "request timeout expired", "is not ready", "unknown model")


@dataclass(frozen=True)
class Header:
    """What the header says: Pillow's format name and the stored size (before EXIF orientation)."""

    format: str
    width: int
    height: int


def sniff(data: bytes) -> str | None:
    """The format the leading bytes announce, if it is one DALI decodes; else None."""
    if data[:4] == _WEBP[0] and data[8:12] == _WEBP[1]:
        return "WEBP"
    for magic, name in SIGNATURES:
        if data.startswith(magic):
            return name
    return None


def check_header(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Header:
    """Refuse what the Python step refuses before decoding, reading the header only.

    The limits are the Python step's and its messages the same words; an EXIF quarter turn does not
    change any of them (pixels, longer side, aspect), so the stored size is checked.

    Raises:
        BadImageError: empty or oversized input, a format DALI does not decode, an unreadable header,
            or a size out of the limits.
    """
    if not data:
        raise BadImageError("empty input: no image bytes")
    if len(data) > limits.max_bytes:
        raise BadImageError(f"input is {len(data)} bytes, more than the limit of {limits.max_bytes}")
    announced = sniff(data)
    if announced is None and data.startswith(b"GIF8"):
        raise BadImageError(f"GIF is not among the DALI step's formats ({', '.join(FORMATS)})")
    if announced is None:
        raise BadImageError(f"not a recognised image format ({', '.join(FORMATS)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[announced])  # parses the header, decodes nothing
            size = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(f"decompression bomb refused: {exc}") from None
    except Image.UnidentifiedImageError:
        raise BadImageError(f"corrupt image header: not a readable {announced} file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImageError(f"corrupt image header: {exc}") from None
    _check_size(size, limits)
    return Header(announced, size[0], size[1])


def refusal(message: str) -> tuple[str, bool]:
    """The answer to a request whose image DALI failed even alone: (message, is it the image's fault).

    A refusal to protect latency or a model that is not ready is the server's, passed on in Triton's
    words so that clients retry it; anything else failed on this image alone, so the image is bad.
    """
    lowered = message.lower()
    if any(marker in lowered for marker in _NOT_THE_IMAGE):
        return message, False
    return f"bad image: the DALI step could not decode it ({message})", True
