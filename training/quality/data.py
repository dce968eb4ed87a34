"""The quality model's labelled sets as lists of :class:`~fitguard.training.data.iqa_folders.IQAItem`:
TID2013, KADID-10k (:mod:`fitguard.training.data.iqa_folders`) and the synthetic sets made here.

Every item carries a quality score in [0, 1] (higher is better) and the name of its reference image, so
train/test splits can keep all versions of one scene on the same side. Images load lazily: a dataset
of thousands of images is never held in memory at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fitguard.training.data.distortions import DISTORTIONS, LEVELS, distort
from fitguard.training.data.iqa_folders import IQAItem, load_kadid10k, load_tid2013
from fitguard.training.quality.vsi_labels import Job, vsi_labels, write_shipped

log = logging.getLogger(__name__)

QUALITY_SETS: tuple[str, ...] = ("scenes", "synthetic", "tid2013", "kadid10k")
# Sets made here by distorting pristine scenes, labelled by a full-reference metric: "scenes" is the
# offline scenes set (fitguard.training.data), "synthetic" the package photos or a user's folder.
SYNTHETIC_SETS: tuple[str, ...] = ("scenes", "synthetic")

# The label metric, chosen by its published SRCC with human scores on TID2013: VSI, the highest of piq's
# full-reference metrics there, and the most learnable labels here (docs/iqa.md, The label metric): MDSI
# saturates for strong noise, so its levels 3..5 barely differ.
SYNTHETIC_METRIC = "vsi"
SYNTHETIC_PER_VIEW = 12
# Labelled images per synthetic set, whatever the number of scenes: the compute goes to distinct scenes
# rather than to more views of few scenes (default_views).
SYNTHETIC_IMAGES = 6240
# VSI of distorted views lies above VSI_FLOOR but for a few (docs/iqa.md shows its spread); the fixed map
# below spreads [VSI_FLOOR, 1] over [0, 1] the same way for every photo set, putting the median near
# TID2013's median MOS / 7.
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
    (:mod:`fitguard.training.quality.evaluate`).

    Items regenerate their image on ``load()`` (distortions are seeded), so nothing large stays in
    memory. The split group is the photo, not the view: crops of one photo share content.
    """

    jobs = synthetic_jobs(
        photos,
        views=views,
        size=size,
        kinds=kinds,
        levels=levels,
        per_view=per_view,
        seed=seed,
        ladder=ladder,
    )
    raws = vsi_labels(jobs, progress=progress)
    items: list[IQAItem] = []
    for name, views_specs, photo_raw in zip(photos, jobs, raws, strict=True):
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


def synthetic_jobs(
    photos: dict[str, np.ndarray],
    *,
    views: int | None = None,
    size: int = 224,
    kinds: Sequence[str] = DISTORTIONS,
    levels: Sequence[int] = LEVELS,
    per_view: int | None = SYNTHETIC_PER_VIEW,
    seed: int = 0,
    ladder: bool = True,
) -> list[Job]:
    """Per photo (in ``photos`` order), its views with the distortions each gets (see :func:`synthetic`)."""
    views = default_views(len(photos), per_view or len(kinds) * len(levels)) if views is None else views
    pairs = [(k, lvl) for k in kinds for lvl in levels]
    per_view = len(pairs) if per_view is None else max(1, min(per_view, len(pairs)))
    all_views = photo_views(photos, views, size, seed)
    return [
        _photo_jobs(name, crops, p, pairs=pairs, per_view=per_view, seed=seed, ladder=ladder)
        for p, (name, crops) in enumerate(all_views.items())
    ]


def ship_scene_labels() -> int:
    """Label the offline scenes set as ``load_quality_set("scenes")`` does and write the shipped file
    (:data:`fitguard.training.quality.vsi_labels.SHIPPED`); returns the number of views."""
    jobs = synthetic_jobs(scene_photos())
    return write_shipped(jobs, vsi_labels(jobs, progress=True))


def _photo_jobs(
    name: str,
    crops: list[np.ndarray],
    p: int,
    *,
    pairs: list[tuple[str, int]],
    per_view: int,
    seed: int,
    ladder: bool,
) -> list[tuple[np.ndarray, list[tuple[str, int, int]]]]:
    """Photo ``p``'s views, each with the (type, level, distortion seed) triples it gets."""
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
    return views_specs


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
    """The offline scenes set (:mod:`fitguard.training.data`, prepared once from Debian packages)."""
    from fitguard.training.data import load_dataset as load_set

    return {item.name: item.image() for item in load_set("scenes")}


def load_quality_set(
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
            from fitguard.photos import load_photos

            scenes = load_photos(photos)
        return synthetic(scenes, views=views, per_view=per_view, seed=seed, progress=progress)
    if dataset in ("tid2013", "kadid10k"):
        if root is None:
            raise ValueError(
                f"--root is required for dataset {dataset!r} (the folder in its published layout)"
            )
        return load_tid2013(root) if dataset == "tid2013" else load_kadid10k(root)
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(QUALITY_SETS)}")
