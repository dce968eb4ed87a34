"""What every group shares: the group record, names, cache keys, canvases and predictions.

Every image of every group is a square RGB uint8 "canvas" whose side is the backbone preset's resize
size. Serving preprocessing then gives exactly what the experiments assume: the classifier input is a
plain centre crop of the canvas, cut by :func:`fitguard.preprocess.center_offset` as the server cuts it
(no resampling that would blur a perturbation away), and :func:`fitguard.preprocess.iqa_patches` cuts its
patches from the canvas at native resolution.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from fitguard.preprocess import center_crop, center_offset, resize_shorter

if TYPE_CHECKING:  # torch is imported inside functions so this module stays light to import
    from fitguard.backbones import Backbone

# The group names: cache files, report keys and the detector's recorded recipe use these strings.
ORIGINALS = "originals"
DISTORTED = "distorted"
ADVERSARIAL = "adversarial"
FOOL_GD = "fool_gd"
FOOL_EV = "fool_ev"
GROUPS: tuple[str, ...] = (ORIGINALS, DISTORTED, ADVERSARIAL, FOOL_GD, FOOL_EV)
UNFIT_GROUPS: tuple[str, ...] = (ADVERSARIAL, DISTORTED, FOOL_EV, FOOL_GD)
LABELLED_GROUPS: tuple[str, ...] = (ADVERSARIAL, DISTORTED)  # unfit groups whose images keep a class
FOOLING_GROUPS: tuple[str, ...] = (FOOL_GD, FOOL_EV)
NO_LABEL = -1


@dataclass
class ImageGroup:
    """Images of one group with what the evaluation needs to know about each.

    Attributes:
        name: one of :data:`GROUPS`.
        images: uint8 [N, S, S, 3] canvases.
        labels: int64 [N] reference ImageNet class; :data:`NO_LABEL` for fooling images.
        pairs: int64 [N] index of the original it derives from (an original's own index); -1 for none.
        sources: int64 [N] index of the source photo (views of one photo share it); -1 for none.
        tags: str [N] what made the image (view name, distortion kind, ``uap``, target class).
        levels: int64 [N] distortion level 1..5, 0 otherwise.
        meta: how the group was made, and measurements taken while making it (fooling rate, timings).
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    pairs: np.ndarray
    sources: np.ndarray
    tags: np.ndarray
    levels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray | Sequence[int]) -> ImageGroup:
        index = np.asarray(index, dtype=np.int64)
        return ImageGroup(
            self.name,
            self.images[index],
            self.labels[index],
            self.pairs[index],
            self.sources[index],
            self.tags[index],
            self.levels[index],
            dict(self.meta),
        )

    def save(self, path: str | Path) -> None:
        np.savez(
            path,
            images=self.images,
            labels=self.labels,
            pairs=self.pairs,
            sources=self.sources,
            tags=self.tags.astype(str),
            levels=self.levels,
            name=self.name,
            meta=json.dumps(self.meta),
        )

    @classmethod
    def load(cls, path: str | Path) -> ImageGroup:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                str(z["name"]),
                z["images"],
                z["labels"],
                z["pairs"],
                z["sources"],
                z["tags"],
                z["levels"],
                json.loads(str(z["meta"])),
            )


def make_group(
    name: str,
    images: np.ndarray,
    labels: Iterable[int],
    pairs: Iterable[int],
    sources: Iterable[int],
    tags: Iterable[str],
    levels: Iterable[int] | None = None,
    meta: dict[str, Any] | None = None,
) -> ImageGroup:
    n = len(images)
    return ImageGroup(
        name,
        np.asarray(images, dtype=np.uint8).reshape(n, *np.shape(images)[1:]),
        np.asarray(list(labels), dtype=np.int64).reshape(n),
        np.asarray(list(pairs), dtype=np.int64).reshape(n),
        np.asarray(list(sources), dtype=np.int64).reshape(n),
        np.asarray(list(tags), dtype=str).reshape(n),
        np.zeros(n, np.int64) if levels is None else np.asarray(list(levels), dtype=np.int64).reshape(n),
        meta or {},
    )


@dataclass(frozen=True)
class GroupConfig:
    """Sizes and budgets; the defaults fit the offline build (package photos, CPU)."""

    views: int = 12
    labels_file: str | None = None
    limit: int | None = None
    # Enough to fit the perturbation on every original of the offline set (docs/evaluation.md says why);
    # a labelled folder uses a photo-spread subset.
    uap_fit_images: int = 64
    uap_max_iter: int = 4
    distort_sources: int | None = 24
    fool_gd_count: int = 16
    fool_gd_steps: int = 20
    fool_ev_count: int = 16
    fool_ev_generations: int = 20
    seed: int = 0


def stable_key(*parts: Any) -> str:
    """A short hash of JSON-able parts and numpy arrays (their bytes), for cache file names."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str((part.dtype, part.shape)).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def cached_path(cache: Path | None, name: str, key: str) -> Path | None:
    if cache is None:
        return None
    path = Path(cache) / "groups" / f"{name}-{key}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def canvas(rgb: np.ndarray, side: int) -> np.ndarray:
    """The serving view of a photo as a side x side canvas: resize the shorter side, centre crop."""
    return np.ascontiguousarray(center_crop(resize_shorter(rgb, side), side))


def classifier_batch(images: np.ndarray, crop: int) -> np.ndarray:
    """Canvases [N, S, S, 3] -> classifier inputs [N, 3, crop, crop] (serving's centre crop)."""
    o = center_offset(images.shape[1], crop)
    return np.ascontiguousarray(images[:, o : o + crop, o : o + crop].transpose(0, 3, 1, 2))


def predict_logits(
    backbone: Backbone, images: np.ndarray, batch_size: int = 32, desc: str | None = None
) -> np.ndarray:
    """Classifier logits [N, 1000] float32 for canvases [N, S, S, 3], through serving's crop, on the
    feature graph (:mod:`fitguard.feature_graph`)."""
    from fitguard.feature_graph import feature_graph

    graph = feature_graph(backbone)
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=desc is None, leave=False):
        out.append(graph(classifier_batch(images[i : i + batch_size], backbone.preset.crop)).logits)
    return np.concatenate(out) if out else np.zeros((0, graph.num_classes), np.float32)


def float_logits_module(backbone: Backbone) -> Any:
    """Float [0, 1] NCHW -> logits: the classifier as ART's PyTorchClassifier wants it."""
    import torch
    from torch import nn

    from fitguard.backbones import UInt8Normalize

    class FloatLogits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.normalize = UInt8Normalize(backbone.preset)
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.backbone(self.normalize(x * 255.0))

    return FloatLogits().eval()


def spread_subset(sources: np.ndarray, count: int | None) -> np.ndarray:
    """Up to ``count`` indices taken round-robin over sources (photos), so every photo is represented."""
    if count is None or count >= len(sources):
        return np.arange(len(sources))
    by_source: dict[int, list[int]] = {}
    for i, s in enumerate(sources.tolist()):
        by_source.setdefault(s, []).append(i)
    order: list[int] = []
    queues = [list(v) for _, v in sorted(by_source.items())]
    while len(order) < count:
        for q in queues:
            if q and len(order) < count:
                order.append(q.pop(0))
    return np.asarray(sorted(order), dtype=np.int64)
