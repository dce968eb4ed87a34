"""The real sources, through the project's existing loaders: an ImageNet-style labelled folder, TID2013,
KADID-10k, and the photos shipped with scikit-image and scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fitguard.training.data.items import Dataset, Item


def _const(rgb: np.ndarray):
    return lambda: rgb


def load_package_photos() -> Dataset:
    """The 10 package photos (``fitguard.photos``): one group each, class unknown."""
    from fitguard.photos import package_photos

    items = [Item(name, "photos", name, None, _const(rgb)) for name, rgb in package_photos().items()]
    return Dataset("photos", items, {"loader": "fitguard.photos.package_photos"})


def load_imagenet_folder(
    root: str | Path, labels_file: str | Path | None = None, limit: int | None = None, seed: int = 0
) -> Dataset:
    """ImageNet-style labelled images (``training.paper.groups.load_labelled_folder``): one image, one class.

    Raises:
        ValueError: the folder has no labels (no labels file, no ``<wnid>/`` folders).
    """
    from fitguard.training.data.imagenet import load_labelled_folder

    loaded = load_labelled_folder(root, labels_file, limit=limit, seed=seed)
    if loaded is None:
        raise ValueError(f"{root} holds no labelled images (expected val.txt/labels.txt or <wnid>/ folders)")
    images, labels = loaded
    items = [Item(n, "imagenet", n, frozenset({labels[n]}), _const(images[n])) for n in sorted(images)]
    return Dataset(
        "imagenet", items, {"root": str(root), "loader": "training.paper.groups.load_labelled_folder"}
    )


def load_iqa(name: str, root: str | Path) -> Dataset:
    """TID2013 or KADID-10k (``training.quality.data``): group = reference image, score = normalised MOS."""
    from fitguard.training.data.iqa_folders import load_kadid10k, load_tid2013

    loaded = load_tid2013(root) if name == "tid2013" else load_kadid10k(root)
    items = [
        Item(
            it.name,
            name,
            it.reference,
            None,
            it.load,
            score=it.score,
            meta={"distortion": it.distortion, "level": it.level, "raw": it.raw},
        )
        for it in loaded
    ]
    return Dataset(name, items, {"root": str(root), "loader": f"training.data.iqa_folders.load_{name}"})
