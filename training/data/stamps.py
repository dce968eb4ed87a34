"""Object photos from Debian's ``tuxpaint-stamps-default``: which stamps are photographs.

The package holds about 800 PNG stamps cut out on a transparent background; some are photographs
(animals, food, instruments, tools, vehicles), the rest drawings. The rule (:func:`is_photograph`):

- a stamp under a ``cartoon/`` folder is a drawing (the package's own sorting), and
- a stamp is a photograph when fewer than :data:`FLAT_MAX` of its horizontally adjacent opaque pixel
  pairs have exactly the same colour (:func:`flat_fraction`, measured on a copy shrunk to at most
  :data:`STAT_SIDE` px). Drawings are flat-shaded: large areas of one colour. Camera noise and texture
  make neighbours of a photograph differ, even in photographs stored with a 256-colour palette.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fitguard.preprocess import decode_rgba

STAMP_PACKAGE = "tuxpaint-stamps-default"
STAMP_DIR = Path("usr/share/tuxpaint/stamps")
FLAT_MAX = 0.4
STAT_SIDE = 400


@dataclass(frozen=True)
class Stamp:
    """One stamp of the package.

    Attributes:
        id: path under the stamps folder without ``.png`` (``animals/mammals/cats/tiger``).
        file: path of the PNG inside the package.
        description: the English description (first line of the stamp's ``.txt``), or "".
        flat: :func:`flat_fraction` of the stamp.
        photograph: :func:`is_photograph` of it.
    """

    id: str
    file: str
    description: str
    flat: float
    photograph: bool


def load_rgba(path: str | Path, max_side: int | None = None) -> Image.Image:
    """A stamp as RGBA, shrunk (premultiplied alpha, so no dark fringe) to ``max_side`` if given."""
    rgba = decode_rgba(Path(path).read_bytes())
    if max_side is not None and max(rgba.size) > max_side:
        rgba.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgba


def flat_fraction(rgba: np.ndarray) -> float:
    """Share of horizontally adjacent fully opaque pixel pairs with exactly the same RGB."""
    opaque = rgba[..., 3] == 255
    both = opaque[:, 1:] & opaque[:, :-1]
    same = np.all(rgba[:, 1:, :3] == rgba[:, :-1, :3], axis=-1) & both
    return float(same.sum() / max(int(both.sum()), 1))


def is_photograph(stamp_id: str, flat: float) -> bool:
    """The photograph rule (module docstring)."""
    return "cartoon" not in Path(stamp_id).parts and flat < FLAT_MAX


def description(png: Path) -> str:
    """The English description from ``<stamp>.txt`` ("A Sumatran tiger."), or "" without one."""
    txt = png.with_suffix(".txt")
    if not txt.is_file():
        return ""
    first = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    return first[0].strip() if first and "=" not in first[0] else ""


def read_stamp(root: Path, png: Path) -> Stamp:
    """Measure one stamp (``root`` = the unpacked package)."""
    stamp_id = png.relative_to(root / STAMP_DIR).with_suffix("").as_posix()
    flat = flat_fraction(np.asarray(load_rgba(png, STAT_SIDE)))
    return Stamp(
        stamp_id, png.relative_to(root).as_posix(), description(png), flat, is_photograph(stamp_id, flat)
    )


def list_stamps(root: Path, workers: int = 2) -> list[Stamp]:
    """Every stamp of the unpacked package, measured (in ``workers`` processes), sorted by id."""
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    pngs = sorted((root / STAMP_DIR).rglob("*.png"))
    if workers <= 1:
        return [read_stamp(root, p) for p in pngs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(partial(read_stamp, root), pngs, chunksize=16))
