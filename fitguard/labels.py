"""Class labels: ImageNet-1k's (class index -> WordNet id -> readable name, shipped with the package), the
default repository's labels file; and a repository's own labels file, which the served steps read."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from fitguard.contract import ENSEMBLE
from fitguard.repository import LABELS_NAME


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    name: str


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    text = resources.files("fitguard").joinpath("data/imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = (line.split("\t") for line in text.splitlines() if line and not line.startswith("#"))
    classes = tuple(ImageNetClass(int(i), wnid, name) for i, wnid, name in rows)
    assert [c.index for c in classes] == list(range(len(classes)))
    return classes


def label(index: int) -> str:
    return imagenet_classes()[index].name


def wnid_to_index() -> dict[str, int]:
    return {c.wnid: c.index for c in imagenet_classes()}


def labels_text() -> str:
    """One name per line, the format of Triton's classification-extension labels file."""
    return "".join(f"{c.name}\n" for c in imagenet_classes())


def repository_labels(repository: str | Path) -> list[str]:
    """The class names of a repository: its ensemble's labels file (one name a line), else ImageNet's."""
    path = Path(repository) / ENSEMBLE / LABELS_NAME
    if not path.is_file():
        return [c.name for c in imagenet_classes()]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
