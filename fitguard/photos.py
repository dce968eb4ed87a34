"""Reference photos: the colour photos that ship with scikit-image and scikit-learn, or a user's folder.

No download is needed for the package-shipped set, so training and tests run offline.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fitguard.preprocess import BadImageError, decode_file, image_files

log = logging.getLogger(__name__)

# skimage.data colour photographs (graphics such as colorwheel/logo and grey images are left out;
# "cat" is the same picture as "chelsea").
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle",  # left view of skimage.data.stereo_motorcycle()
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)
SKLEARN_PHOTOS: tuple[str, ...] = ("china", "flower")
PACKAGE_PHOTOS: tuple[str, ...] = SKIMAGE_PHOTOS + SKLEARN_PHOTOS
# The ImageNet classes a right answer may name, for the photos that show an ImageNet object; ImageNet-1k
# has no class for an astronaut, so every answer there is wrong.
PHOTO_LABELS: dict[str, frozenset[int]] = {
    "chelsea": frozenset({281, 282, 283, 284, 285}),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": frozenset({504, 967, 968}),  # coffee mug, espresso, cup
    "rocket": frozenset({657, 744, 812}),  # missile, projectile, space shuttle
    "motorcycle": frozenset({665, 670}),  # moped, motor scooter
    "astronaut": frozenset(),
}


def package_photos(names: tuple[str, ...] | list[str] | None = None) -> dict[str, np.ndarray]:
    """The package-shipped colour photos (name -> RGB uint8 HWC), in :data:`PACKAGE_PHOTOS` order."""
    names = tuple(PACKAGE_PHOTOS if names is None else names)
    unknown = sorted(set(names) - set(PACKAGE_PHOTOS))
    if unknown:
        raise ValueError(f"unknown package photos {unknown}; known: {', '.join(PACKAGE_PHOTOS)}")
    out: dict[str, np.ndarray] = {}
    if any(n in SKIMAGE_PHOTOS for n in names):
        from skimage import data

        for name in names:
            if name == "motorcycle":
                out[name] = data.stereo_motorcycle()[0]
            elif name in SKIMAGE_PHOTOS:
                out[name] = getattr(data, name)()
    if any(n in SKLEARN_PHOTOS for n in names):
        from sklearn.datasets import load_sample_image

        for name in names:
            if name in SKLEARN_PHOTOS:
                out[name] = load_sample_image(f"{name}.jpg")
    return {n: np.ascontiguousarray(_as_rgb(out[n]), dtype=np.uint8) for n in names}


def _as_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr[:, :, :3]


def folder_photos(folder: str | Path) -> dict[str, np.ndarray]:
    """Every image under ``folder`` (recursively), decoded to RGB (grey, palette, alpha are converted).

    Names are paths relative to ``folder`` without the suffix; files that do not decode are skipped
    with a warning.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"photo folder {root} does not exist")
    out: dict[str, np.ndarray] = {}
    for path in image_files(root):
        try:
            rgb = decode_file(path)
        except BadImageError as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        out[path.relative_to(root).with_suffix("").as_posix()] = rgb
    if not out:
        raise FileNotFoundError(f"no readable images under {root}")
    return out


def load_photos(folder: str | Path | None = None) -> dict[str, np.ndarray]:
    """Reference photos: the package-shipped colour photos, or every image under ``folder``."""
    return package_photos() if folder is None else folder_photos(folder)


def sample_photos(folder: str | Path | None = None, limit: int | None = None) -> tuple[list[np.ndarray], str]:
    """Test photos and where they came from: ``folder``'s, else the package photos, else (an install without
    scikit-image, such as a client's or a bare GPU machine's) smooth synthetic pictures of photo sizes."""
    if folder is not None:
        photos = list(folder_photos(folder).values())[:limit]
        return photos, f"{len(photos)} files from {folder}"
    try:
        return list(package_photos().values())[:limit], "package photos (scikit-image, scikit-learn)"
    except ImportError:
        return _synthetic_photos()[:limit], "synthetic pictures (no photo folder, no scikit-image)"


def _synthetic_photos() -> list[np.ndarray]:
    """Blocky colour fields at common photo sizes: they decode and crop like photos, deterministically."""
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((480, 640), (600, 400), (512, 512), (375, 500)):
        base = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        out.append(np.kron(base, np.ones((16, 16, 1), np.uint8))[:h, :w])
    return out
