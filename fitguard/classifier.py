"""The classifier step: uint8 crops -> softmax probabilities and energy, and the numpy softmax and
logsumexp the rest of the code uses for the same numbers.

Requires the ``[export]`` extra (torch).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fitguard.backbones import Backbone, UInt8Normalize


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of [..., C] logits in their own dtype (what :class:`Classifier` ends
    with)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def logsumexp(logits: np.ndarray) -> np.ndarray:
    """Logsumexp over the last axis of [..., C] logits: the energy :class:`ServedClassifier` returns."""
    m = logits.max(axis=-1)
    return m + np.log(np.exp(logits - m[..., None]).sum(axis=-1))


class Classifier(nn.Module):
    """uint8 [N, 3, 224, 224] -> softmax probabilities [N, 1000]."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.normalize = UInt8Normalize(backbone.preset)
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.backbone(self.normalize(x)), dim=1)


class ServedClassifier(Classifier):
    """What the classifier graph computes: uint8 [N, 3, 224, 224] -> (probabilities [N, 1000], energy
    [N, 1]). Energy is the logsumexp of the logits: softmax drops it, and the detector reads it."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits = self.backbone(self.normalize(x))
        return torch.softmax(logits, dim=1), torch.logsumexp(logits, dim=1, keepdim=True)


class SharedClassifier(nn.Module):
    """Shared quality mode: uint8 [N, 3, 224, 224] -> (probabilities [N, 1000], energy [N, 1], quality
    features [N, D]) from one backbone pass; the quality step's head reads the features."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.normalize = UInt8Normalize(backbone.preset)
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, features = self.backbone.logits_and_quality_features(self.normalize(x))
        return torch.softmax(logits, dim=1), torch.logsumexp(logits, dim=1, keepdim=True), features
