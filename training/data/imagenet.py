"""ImageNet-style labelled folders: a labels file (Caffe's ``val.txt``) or the class-folder layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fitguard.preprocess import image_files


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
    from fitguard.preprocess import decode_file

    root = Path(folder)
    if labels_file is None:
        labels_file = next((root / n for n in ("val.txt", "labels.txt") if (root / n).is_file()), None)
    files = image_files(root)
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
    images = {n: decode_file(by_name[n]) for n in tqdm(names, desc="read images", leave=False)}
    return images, {n: labels[n] for n in names}
