"""IQA datasets as lists of :class:`IQAItem`: TID2013, KADID-10k (published layouts) and a synthetic set.

Every item carries a quality score in [0, 1] (higher is better) and the name of its reference image, so
train/test splits can keep all versions of one scene on the same side. Images load lazily: a dataset
of thousands of images is never held in memory at once.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fitguard.preprocess import decode_image
from fitguard.training.distortions import DISTORTIONS, LEVELS, distort
from fitguard.training.vsi_labels import vsi_labels

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("scenes", "synthetic", "tid2013", "kadid10k")
# Sets made here by distorting pristine scenes, labelled by a full-reference metric: "scenes" is the
# offline scenes set (fitguard.training.datasets), "synthetic" the package photos or a user's folder.
SYNTHETIC_SETS: tuple[str, ...] = ("scenes", "synthetic")

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
    return lambda: decode_image(path.read_bytes())


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

# The label metric, chosen by its published SRCC with human scores on TID2013: VSI, the highest of piq's
# full-reference metrics there, and the most learnable labels here (docs/iqa.md, The label metric): MDSI
# saturates for strong noise, so its levels 3..5 barely differ.
SYNTHETIC_METRIC = "vsi"
SYNTHETIC_PER_VIEW = 12
# Labelled images per synthetic set, whatever the number of scenes: the compute goes to distinct scenes
# rather than to more views of few scenes (default_views).
SYNTHETIC_IMAGES = 6240
# VSI of distorted views spans about [0.6, 1] (docs/iqa.md); the fixed map below spreads it over [0, 1] the
# same way for every photo set, putting the median near TID2013's median MOS / 7.
VSI_FLOOR, VSI_GAMMA = 0.6, 2.0


def vsi_to_score(vsi: np.ndarray | float) -> np.ndarray:
    """VSI -> [0, 1]: ``clip((VSI - 0.6) / 0.4, 0, 1) ** 2``; monotone, so ranks are unchanged."""
    x = np.clip((np.asarray(vsi, dtype=np.float64) - VSI_FLOOR) / (1.0 - VSI_FLOOR), 0.0, 1.0)
    return x**VSI_GAMMA


def default_views(photos: int, per_view: int = SYNTHETIC_PER_VIEW) -> int:
    """Views per photo that keep a synthetic set of ``photos`` photos near :data:`SYNTHETIC_IMAGES` images.

    View 0 carries the full ladder (every type and level, plus the clean view), the others ``per_view``
    distortions plus the clean view (see :func:`synthetic`).
    """
    ladder = len(DISTORTIONS) * len(LEVELS) + 1
    return max(2, 1 + round((SYNTHETIC_IMAGES / max(1, photos) - ladder) / (per_view + 1)))


def photo_views(
    photos: dict[str, np.ndarray], views: int, size: int, seed: int = 0
) -> dict[str, list[np.ndarray]]:
    """``views`` crops of ``size`` x ``size`` per photo, so few photos still give varied content.

    View 0 is the whole scene: the photo shrunk (area-averaged) until its shorter side is ``size``, then
    centre-cropped. The others are random crops at a random scale between native and half (never below
    ``size``), mirrored half of the time. Shrinking a pristine photo keeps it pristine. Photos smaller
    than ``size`` are upscaled first.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    for name, rgb in photos.items():
        img = Image.fromarray(rgb)
        if min(img.size) < size:
            img = _scale(img, size / min(img.size), Image.Resampling.BICUBIC)
        crops = [_center(_scale(img, size / min(img.size), Image.Resampling.BOX), size)]
        for _ in range(views - 1):
            lo = size / min(img.size)
            scale = float(rng.uniform(max(0.5, lo), 1.0)) if lo < 1.0 else 1.0
            view = np.asarray(_scale(img, scale, Image.Resampling.BOX) if scale < 1.0 else img)
            h, w = view.shape[:2]
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            crop = view[top : top + size, left : left + size]
            crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
        out[name] = [np.ascontiguousarray(c, dtype=np.uint8) for c in crops]
    return out


def _scale(img: Image.Image, scale: float, resample: Image.Resampling) -> Image.Image:
    return img.resize((max(1, math.ceil(img.width * scale)), max(1, math.ceil(img.height * scale))), resample)


def _center(img: Image.Image, size: int) -> np.ndarray:
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def synthetic(
    photos: dict[str, np.ndarray],
    views: int | None = None,
    size: int = 224,
    kinds: Sequence[str] = DISTORTIONS,
    levels: Sequence[int] = LEVELS,
    per_view: int | None = SYNTHETIC_PER_VIEW,
    seed: int = 0,
    include_references: bool = True,
    ladder: bool = True,
    progress: bool = False,
) -> list[IQAItem]:
    """Distorted views of reference photos, each labelled with VSI against its undistorted view.

    Every photo gets every distortion type at every level: with ``per_view=None`` each view gets all of
    them; with ``per_view=k`` each view gets the next ``k`` of a seeded shuffle of the (type, level)
    pairs, so every ``len(kinds) * len(levels) / k`` views of a photo cover them all once. The latter
    buys many more views (content) for the same number of images. With ``include_references`` each view
    also appears undistorted, at score 1. With ``ladder`` view 0 (the whole scene) gets every type at
    every level: the full ladder of one content, on which the ordering and calibration checks run
    (:mod:`fitguard.training.iqa_eval`).

    Items regenerate their image on ``load()`` (distortions are seeded), so nothing large stays in
    memory. The split group is the photo, not the view: crops of one photo share content.
    """

    views = default_views(len(photos), per_view or len(kinds) * len(levels)) if views is None else views
    pairs = [(k, lvl) for k in kinds for lvl in levels]
    per_view = len(pairs) if per_view is None else max(1, min(per_view, len(pairs)))
    all_views = photo_views(photos, views, size, seed)
    jobs: list[list[tuple[np.ndarray, list[tuple[str, int, int]]]]] = []
    for p, (name, crops) in enumerate(all_views.items()):
        order = (
            np.random.default_rng([seed, p]).permutation(len(pairs))
            if per_view < len(pairs)
            else np.arange(len(pairs))
        )
        views_specs = []
        for v, crop in enumerate(crops):
            if ladder and v == 0:
                chosen = pairs
            else:
                start = (v - 1 if ladder else v) * per_view
                chosen = [pairs[order[(start + i) % len(pairs)]] for i in range(per_view)]
            views_specs.append((crop, [(k, lvl, _seed(seed, name, v)) for k, lvl in chosen]))
        jobs.append(views_specs)
    raws = vsi_labels(jobs, progress=progress)
    items: list[IQAItem] = []
    for name, views_specs, photo_raw in zip(all_views, jobs, raws, strict=True):
        for v, ((crop, specs), raw) in enumerate(zip(views_specs, photo_raw, strict=True)):
            view_name = f"{name}#{v}"
            for (k, lvl, s), value in zip(specs, raw, strict=True):
                loader = _distorted_loader(crop, k, lvl, s)
                score = float(vsi_to_score(value))
                items.append(
                    IQAItem(f"{view_name}/{k}/{lvl}", name, score, k, lvl, float(value), loader, view_name)
                )
            if include_references:
                clean = IQAItem(
                    f"{view_name}/reference", name, 1.0, "reference", 0, 1.0, _const(crop), view_name
                )
                items.append(clean)
    return items


def _seed(seed: int, name: str, view: int) -> int:
    import zlib

    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 31 + view) % (2**32)


def _distorted_loader(crop: np.ndarray, kind: str, level: int, seed: int) -> Callable[[], np.ndarray]:
    return lambda: distort(crop, kind, level, seed)


def _const(rgb: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: rgb


def label_name(dataset: str) -> str:
    """What a dataset's score is, for the metrics file."""
    if dataset in SYNTHETIC_SETS:
        return f"{SYNTHETIC_METRIC} against the reference view"
    return "mos/7" if dataset == "tid2013" else "(dmos-1)/4"


def scene_photos() -> dict[str, np.ndarray]:
    """The offline scenes set (:mod:`fitguard.training.datasets`, prepared once from Debian packages)."""
    from fitguard.training.datasets import load_dataset as load_set

    return {item.name: item.image() for item in load_set("scenes")}


def load_dataset(
    dataset: str,
    root: str | Path | None = None,
    photos: str | Path | None = None,
    views: int | None = None,
    per_view: int | None = SYNTHETIC_PER_VIEW,
    seed: int = 0,
    progress: bool = False,
) -> list[IQAItem]:
    """A dataset by name: ``tid2013`` / ``kadid10k`` from ``root``; ``scenes`` (the offline scenes set)
    or ``synthetic`` (``photos``: a folder, default the package photos) distorted and labelled here."""
    if dataset in SYNTHETIC_SETS:
        scenes = scene_photos() if dataset == "scenes" else None
        if scenes is None:
            from fitguard.training.photos import load_photos

            scenes = load_photos(photos)
        return synthetic(scenes, views=views, per_view=per_view, seed=seed, progress=progress)
    if dataset in ("tid2013", "kadid10k"):
        if root is None:
            raise ValueError(
                f"--root is required for dataset {dataset!r} (the folder in its published layout)"
            )
        return load_tid2013(root) if dataset == "tid2013" else load_kadid10k(root)
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
