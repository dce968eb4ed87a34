"""Class labels: ImageNet-1k's (class index -> WordNet id -> readable name, shipped with the package), the
default repository's labels file; a repository's own labels file, which the served steps read; and the
:class:`ClassTable` that reads a class a person wrote (a name, an index, an ImageNet WordNet id)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property, lru_cache
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


@dataclass(frozen=True)
class ClassTable:
    """The classes of one repository, for reading the classes people write in labels files and folder
    names: a 0-based index, a class name (where no other class has it), and for ImageNet's classes a
    WordNet id (``n02123045``), the way the default repository's users name them."""

    names: tuple[str, ...]

    @classmethod
    def of_repository(cls, repository: str | Path) -> ClassTable:
        return cls(tuple(repository_labels(repository)))

    @classmethod
    def imagenet(cls) -> ClassTable:
        return cls(tuple(c.name for c in imagenet_classes()))

    @cached_property
    def is_imagenet(self) -> bool:
        return self.names == tuple(c.name for c in imagenet_classes())

    @cached_property
    def _lookup(self) -> dict[str, int]:
        """Every name no other class has, and ImageNet's WordNet ids where the classes are ImageNet's."""
        counts = Counter(self.names)
        found = {name: i for i, name in enumerate(self.names) if counts[name] == 1}
        if self.is_imagenet:
            found |= {c.wnid: c.index for c in imagenet_classes()}
        return found

    def __len__(self) -> int:
        return len(self.names)

    def index(self, token: str) -> int | None:
        """The class ``token`` names, or None."""
        if token.isdigit():
            return int(token) if int(token) < len(self.names) else None
        return self._lookup.get(token)

    def describe(self, *more: str) -> str:
        """How to name a class of this table, for error messages; ``more`` adds other accepted words."""
        ways = [f"an index 0-{len(self) - 1}"]
        if self.is_imagenet:
            what, ways = "an ImageNet class", [*ways, "a WordNet id such as n02123045"]
        else:
            shown = ", ".join(repr(n) for n in self.names[:3]) + (", ..." if len(self.names) > 3 else "")
            what, ways = "a class of the repository's labels file", [f"a name such as {shown}", *ways]
        ways += more
        return f"{what} ({', '.join(ways[:-1])}, or {ways[-1]})"
