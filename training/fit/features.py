"""Everything the served graphs compute about an image, plus the cheap signals they could expose.

One backbone pass over the classifier's centre crop and the P quality patches (cut as the server cuts
them: :func:`fitguard.preprocess.classifier_crop`, :func:`fitguard.preprocess.iqa_patches`) gives:

- the centre crop's logits (the served ``PROBS``) and DTNIQ-f's quality (the served ``QUALITY``: the
  mean over the patches, or in shared quality mode the head on the centre crop's own features);
- the classifier's logits on every quality patch: the backbone already runs on them for the quality
  features, and its deepest level pooled is exactly what the classifier's ``fc`` reads;
- per-level statistics of the feature maps the quality head reads (mean over channels of the spatial
  mean and standard deviation, averaged over the patches).

Outputs are cached under ``<cache>/fit_features`` keyed by the models and the image bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from fitguard.contract import DEFAULT_PATCHES
from fitguard.preprocess import classifier_crop, iqa_patches
from fitguard.training.image_groups import stable_key

if TYPE_CHECKING:
    from fitguard.training.paper.features import FeatureModels

FEATURES_VERSION = "fit-features/2"  # 2: the feature graph on ONNX Runtime


@dataclass
class FitFeatures:
    """Per image: centre logits [N, 1000], quality [N], patch logits [N, P, 1000], level stats [N, 2L]."""

    logits: np.ndarray
    quality: np.ndarray
    patch_logits: np.ndarray
    level_stats: np.ndarray

    def __len__(self) -> int:
        return len(self.quality)

    def subset(self, index: np.ndarray) -> FitFeatures:
        return FitFeatures(
            self.logits[index], self.quality[index], self.patch_logits[index], self.level_stats[index]
        )

    @staticmethod
    def concat(parts: list[FitFeatures]) -> FitFeatures:
        return FitFeatures(
            np.concatenate([p.logits for p in parts]),
            np.concatenate([p.quality for p in parts]),
            np.concatenate([p.patch_logits for p in parts]),
            np.concatenate([p.level_stats for p in parts]),
        )


def _forward(models: FeatureModels, crops: np.ndarray, patches: int) -> tuple[np.ndarray, ...]:
    """uint8 [B, 1 + P, 3, 224, 224] -> centre logits, quality, patch logits, level stats; the backbone
    pass runs on the feature graph (:mod:`fitguard.feature_graph`), the small quality head in torch."""
    import torch

    from fitguard.contract import SHARED_MODE
    from fitguard.feature_graph import feature_graph
    from fitguard.quality import expected_quality

    b = crops.shape[0]
    out = feature_graph(models.backbone)(crops.reshape(-1, *crops.shape[2:]))
    logits = out.logits.reshape(b, 1 + patches, -1)
    qf = torch.from_numpy(out.quality_features).reshape(b, 1 + patches, -1)
    if models.head_info.get("mode") == SHARED_MODE:
        quality = expected_quality(models.quality.head(qf[:, 0]))
    else:
        quality = expected_quality(models.quality.head(qf[:, 1:].flatten(0, 1))).reshape(b, patches).mean(1)
    stats = out.level_summary.reshape(b, 1 + patches, -1)[:, 1:].mean(1)
    return logits[:, 0], quality.numpy(), logits[:, 1:], stats


def compute_fit_features(
    models: FeatureModels,
    images: list[np.ndarray],
    patches: int = DEFAULT_PATCHES,
    batch_size: int = 8,
    cache: Path | None = None,
    desc: str = "features",
) -> FitFeatures:
    """Served-path features of RGB uint8 images of any size (see the module docstring)."""
    import torch

    key = stable_key(FEATURES_VERSION, models.key, patches, [stable_key(im) for im in images])
    path = None if cache is None else Path(cache) / "fit_features" / f"{desc}-{key}.npz"
    if path is not None and path.exists():
        with np.load(path) as z:
            return FitFeatures(
                z["logits"], z["quality"], z["patch_logits"].astype(np.float32), z["level_stats"]
            )
    preset = models.backbone.preset
    out: list[tuple[np.ndarray, ...]] = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(images), batch_size), desc=desc, leave=False):
            crops = np.stack(
                [
                    np.concatenate([classifier_crop(im, preset)[None], iqa_patches(im, patches)])
                    for im in images[i : i + batch_size]
                ]
            )
            out.append(_forward(models, crops, patches))
    feats = FitFeatures(*(np.concatenate([o[k] for o in out]).astype(np.float32) for k in range(4)))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            logits=feats.logits,
            quality=feats.quality,
            patch_logits=feats.patch_logits.astype(np.float16),
            level_stats=feats.level_stats,
        )
    return feats
