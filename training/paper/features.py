"""What the served models say about each image of a group: classifier logits and quality.

Features are computed as the server computes them: the canvas's centre crop is cut by the served
geometry (:func:`fitguard.training.paper.groups.classifier_batch`) and its quality views (P patches, or the
centre crop in shared quality mode) by :func:`fitguard.preprocess.quality_views`, then the torch
classifier and DTNIQ-f run, and :func:`fitguard.detector.detector_features` makes the 6-d vector
[top-5 sorted probabilities, quality].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from fitguard.contract import DEFAULT_PATCHES, PATCHES_MODE
from fitguard.detector import detector_features
from fitguard.preprocess import quality_views
from fitguard.training.image_groups import ImageGroup, predict_logits, stable_key

if TYPE_CHECKING:
    from fitguard.backbones import Backbone
    from fitguard.quality import QualityModel


@dataclass
class GroupFeatures:
    """What the served models say about each image of a group: logits [N, 1000] and quality [N]."""

    logits: np.ndarray
    quality: np.ndarray

    @property
    def probs(self) -> np.ndarray:
        from fitguard.classifier import softmax

        return softmax(self.logits).astype(np.float32)

    @property
    def energy(self) -> np.ndarray:
        """Logsumexp of the logits [N], float32 as the classifier graph's ``ENERGY``."""
        from fitguard.classifier import logsumexp

        return logsumexp(self.logits).astype(np.float32)

    @property
    def top1(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def features(self) -> np.ndarray:
        return detector_features(self.probs, self.quality)

    def subset(self, index: np.ndarray) -> GroupFeatures:
        return GroupFeatures(self.logits[index], self.quality[index])


@dataclass
class FeatureModels:
    """The torch models features come from, and an id of everything that changes their outputs."""

    backbone: Backbone
    quality: QualityModel
    head_info: dict[str, Any]
    key: str


def load_feature_models(
    backbone: str, head: str | Path, weights: str | None = "default", *, classifier: Any = None
) -> FeatureModels:
    """Backbone by name (or by a :class:`fitguard.classifier_spec.ClassifierSpec`, ``classifier``) and
    the DTNIQ-f head file, ready for feature extraction (eval mode)."""
    from fitguard.reference import load_torch_models

    torch_models = load_torch_models(backbone, weights, head, classifier=classifier)
    head_bytes = Path(head).read_bytes()
    # A plain spec keys its caches as a name did; classes and preset change the outputs, so they join.
    spec = [] if classifier is None or classifier.is_plain else [classifier.stamp()]
    key = stable_key(
        "models/1",
        torch_models.net.name,
        torch_models.net.weights_id,
        len(head_bytes),
        stable_key(np.frombuffer(head_bytes, np.uint8)),
        *spec,
    )
    return FeatureModels(torch_models.net, torch_models.quality, torch_models.head_info, key)


def view_quality(models: FeatureModels, views: np.ndarray) -> np.ndarray:
    """DTNIQ-f's quality [B] of uint8 views [B, P, 3, S, S], averaged over the P views as served: the
    backbone pass on the feature graph (:mod:`fitguard.feature_graph`), the small head in torch."""
    import torch

    from fitguard.feature_graph import feature_graph
    from fitguard.quality import expected_quality

    b, p = views.shape[:2]
    features = feature_graph(models.backbone)(views.reshape(-1, *views.shape[2:])).quality_features
    with torch.inference_mode():
        quality = expected_quality(models.quality.head(torch.from_numpy(features)))
    return quality.reshape(b, p).mean(1).float().numpy()


def compute_features(
    models: FeatureModels,
    group: ImageGroup,
    patches: int = DEFAULT_PATCHES,
    batch_size: int = 8,
    cache: Path | None = None,
) -> GroupFeatures:
    """Classifier logits and quality for every canvas of ``group``, through serving preprocessing."""
    key = stable_key("features/2", models.key, patches, stable_key(group.images))
    path = None if cache is None else Path(cache) / "detector_features" / f"{group.name}-{key}.npz"
    if path is not None and path.exists():
        with np.load(path) as z:
            return GroupFeatures(z["logits"], z["quality"])
    logits = predict_logits(models.backbone, group.images, desc=f"{group.name}: classifier")
    # The quality head reads what it was trained on and is served: P patches, or the classifier's crop.
    preset, mode = models.backbone.preset, models.head_info.get("mode", PATCHES_MODE)
    quality = []
    for i in tqdm(range(0, len(group), batch_size), desc=f"{group.name}: quality", leave=False):
        batch = np.stack(
            [quality_views(img, preset, mode, patches) for img in group.images[i : i + batch_size]]
        )
        quality.append(view_quality(models, batch))
    feats = GroupFeatures(logits.astype(np.float32), np.concatenate(quality).astype(np.float32))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, logits=feats.logits, quality=feats.quality)
    return feats
