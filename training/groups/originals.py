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
from tqdm.auto import tqdm

from fitguard.preprocess import IMAGE_EXTENSIONS
from fitguard.training.groups.common import (
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


def photo_views(rgb: np.ndarray, side: int, count: int) -> list[tuple[str, np.ndarray]]:
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


def read_imagenet_labels(path: str | Path) -> dict[str, int]:
    """A labels file: ``<file name> <class>`` per line, class as a 0-based index or a wnid (Caffe's
    ``val.txt``, or any list in torchvision's sorted-wnid order). Keys are file names without suffix."""
    from fitguard.labels import wnid_to_index

    wnids = wnid_to_index()
    out: dict[str, int] = {}
    for line in Path(path).read_text().splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) < 2 or parts[0].startswith("#"):
            continue
        name, cls = parts[0], parts[1]
        index = wnids[cls] if cls in wnids else int(cls)
        out[Path(name).with_suffix("").as_posix()] = index
    return out


def load_labelled_folder(
    folder: str | Path, labels_file: str | Path | None = None, limit: int | None = None, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, int]] | None:
    """ImageNet-style labelled images, or None when ``folder`` has no labels.

    Labels come from ``labels_file`` (or ``folder/val.txt`` / ``folder/labels.txt`` if present), or
    from the class-folder layout (``<wnid>/<image>``). ``limit`` keeps a seeded random subset.
    """
    from fitguard.labels import wnid_to_index
    from fitguard.preprocess import decode_image

    root = Path(folder)
    if labels_file is None:
        labels_file = next((root / n for n in ("val.txt", "labels.txt") if (root / n).is_file()), None)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    wnids = wnid_to_index()
    labels: dict[str, int] = {}
    if labels_file is not None:
        table = read_imagenet_labels(labels_file)
        for p in files:
            rel = p.relative_to(root).with_suffix("").as_posix()
            key = rel if rel in table else p.stem
            if key in table:
                labels[rel] = table[key]
    else:
        for p in files:
            if p.parent != root and p.parent.name in wnids:
                labels[p.relative_to(root).with_suffix("").as_posix()] = wnids[p.parent.name]
    if not labels:
        return None
    names = sorted(labels)
    if limit is not None and limit < len(names):
        names = sorted(np.random.default_rng(seed).choice(names, size=limit, replace=False).tolist())
    by_name = {p.relative_to(root).with_suffix("").as_posix(): p for p in files}
    images = {n: decode_image(by_name[n].read_bytes()) for n in tqdm(names, desc="read images", leave=False)}
    return images, {n: labels[n] for n in names}


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
    imgs, tags, sources = [], [], []
    for s, name in enumerate(names):
        for view, img in (
            [("v0", canvas(photos[name], side))] if labels else photo_views(photos[name], side, views)
        ):
            imgs.append(img)
            tags.append(f"{name}/{view}")
            sources.append(s)
    stack = np.stack(imgs)
    top1 = predict_logits(backbone, stack, desc="originals: predict").argmax(1)
    sources_arr = np.asarray(sources)
    if labels:
        reference = np.asarray([labels[n] for n in names])[sources_arr]
        mode = "labels"
    else:
        first = {s: i for i, s in reversed(list(enumerate(sources)))}  # the whole-photo view v0
        reference = np.asarray([top1[first[s]] for s in sources])
        mode = "reference = clean top-1 of the whole photo"
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
    from fitguard.training.photos import load_photos

    labelled = None
    if images is not None:
        labelled = load_labelled_folder(images, config.labels_file, config.limit, config.seed)
    if labelled is not None:
        photos, labels = labelled
        return originals_group(backbone, photos, labels, cache=cache)
    return originals_group(backbone, load_photos(images), None, config.views, cache=cache)
