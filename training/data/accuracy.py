"""Clean accuracy of a backbone's classifier on a labelled set, through the server's preprocessing.

An answer is right when it is one of the item's acceptable classes (``Item.labels``): top-1 when the
first class is, top-5 when any of the first five is. Images go through
:func:`fitguard.preprocess.classifier_crop` with the backbone's preset (resize the shorter side,
centre crop), exactly as the preprocess model serves them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from fitguard.preprocess import classifier_crop
from fitguard.training.data.items import Dataset


def predict_top5(dataset: Dataset, backbone: str = "efficientnet_lite0", batch_size: int = 32) -> np.ndarray:
    """Top-5 class indices [N, 5] for every labelled item, in dataset order."""
    from fitguard.backbones import build_backbone
    from fitguard.feature_graph import feature_graph

    net = build_backbone(backbone)
    graph = feature_graph(net)
    items = [it for it in dataset if it.labels]
    out = []
    for start in range(0, len(items), batch_size):
        batch = np.stack(
            [classifier_crop(it.image(), net.preset) for it in items[start : start + batch_size]]
        )
        out.append(np.argsort(-graph(batch).logits, axis=1, kind="stable")[:, :5])
    return np.concatenate(out) if out else np.zeros((0, 5), np.int64)


def accuracy(dataset: Dataset, top5: np.ndarray) -> dict[str, Any]:
    """Top-1 and top-5 accuracy against the acceptable sets, overall and per composite cover."""
    items = [it for it in dataset if it.labels]
    hit1 = np.array([int(t[0]) in it.labels for it, t in zip(items, top5, strict=True)])
    hit5 = np.array([bool(set(t.tolist()) & it.labels) for it, t in zip(items, top5, strict=True)])
    by_cover: dict[float, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        if "spec" in it.meta:
            by_cover[it.meta["spec"]["cover"]].append(i)
    return {
        "images": len(items),
        "groups": len({it.group for it in items}),
        "top1": float(hit1.mean()) if len(items) else float("nan"),
        "top5": float(hit5.mean()) if len(items) else float("nan"),
        "top1_by_cover": {str(c): float(hit1[idx].mean()) for c, idx in sorted(by_cover.items())},
        "top5_by_cover": {str(c): float(hit5[idx].mean()) for c, idx in sorted(by_cover.items())},
    }
