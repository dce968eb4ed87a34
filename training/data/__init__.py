"""One interface to every data source: ``load_dataset(name)`` returns a :class:`Dataset` of :class:`Item`.

Prepared from Debian packages (fetched with ``apt-get download`` + ``dpkg -x`` into the data cache):

- ``scenes``: natural photographs (wallpaper packages + the package photos), one group per scene.
- ``objects``: photographed tuxpaint stamps composited onto scenes, labelled with the ImageNet classes
  their names stand for (WordNet); group = stamp.
- ``composites``: the same images grouped by their background scene (quality references).

Real sources, read from a user's folder (``root``): ``imagenet`` (labelled folder), ``tid2013``,
``kadid10k``; and ``photos``, the 10 package photos alone.

Every item has ``.image()`` (RGB uint8), ``.labels`` (acceptable class ids or None), ``.source`` and
``.group``; :func:`group_split` keeps each group on one side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fitguard.training.data.debian import PackageFetchError, default_data_dir, fetch_package
from fitguard.training.data.items import Dataset, Item
from fitguard.training.data.splits import group_folds, group_split

PREPARED: tuple[str, ...] = ("scenes", "objects", "composites")
REAL: tuple[str, ...] = ("imagenet", "tid2013", "kadid10k")
DATASETS: tuple[str, ...] = PREPARED + ("photos",) + REAL

__all__ = [
    "DATASETS",
    "PREPARED",
    "REAL",
    "Dataset",
    "Item",
    "PackageFetchError",
    "default_data_dir",
    "describe_dataset",
    "fetch_package",
    "group_folds",
    "group_split",
    "load_dataset",
    "prepare_all",
]


def load_dataset(
    name: str, root: str | Path | None = None, data_dir: str | Path | None = None, **kwargs: Any
) -> Dataset:
    """A dataset by name (see the module docstring); ``root`` is the folder of a real source."""
    if name == "scenes":
        from fitguard.training.data.scenes import load_scenes

        return load_scenes(data_dir, **kwargs)
    if name in ("objects", "composites"):
        from fitguard.training.data.objects import load_objects

        return load_objects(data_dir, group_by="stamp" if name == "objects" else "scene", **kwargs)
    if name == "photos":
        from fitguard.training.data.sources import load_package_photos

        return load_package_photos()
    if name in REAL:
        if root is None:
            raise ValueError(f"dataset {name!r} needs the folder that holds it (root / --root)")
        from fitguard.training.data import sources

        if name == "imagenet":
            return sources.load_imagenet_folder(root, **kwargs)
        return sources.load_iqa(name, root)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def prepare_all(data_dir: str | Path | None = None) -> dict[str, Path]:
    """Fetch the packages and prepare every derived set (cached); returns each set's folder."""
    from fitguard.training.data.objects import prepare_objects
    from fitguard.training.data.scenes import prepare_scenes

    return {"scenes": prepare_scenes(data_dir), "objects": prepare_objects(data_dir)}


def describe_dataset(dataset: Dataset) -> dict[str, Any]:
    """Counts and provenance of one set: images, distinct groups, classes, packages."""
    labelled = [it for it in dataset if it.labels]
    return {
        "name": dataset.name,
        "images": len(dataset),
        "groups": len(dataset.groups()),
        "labelled": len(labelled),
        "classes": len(dataset.classes()),
        **dataset.provenance,
    }
