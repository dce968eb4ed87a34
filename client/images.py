"""Turn whatever the caller holds into the encoded bytes the server decodes.

Files and bytes travel as they are (the server sees the original JPEG, EXIF and all); PIL images and
arrays are encoded losslessly as PNG, so the client never changes what the quality model judges.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

import numpy as np
from PIL import Image

from fitguard.preprocess import encode_image, image_files

from .errors import BadImage

ImageInput: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray
)


def source_name(image: Any) -> str | None:
    """A readable label for the input: the path, or the file object's name."""
    if isinstance(image, str | os.PathLike):
        return os.fspath(image)
    name = getattr(image, "name", None) if not isinstance(image, np.ndarray) else None
    if isinstance(name, str):
        return name
    filename = getattr(image, "filename", None)  # PIL images opened from a file
    return filename if isinstance(filename, str) and filename else None


def to_bytes(image: ImageInput) -> bytes:
    """Encoded image bytes for one input.

    Raises:
        BadImage: a path that cannot be read, or an array that is not an image.
        TypeError: an input of an unsupported type (a programming error, never retried or collected).
    """
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        try:
            return Path(image).read_bytes()
        except OSError as exc:
            raise BadImage(f"cannot read file: {exc.strerror or exc}", os.fspath(image)) from None
    if isinstance(image, Image.Image):
        return encode_image(image)
    if isinstance(image, np.ndarray):
        return encode_image(_check_array(image))
    if isinstance(image, io.TextIOBase):
        raise TypeError("open image files in binary mode ('rb')")
    read = getattr(image, "read", None)
    if callable(read):
        data = read()
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"file object returned {type(data).__name__}, expected bytes; open it with 'rb'")
        return bytes(data)
    raise TypeError(
        f"cannot classify a {type(image).__name__}: pass a path, bytes, a binary file, a PIL image or an "
        "HWC uint8 numpy array"
    )


def _check_array(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8:
        raise BadImage(f"array dtype is {array.dtype}, expected uint8 (HWC, values 0-255)")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
        return array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array
    raise BadImage(f"array shape is {array.shape}, expected (H, W), (H, W, 3) or (H, W, 4)")


def expand_paths(paths: list[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, folders expanded recursively to their image files (sorted, stable order)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(image_files(p))
        else:
            out.append(p)
    return out
