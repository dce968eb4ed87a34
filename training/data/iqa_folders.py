"""TID2013 and KADID-10k in their published layouts, as lists of :class:`IQAItem`.

Every item carries a quality score in [0, 1] (higher is better) and the name of its reference image, so
train/test splits can keep all versions of one scene on the same side. Images load lazily.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fitguard.preprocess import decode_file

log = logging.getLogger(__name__)

# TID2013 MOS lies in [0, 9] by design and in [0.24, 7.21] in fact; the paper's 70 bins are 0.1 MOS wide,
# so MOS 0..7 maps onto [0, 1] (the few above 7 clip to 1).
TID2013_MOS_MAX = 7.0

TID2013_TYPES: tuple[str, ...] = (
    "additive_gaussian_noise",
    "color_noise",
    "spatially_correlated_noise",
    "masked_noise",
    "high_frequency_noise",
    "impulse_noise",
    "quantization_noise",
    "gaussian_blur",
    "image_denoising",
    "jpeg",
    "jpeg2000",
    "jpeg_transmission_errors",
    "jpeg2000_transmission_errors",
    "non_eccentricity_pattern_noise",
    "block_wise",
    "mean_shift",
    "contrast_change",
    "saturation_change",
    "multiplicative_noise",
    "comfort_noise",
    "lossy_compression_of_noisy_images",
    "color_quantization_with_dither",
    "chromatic_aberrations",
    "sparse_sampling_and_reconstruction",
)
KADID10K_TYPES: tuple[str, ...] = (
    "gaussian_blur",
    "lens_blur",
    "motion_blur",
    "color_diffusion",
    "color_shift",
    "color_quantization",
    "color_saturation_hsv",
    "color_saturation_lab",
    "jpeg2000",
    "jpeg",
    "white_noise",
    "color_noise",
    "impulse_noise",
    "multiplicative_noise",
    "denoise",
    "brighten",
    "darken",
    "mean_shift",
    "jitter",
    "non_eccentricity_patch",
    "pixelate",
    "quantization",
    "color_block",
    "high_sharpen",
    "contrast_change",
)


@dataclass(frozen=True)
class IQAItem:
    """One distorted (or pristine) image with its label.

    Attributes:
        name: unique within the dataset.
        reference: the scene it shows; splits never put one reference on both sides.
        score: quality in [0, 1], higher is better.
        distortion: distortion type ("reference" for a pristine image).
        level: distortion level (0 for a pristine image).
        raw: the label on the dataset's own scale (MOS, DMOS, metric value).
        view: the content shown, where a reference gives several (the synthetic set's crops); the
            images of one view differ only in their distortion. None: the reference is the view.
    """

    name: str
    reference: str
    score: float
    distortion: str
    level: int
    raw: float
    load: Callable[[], np.ndarray] = field(repr=False, compare=False)
    view: str | None = None


def _file_loader(path: Path) -> Callable[[], np.ndarray]:
    return lambda: decode_file(path)


def _index_files(folder: Path) -> dict[str, Path]:
    """Lower-cased file name -> path: TID2013 copies differ in the case of names (I01.BMP vs i01.bmp)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"expected folder {folder}")
    return {p.name.lower(): p for p in folder.iterdir() if p.is_file()}


def load_tid2013(root: str | Path) -> list[IQAItem]:
    """TID2013 in its published layout: ``mos_with_names.txt``, ``distorted_images/``,
    ``reference_images/``.

    ``mos_with_names.txt`` holds lines ``<MOS> <name>`` with names ``iXX_TT_L.bmp`` (reference XX,
    distortion type TT of 24, level L of 5). Scores are ``min(MOS, 7) / 7``.
    """
    root = Path(root)
    listing = root / "mos_with_names.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} not found: is {root} a TID2013 folder?")
    files = _index_files(root / "distorted_images")
    items: list[IQAItem] = []
    for lineno, line in enumerate(listing.read_text(encoding="latin-1").splitlines(), 1):
        if not line.strip():
            continue
        try:
            mos_text, name = line.split()
            mos = float(mos_text)
            stem = name.rsplit(".", 1)[0].lower()
            ref, dtype, level = stem.split("_")
            dtype_i, level_i = int(dtype), int(level)
        except ValueError:
            raise ValueError(f"{listing}:{lineno}: expected '<MOS> iXX_TT_L.bmp', got {line!r}") from None
        path = files.get(name.lower())
        if path is None:
            raise FileNotFoundError(f"{listing}:{lineno}: {name} missing from {root / 'distorted_images'}")
        kind = TID2013_TYPES[dtype_i - 1] if 1 <= dtype_i <= len(TID2013_TYPES) else f"type{dtype_i:02d}"
        score = min(max(mos, 0.0), TID2013_MOS_MAX) / TID2013_MOS_MAX
        items.append(IQAItem(stem, ref, score, kind, level_i, mos, _file_loader(path)))
    if not items:
        raise ValueError(f"{listing} lists no images")
    refs = _index_files(root / "reference_images") if (root / "reference_images").is_dir() else {}
    missing = sorted({it.reference for it in items} - {n.rsplit(".", 1)[0] for n in refs})
    if refs and missing:
        log.warning("TID2013 references without a file in reference_images/: %s", ", ".join(missing))
    return items


def load_kadid10k(root: str | Path) -> list[IQAItem]:
    """KADID-10k from its published layout: ``dmos.csv`` (dist_img, ref_img, dmos, var) and ``images/``.

    DMOS runs from 1 (worst) to 5 (best); scores are ``(dmos - 1) / 4``.
    """
    root = Path(root)
    listing = root / "dmos.csv"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} not found: is {root} a KADID-10k folder?")
    files = _index_files(root / "images")
    items: list[IQAItem] = []
    with listing.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"dist_img", "ref_img", "dmos"}
        if not need <= set(reader.fieldnames or ()):
            raise ValueError(f"{listing}: expected columns {sorted(need)}, got {reader.fieldnames}")
        for row in reader:
            name, ref = row["dist_img"].strip(), row["ref_img"].strip()
            dmos = float(row["dmos"])
            path = files.get(name.lower())
            if path is None:
                raise FileNotFoundError(f"{listing}: {name} missing from {root / 'images'}")
            stem = name.rsplit(".", 1)[0]
            parts = stem.split("_")
            try:
                dtype_i, level_i = int(parts[1]), int(parts[2])
            except (IndexError, ValueError):
                dtype_i, level_i = 0, 0
            kind = (
                KADID10K_TYPES[dtype_i - 1] if 1 <= dtype_i <= len(KADID10K_TYPES) else f"type{dtype_i:02d}"
            )
            score = min(max((dmos - 1.0) / 4.0, 0.0), 1.0)
            items.append(IQAItem(stem, ref.rsplit(".", 1)[0], score, kind, level_i, dmos, _file_loader(path)))
    if not items:
        raise ValueError(f"{listing} lists no images")
    return items


# --------------------------------------------------------------------------------------------------
# Synthetic: distorted views of reference photos, labelled by a full-reference metric
# --------------------------------------------------------------------------------------------------
