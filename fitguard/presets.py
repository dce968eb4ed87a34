"""Preprocessing presets that travel with each backbone's weights (no torch needed).

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


# Keyed by "<backbone>" or "<backbone>:<weights>" when weights change the preset (torchvision V2).
PRESETS: dict[str, Preset] = {
    "resnet152": Preset(),  # IMAGENET1K_V1, the paper's setting
    "resnet152:IMAGENET1K_V2": Preset(resize=232),
    # The TF-Lite original scales to [-1, 1] (mean 127, std 128); its PyTorch port keeps that.
    "efficientnet_lite0": Preset(mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502)),
    "tiny": Preset(),
}


def preset_for(backbone: str, weights: str | None = None) -> Preset:
    """The preset for a backbone and (optionally) a named weights variant."""
    if weights and f"{backbone}:{weights}" in PRESETS:
        return PRESETS[f"{backbone}:{weights}"]
    try:
        return PRESETS[backbone]
    except KeyError:
        known = sorted({k.split(":")[0] for k in PRESETS})
        raise ValueError(f"unknown backbone {backbone!r}; known: {', '.join(known)}") from None
