"""A team's labelled photos (``--labelled``): the data its classifier's detector is fitted and judged on.

Either a folder per class, ``photos/<class name>/...`` (every class name one of ``classes.txt``), or a
labels file as ``fitguard calibrate`` reads it, one image a line, paths relative to the file's folder::

    dents/a.jpg      dent                # a class name of classes.txt, or its line index (0-based)
    b 2.jpg<TAB>scratch<TAB>part-7       # tabs when a name has spaces; an optional group

Each item's ``labels`` is its class index in the team's classes, its ``group`` the photo (or the group
column): a split keeps a group on one side. Photos are listed by :func:`fitguard.preprocess.image_files`
and decoded by :func:`fitguard.preprocess.decode_file`, as everywhere else.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from fitguard.preprocess import decode_file, image_files
from fitguard.training.data.items import Dataset, Item

SOURCE = "labelled"
# Holding out needs groups on both sides of the fit / held-out split, and each side needs at least two
# groups (the detector's threshold and the report read more than one photo).
MIN_GROUPS = 4
_COMMENT = re.compile(r"\s+#.*$")  # a comment after whitespace: file names may hold '#'


class LabelledError(ValueError):
    """A labelled set that cannot be used: one line that says what to change."""


def _class_index(token: str, classes: Sequence[str], where: str) -> int:
    if token in classes:
        return classes.index(token)
    if token.isdigit() and int(token) < len(classes):
        return int(token)
    raise LabelledError(
        f"{where}: {token!r} is not a class of the classes file (a name or index 0-{len(classes) - 1})"
    )


def _item(path: Path, root: Path, index: int, group: str, classes: Sequence[str]) -> Item:
    name = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    return Item(
        name=name,
        source=SOURCE,
        group=group,
        labels=frozenset({index}),
        load=lambda p=path: decode_file(p),
        meta={"class": classes[index], "file": str(path)},
    )


def _from_folders(root: Path, classes: Sequence[str]) -> list[Item]:
    items = []
    for path in image_files(root):
        parts = path.relative_to(root).parts
        if len(parts) < 2:
            raise LabelledError(f"{path}: not in a class folder (put it in {root}/<class name>/)")
        if parts[0] not in classes:
            raise LabelledError(f"{root / parts[0]}: folder {parts[0]!r} is not a class of the classes file")
        rel = path.relative_to(root).as_posix()
        items.append(_item(path, root, classes.index(parts[0]), rel, classes))
    return items


def _from_file(labels: Path, classes: Sequence[str]) -> list[Item]:
    root, items = labels.parent, []
    for number, raw in enumerate(labels.read_text(encoding="utf-8").splitlines(), 1):
        line = _COMMENT.sub("", raw).strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        where = f"{labels}:{number}"
        if len(fields) not in (2, 3):
            raise LabelledError(f"{where}: expected '<image file> <class> [<group>]', got {raw.strip()!r}")
        path = root / fields[0]
        if not path.is_file():
            raise LabelledError(f"{where}: no image {path}")
        group = fields[2] if len(fields) == 3 else fields[0]
        items.append(_item(path, root, _class_index(fields[1], classes, where), group, classes))
    return items


def load_labelled(path: str | Path, classes: Sequence[str]) -> Dataset:
    """The labelled photos at ``path`` (a folder per class, or a labels file) in ``classes``' indices.

    Raises:
        LabelledError: a missing path, a folder or label that is no class, a class with no photos, or
            fewer than :data:`MIN_GROUPS` groups (too few to hold any out).
    """
    path, classes = Path(path), list(classes)
    if not path.exists():
        raise LabelledError(f"{path}: no such labelled folder or labels file")
    items = _from_folders(path, classes) if path.is_dir() else _from_file(path, classes)
    counts = [0] * len(classes)
    for it in items:
        counts[next(iter(it.labels or ()))] += 1
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        more = f" (+{len(empty) - 4} more)" if len(empty) > 4 else ""
        raise LabelledError(f"{path}: no photos of class {', '.join(map(repr, empty[:4]))}{more}")
    groups = len({it.group for it in items})
    if groups < MIN_GROUPS:
        raise LabelledError(
            f"{path}: {groups} photo group(s); holding out needs at least {MIN_GROUPS} "
            f"({MIN_GROUPS // 2} to fit the detector, {MIN_GROUPS // 2} held out)"
        )
    return Dataset(SOURCE, items, {"labelled": str(path), "classes": len(classes)})


def labelled_digest(dataset: Dataset) -> str:
    """A labelled set by content (each photo's name, class, group and bytes): a build's detector stamp."""
    digest = hashlib.sha256()
    for it in dataset:
        digest.update(f"{it.name}\t{sorted(it.labels or ())}\t{it.group}\n".encode())
        digest.update(Path(it.meta["file"]).read_bytes())
    return digest.hexdigest()[:16]
