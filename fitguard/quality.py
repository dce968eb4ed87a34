"""DTNIQ-f, the quality step: the head, the patch-averaged quality model, and head files.

Requires the ``[export]`` extra (torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fitguard.backbones import LINEAR_INPUT_FEATURES, QUALITY_FEATURES, Backbone, UInt8Normalize
from fitguard.contract import PATCHES_MODE, QUALITY_BINS, QUALITY_MODES


class BadHeadError(ValueError):
    """A quality-head file is corrupt or does not fit the backbone."""


class QualityHead(nn.Module):
    """DTNIQ-f head: FC-2048 -> ReLU -> FC-2048 -> ReLU -> FC-70 (logits over MOS bins 1..70).

    Input features are first standardised with the training set's statistics (``shift``/``scale``,
    set by training and saved with the head): levels differ in scale by orders of magnitude.
    ``input_dropout`` drops standardised features while training: with few training scenes it keeps the
    head from keying on the handful of features that identify a scene (docs/iqa.md). Like the other
    dropouts it is the identity in eval mode, so exported graphs do not contain it.
    """

    def __init__(
        self,
        feature_dim: int,
        hidden: int = 2048,
        bins: int = QUALITY_BINS,
        dropout: float = 0.5,
        input_dropout: float = 0.0,
    ):
        super().__init__()
        self.feature_dim, self.hidden, self.bins = feature_dim, hidden, bins
        self.register_buffer("shift", torch.zeros(feature_dim))
        self.register_buffer("scale", torch.ones(feature_dim))
        self.input_dropout = nn.Dropout(input_dropout)
        self.net = nn.Sequential(
            nn.Linear(feature_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, bins),
        )

    def standardize_with(self, features: torch.Tensor) -> None:
        """Set the input standardisation from training features [M, D]."""
        std, mean = torch.std_mean(features.float(), dim=0)
        self.shift.copy_(mean)
        self.scale.copy_(1.0 / std.clamp_min(1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.input_dropout((features - self.shift) * self.scale))


def expected_quality(logits: torch.Tensor) -> torch.Tensor:
    """Normalised expected MOS: sum_j j * softmax_j over bins 1..B, mapped from [1, B] to [0, 1]."""
    bins = logits.shape[-1]
    j = torch.arange(1, bins + 1, dtype=logits.dtype, device=logits.device)
    return ((torch.softmax(logits, dim=-1) * j).sum(-1) - 1.0) / (bins - 1)


class QualityModel(nn.Module):
    """DTNIQ-f: uint8 patches [N, P, 3, 224, 224] -> quality [N, 1] in [0, 1], averaged over P."""

    def __init__(self, backbone: Backbone, head: QualityHead) -> None:
        super().__init__()
        if head.feature_dim != backbone.quality_dim:
            raise BadHeadError(
                f"quality head expects {head.feature_dim}-d features but backbone "
                f"{backbone.name!r} gives {backbone.quality_dim}-d"
            )
        self.normalize = UInt8Normalize(backbone.preset)
        self.backbone = backbone
        self.head = head

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        n, p = patches.shape[0], patches.shape[1]
        feats = self.backbone.quality_features(self.normalize(patches.flatten(0, 1)))
        q = expected_quality(self.head(feats))
        return q.reshape(n, p).mean(dim=1, keepdim=True)


class FeatureQuality(nn.Module):
    """Shared quality mode: quality features [N, D] of the classifier's pass -> quality [N, 1]."""

    def __init__(self, head: QualityHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return expected_quality(self.head(features)).unsqueeze(1)


# --------------------------------------------------------------------------------------------------
# Quality-head files
# --------------------------------------------------------------------------------------------------

HEAD_FORMAT = "fitguard.iqa-head/2"


def save_head(
    path: str | Path,
    head: QualityHead,
    backbone: Backbone,
    meta: dict[str, Any] | None = None,
    mode: str = PATCHES_MODE,
) -> None:
    """Write a head with what it needs to be checked against a backbone at load time.

    ``mode`` is the quality mode whose inputs the head was trained on (:data:`QUALITY_MODES`: P patches,
    or the classifier's centre crop); a head is served only in the mode it was trained for.
    """
    if mode not in QUALITY_MODES:
        raise ValueError(f"unknown quality mode {mode!r}; choose from {', '.join(QUALITY_MODES)}")
    torch.save(
        {
            "format": HEAD_FORMAT,
            "mode": mode,
            "backbone": backbone.name,
            "weights_id": backbone.weights_id,
            "features": backbone.features_id,
            "feature_dim": head.feature_dim,
            "hidden": head.hidden,
            "bins": head.bins,
            "state_dict": head.state_dict(),
            "meta": meta or {},
        },
        str(path),
    )


def load_head(path: str | Path, backbone: Backbone | None = None) -> tuple[QualityHead, dict[str, Any]]:
    """Read a head file; with ``backbone``, refuse a head trained for other features.

    Raises:
        BadHeadError: unreadable file, wrong format, or a feature size that does not fit ``backbone``.
    """
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise BadHeadError(
            f"{path}: not a readable quality-head file ({exc.__class__.__name__}: {exc})"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != HEAD_FORMAT:
        raise BadHeadError(f"{path}: not a fitguard quality-head file (format {HEAD_FORMAT} expected)")
    expected = backbone.features_id if backbone is not None else blob.get("features") or QUALITY_FEATURES
    if blob.get("features") not in (QUALITY_FEATURES, LINEAR_INPUT_FEATURES) or blob["features"] != expected:
        raise BadHeadError(f"{path}: head was trained on {blob.get('features')!r} features, not {expected}")
    if backbone is not None and blob["feature_dim"] != backbone.quality_dim:
        raise BadHeadError(
            f"{path}: head was trained on {blob['backbone']!r} features ({blob['feature_dim']}-d); "
            f"backbone {backbone.name!r} gives {backbone.quality_dim}-d"
        )
    head = QualityHead(blob["feature_dim"], blob["hidden"], blob["bins"])
    try:
        head.load_state_dict(blob["state_dict"])
    except Exception as exc:
        raise BadHeadError(f"{path}: head weights do not load: {exc}") from None
    info = {k: v for k, v in blob.items() if k != "state_dict"}
    info.setdefault("mode", PATCHES_MODE)  # heads written before the shared mode read patches
    return head.eval(), info


def check_head_mode(info: dict[str, Any], mode: str, path: str | Path) -> None:
    """Raise :class:`BadHeadError` unless the head (``info`` of :func:`load_head`) was trained for
    ``mode``."""
    if info.get("mode", PATCHES_MODE) != mode:
        raise BadHeadError(
            f"{path}: head was trained on {info.get('mode')!r}-mode inputs, not {mode!r}; train it with "
            f"`fitguard train iqa --quality-features {mode}`"
        )
