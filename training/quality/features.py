"""Backbone quality features of IQA patches, computed once and cached on disk.

The frozen backbone is by far the most expensive part of training the quality head, and the same
patches come back for every split, seed and rerun. Each patch's feature vector
(:meth:`fitguard.backbones.Backbone.quality_features`) is stored under

    <cache_dir>/<backbone>-<sha(backbone, trunk weights, preset, features)>/<sha256(patch)[:2]>/<sha256>.npy

The patch hash fixes the image content and the patch position in it, so a changed image, patch count or
trunk never reads stale features, and identical patches (a view exactly one patch large) are computed
once. The namespace names the trunk's weights by content (:func:`fitguard.feature_graph.trunk_id`): a
classifier fine-tuned in its head alone reads the features the network it came from already computed.
Patches are normalised exactly as the exported graph does (``UInt8Normalize``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fitguard.cache import cache_root
from fitguard.preprocess import iqa_patches, quality_views

if TYPE_CHECKING:
    from fitguard.backbones import Backbone


def feature_cache_dir() -> Path:
    """``features/`` under :func:`fitguard.cache.cache_root`."""
    return cache_root() / "features"


def _identity(backbone: Backbone) -> dict[str, object]:
    """Everything that changes a patch's features."""
    from fitguard.backbones import QUALITY_FEATURES
    from fitguard.feature_graph import graph_stamp

    return {
        "graph": graph_stamp(backbone, trunk_only=True),  # a fine-tuned head shares its trunk's features
        "backbone": backbone.name,
        "preset": backbone.preset.to_dict(),
        "features": QUALITY_FEATURES,
    }


def backbone_key(backbone: Backbone) -> str:
    """Names the cache namespace: anything that changes features changes this key."""
    ident = json.dumps(_identity(backbone), sort_keys=True)
    return f"{backbone.name}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def patch_key(patch: np.ndarray) -> str:
    """SHA-256 of a (3, S, S) uint8 patch's pixels and shape."""
    h = hashlib.sha256(str(patch.shape).encode())
    h.update(np.ascontiguousarray(patch).tobytes())
    return h.hexdigest()


class FeatureCache:
    """Feature vectors on disk, one ``.npy`` per patch, in a namespace per backbone/weights/preset."""

    def __init__(self, root: str | Path, backbone: Backbone) -> None:
        self.dir = Path(root) / backbone_key(backbone)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.feature_dim = backbone.quality_dim
        meta = self.dir / "backbone.json"
        if not meta.exists():
            meta.write_text(json.dumps(_identity(backbone), indent=2))

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        try:
            vec = np.load(path)
        except (FileNotFoundError, ValueError, OSError):
            return None
        return vec if vec.shape == (self.feature_dim,) else None

    def put(self, key: str, vec: np.ndarray) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        # Write then rename: an interrupted run never leaves a truncated file under a valid name.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.asarray(vec, dtype=np.float32))
        os.replace(tmp, path)


def _extractor(backbone: Backbone) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 patches [B, 3, S, S] -> quality features [B, D] float32, from the feature graph on ONNX
    Runtime (:mod:`fitguard.feature_graph`), normalised as the served graph does."""
    from fitguard.feature_graph import feature_graph

    graph = feature_graph(backbone)
    return lambda patches: graph(patches).quality_features


class _RowFiller:
    """Fills one [P, D] row per image from the cache, and computes what the cache lacks in batches; a
    patch already waiting for its features (the same pixels seen again) is computed once."""

    def __init__(
        self, cache: FeatureCache, extract: Callable[[np.ndarray], np.ndarray], batch_size: int
    ) -> None:
        self.cache, self.extract, self.batch_size = cache, extract, batch_size
        self.rows: list[np.ndarray] = []
        # patch key -> (image, patch) slots waiting for it
        self.pending: dict[str, list[tuple[int, int]]] = {}
        self.batch: list[tuple[str, np.ndarray]] = []

    def add_image(self, cut: Iterable[np.ndarray], patches: int) -> np.ndarray:
        """Queues one image's patches; returns its mask, False for a patch identical to an earlier one."""
        i = len(self.rows)
        self.rows.append(np.empty((patches, self.cache.feature_dim), dtype=np.float32))
        seen: set[str] = set()
        mask = np.ones(patches, dtype=bool)
        for j, patch in enumerate(cut):
            key = patch_key(patch)
            mask[j] = key not in seen
            seen.add(key)
            if key in self.pending:
                self.pending[key].append((i, j))
                continue
            vec = self.cache.get(key)
            if vec is not None:
                self.rows[i][j] = vec
                continue
            self.pending[key] = [(i, j)]
            self.batch.append((key, patch))
            if len(self.batch) >= self.batch_size:
                self.flush()
        return mask

    def flush(self) -> None:
        if not self.batch:
            return
        feats = self.extract(np.stack([p for _, p in self.batch]))
        for (key, _), vec in zip(self.batch, feats, strict=True):
            self.cache.put(key, vec)
            for i, j in self.pending.pop(key):
                self.rows[i][j] = vec
        self.batch.clear()


def patch_features(
    images: Iterable[np.ndarray] | Iterable[Callable[[], np.ndarray]],
    backbone: Backbone,
    patches: int,
    cache_dir: str | Path | None = None,
    total: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
    mode: str = "patches",
) -> tuple[np.ndarray, np.ndarray]:
    """Features of the ``patches`` IQA patches of every image, from the cache where present.

    In ``shared`` quality ``mode`` the one view of an image is the classifier's centre crop (``patches``
    must then be 1): the features the classifier's pass gives the served quality step.

    Args:
        images: RGB uint8 (H, W, 3) arrays, or callables returning one (loaded one at a time).
        backbone: frozen backbone; its ``features`` gives [N, D].
        patches: P, as :func:`fitguard.preprocess.iqa_patches` cuts them.
        cache_dir: cache root (default :func:`feature_cache_dir`).
        total: number of images, for the progress bar when ``images`` has no ``len``.

    Returns:
        ``(features, unique)``: float32 [N, P, D], and a bool [N, P] mask that is False for a patch
        identical to an earlier patch of the same image (so training can skip duplicates).
    """
    from tqdm.auto import tqdm

    if mode != "patches" and patches != 1:
        raise ValueError(f"{mode} quality mode has one view per image, not {patches}")
    cache = FeatureCache(cache_dir if cache_dir is not None else feature_cache_dir(), backbone)
    filler = _RowFiller(cache, _extractor(backbone), batch_size)
    uniq: list[np.ndarray] = []
    if total is None and hasattr(images, "__len__"):
        total = len(images)  # type: ignore[arg-type]
    bar = tqdm(images, total=total, desc=f"features ({backbone.name})", unit="img", disable=not progress)
    for image in bar:
        rgb = image() if callable(image) else image
        cut = iqa_patches(rgb, patches) if mode == "patches" else quality_views(rgb, backbone.preset, mode)
        uniq.append(filler.add_image(cut, patches))
    filler.flush()
    bar.close()
    if not filler.rows:
        return np.zeros((0, patches, backbone.quality_dim), np.float32), np.zeros((0, patches), bool)
    return np.stack(filler.rows), np.stack(uniq)
