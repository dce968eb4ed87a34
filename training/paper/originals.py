"""Originals: photos the classifier gets right, as canvases.

With an ImageNet labels file or class-folder layout, one canvas per image, kept when top-1 equals its
label. For unlabelled folders and the package-shipped photos, several views of each photo (square crops
at a few scales and positions, some mirrored) whose top-1 equals the photo's own clean prediction, which
serves as the reference label.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fitguard.training.data.imagenet import load_labelled_folder
from fitguard.training.image_groups import (
    ORIGINALS,
    GroupConfig,
    ImageGroup,
    cached_path,
    canvas,
    make_group,
    predict_logits,
    stable_key,
)

if TYPE_CHECKING:
    from fitguard.backbones import Backbone

# Candidate views of one photo: (scale of the shorter side, centre x, centre y as a fraction of the free
# range, mirrored). The first is the serving view of the whole photo; it gives the reference label.
VIEW_BOXES: tuple[tuple[float, float, float, bool], ...] = (
    (1.0, 0.5, 0.5, False),
    (1.0, 0.5, 0.5, True),
    (0.85, 0.5, 0.5, False),
    (0.85, 0.0, 0.0, True),
    (0.85, 1.0, 1.0, False),
    (0.85, 0.0, 1.0, False),
    (0.85, 1.0, 0.0, True),
    (0.7, 0.5, 0.5, True),
    (0.7, 0.2, 0.5, False),
    (0.7, 0.8, 0.5, True),
    (0.7, 0.5, 0.2, False),
    (0.7, 0.5, 0.8, True),
    (0.55, 0.5, 0.5, False),
    (0.55, 0.3, 0.3, True),
    (0.55, 0.7, 0.7, False),
    (0.55, 0.3, 0.7, True),
)


def candidate_views(rgb: np.ndarray, side: int, count: int) -> list[tuple[str, np.ndarray]]:
    """The first ``count`` views of :data:`VIEW_BOXES`: square crops resized to side x side."""
    h, w = rgb.shape[:2]
    out = []
    for i, (scale, fx, fy, mirror) in enumerate(VIEW_BOXES[:count]):
        crop = max(1, int(round(scale * min(h, w))))
        left, top = int(round(fx * (w - crop))), int(round(fy * (h - crop)))
        view = rgb[top : top + crop, left : left + crop]
        img = Image.fromarray(np.ascontiguousarray(view)).resize((side, side), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        out.append((f"v{i}", np.ascontiguousarray(arr[:, ::-1] if mirror else arr)))
    return out


def _candidates(
    photos: dict[str, np.ndarray], names: list[str], *, labels: dict[str, int] | None, side: int, views: int
) -> tuple[list[np.ndarray], list[str], list[int]]:
    """Every candidate canvas with its tag (``photo/view``) and its photo's index in ``names``."""
    imgs, tags, sources = [], [], []
    for s, name in enumerate(names):
        for view, img in (
            [("v0", canvas(photos[name], side))] if labels else candidate_views(photos[name], side, views)
        ):
            imgs.append(img)
            tags.append(f"{name}/{view}")
            sources.append(s)
    return imgs, tags, sources


def _reference(
    top1: np.ndarray, sources: list[int], names: list[str], labels: dict[str, int] | None
) -> tuple[np.ndarray, str]:
    """Each candidate's reference label, and how it was chosen."""
    if labels:
        return np.asarray([labels[n] for n in names])[np.asarray(sources)], "labels"
    first = {s: i for i, s in reversed(list(enumerate(sources)))}  # the whole-photo view v0
    return np.asarray([top1[first[s]] for s in sources]), "reference = clean top-1 of the whole photo"


def originals_group(
    backbone: Backbone,
    photos: dict[str, np.ndarray],
    labels: dict[str, int] | None = None,
    views: int = 12,
    cache: Path | None = None,
) -> ImageGroup:
    """Originals the classifier gets right.

    With ``labels`` (ImageNet): one canvas per photo, kept when top-1 equals its label. Without: up to
    ``views`` views per photo, the photo's reference label is the top-1 of its whole-photo view, and
    views with that same top-1 are kept.
    """
    side = backbone.preset.resize
    names = sorted(photos)
    key = stable_key(
        "originals/1",
        backbone.name,
        backbone.weights_id,
        side,
        views,
        labels,
        [(n, photos[n].shape, stable_key(photos[n])) for n in names],
    )
    path = cached_path(cache, "originals", key)
    if path is not None and path.exists():
        return ImageGroup.load(path)
    t0 = time.perf_counter()
    imgs, tags, sources = _candidates(photos, names, labels=labels, side=side, views=views)
    stack = np.stack(imgs)
    top1 = predict_logits(backbone, stack, desc="originals: predict").argmax(1)
    sources_arr = np.asarray(sources)
    reference, mode = _reference(top1, sources, names, labels)
    keep = np.flatnonzero(top1 == reference)
    meta = {
        "mode": mode,
        "photos": len(names),
        "candidates": len(stack),
        "kept": len(keep),
        "kept_photos": int(len(set(sources_arr[keep].tolist()))),
        "views_per_photo": 1 if labels else views,
        "canvas": side,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    group = make_group(
        ORIGINALS,
        stack[keep],
        reference[keep],
        range(len(keep)),
        sources_arr[keep],
        np.asarray(tags)[keep],
        meta=meta,
    )
    if path is not None:
        group.save(path)
    return group


def load_originals(
    backbone: Backbone, images: str | Path | None, config: GroupConfig, cache: Path | None
) -> ImageGroup:
    """Originals from ``images`` (labelled ImageNet-style folder, or any folder) or the package photos."""
    from fitguard.photos import load_photos

    labelled = None
    if images is not None:
        labelled = load_labelled_folder(images, config.labels_file, config.limit, config.seed)
    if labelled is not None:
        photos, labels = labelled
        return originals_group(backbone, photos, labels, cache=cache)
    return originals_group(backbone, load_photos(images), None, config.views, cache=cache)
