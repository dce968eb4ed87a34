"""What every data source yields: :class:`Item` (one image and what is known about it) in a
:class:`Dataset`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Item:
    """One image of a dataset.

    Attributes:
        name: unique within its dataset.
        source: the dataset's name (``scenes``, ``objects``, ``tid2013``, ...).
        group: what a split must keep on one side (the stamp, scene or reference image shown).
        labels: acceptable ImageNet-1k class indices, or None where the right class is unknown.
        score: quality in [0, 1] (higher is better) where the source has one, else None.
        meta: provenance and how the image was made (package, file, licence, composite recipe).
    """

    name: str
    source: str
    group: str
    labels: frozenset[int] | None
    load: Callable[[], np.ndarray] = field(repr=False, compare=False)
    score: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def image(self) -> np.ndarray:
        """The image as RGB uint8 HWC (decoded or generated on each call; nothing is kept)."""
        return self.load()


@dataclass
class Dataset:
    """The items of one set, with where they came from (packages and versions, recipe, folder)."""

    name: str
    items: list[Item]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]

    def groups(self) -> list[str]:
        return sorted({it.group for it in self.items})

    def classes(self) -> set[int]:
        """Every ImageNet class some item accepts."""
        return {c for it in self.items if it.labels for c in it.labels}


def recipe_key(*parts: Any) -> str:
    """A short hash of JSON-able parts: derived sets live in a folder named after it."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


def write_folder_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """``manifest.json``, written last (through a temporary name) so its presence means complete."""
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(folder / "manifest.json")


def read_folder_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
