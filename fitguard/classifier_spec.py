"""The classifier a repository guards: an architecture, its weights, its classes and its preprocessing.

``--classifier`` names a registered architecture (:data:`fitguard.presets.ARCHITECTURES`) or
``torchvision:<arch>``; ``--weights`` is that architecture's own ``state_dict()`` (or a named variant);
``--classes`` a text file, one class name a line, whose count is the head's; ``--resize --crop --mean
--std`` override the preset (the architecture's, ImageNet's for torchvision). Standard library only: the
export, the build and the training commands share it, and :mod:`fitguard.backbones` builds from it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fitguard.contract import INPUT_SIZE, NUM_CLASSES, TOP_K
from fitguard.presets import Preset, architecture, is_torchvision, preset_for


class SpecError(ValueError):
    """A classifier spec that cannot be built: one line that says what to change."""


@dataclass(frozen=True)
class ClassifierSpec:
    """What ``--classifier --weights --classes --resize --crop --mean --std`` resolve to.

    Attributes:
        name: a registered architecture or ``torchvision:<arch>``.
        weights: ``default``, a named variant, a state-dict path, or ``random``/None.
        classes: the class names, one per output; None keeps the architecture's ImageNet head.
        classes_file: where ``classes`` were read from (recorded in the manifest).
        preset: the preprocessing, None for the architecture's own.
    """

    name: str
    weights: str | None = "default"
    classes: tuple[str, ...] | None = None
    classes_file: str | None = None
    preset: Preset | None = None

    @property
    def num_classes(self) -> int:
        """N: the head's outputs (ImageNet's 1000 without a classes file)."""
        return len(self.classes) if self.classes is not None else NUM_CLASSES

    @property
    def top_k(self) -> int:
        """K = min(5, N): the classes a verdict lists."""
        return min(TOP_K, self.num_classes)

    def resolved_preset(self) -> Preset:
        return self.preset or preset_for(self.name, self.weights)

    @property
    def is_plain(self) -> bool:
        """The architecture as registered: its ImageNet head and its own preset."""
        return self.classes is None and self.preset is None

    def stamp(self) -> dict[str, Any]:
        """What a build's step stamps add for this spec: nothing for a plain spec named by its weights
        (so the stamps of builds made before specs existed stay as they were); the classes, preset and
        the weights file's content otherwise, so a retrained file rebuilds."""
        out: dict[str, Any] = {}
        if self.classes is not None:
            out["classes"] = hashlib.sha256("\n".join(self.classes).encode()).hexdigest()[:16]
        if self.preset is not None:
            out["preset"] = self.preset.to_dict()
        if self.weights is not None and os.path.isfile(self.weights):
            out["weights_file"] = _file_digest(self.weights)
        return out

    def to_dict(self) -> dict[str, Any]:
        """What the manifest records."""
        return {
            "classifier": self.name,
            "classes_file": self.classes_file,
            "num_classes": self.num_classes,
            "top_k": self.top_k,
        }


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def read_classes(path: str | Path) -> tuple[str, ...]:
    """One class name a line (blank lines and surrounding spaces ignored); names must be distinct."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such classes file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: unreadable classes file ({exc})") from None
    names = tuple(line.strip() for line in lines if line.strip())
    if not names:
        raise SpecError(f"{path}: no class names (one name a line)")
    seen: set[str] = set()
    repeated = [n for n in names if n in seen or seen.add(n)]  # type: ignore[func-returns-value]
    if repeated:
        raise SpecError(f"{path}: class names must be distinct; repeated: {', '.join(sorted(set(repeated)))}")
    return names


def _preset(base: Preset, *, resize: int | None, crop: int | None, mean: Any, std: Any) -> Preset | None:
    if resize is None and crop is None and mean is None and std is None:
        return None
    if crop is not None and crop != INPUT_SIZE:
        raise SpecError(f"--crop {crop}: the served classifier input is {INPUT_SIZE}x{INPUT_SIZE}")
    for flag, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) != 3:
            raise SpecError(f"{flag} takes three numbers (R G B), got {len(values)}")
    if std is not None and min(std) <= 0:
        raise SpecError("--std values must be positive")
    if resize is not None and resize < INPUT_SIZE:
        raise SpecError(f"--resize {resize}: the shorter side must be at least the crop ({INPUT_SIZE})")
    return replace(
        base,
        resize=base.resize if resize is None else resize,
        mean=base.mean if mean is None else tuple(float(v) for v in mean),
        std=base.std if std is None else tuple(float(v) for v in std),
    )


def classifier_spec(
    name: str,
    *,
    weights: str | None = "default",
    classes: str | Path | None = None,
    resize: int | None = None,
    crop: int | None = None,
    mean: Any = None,
    std: Any = None,
) -> ClassifierSpec:
    """Resolve and check a spec without torch.

    Raises:
        SpecError: an unknown architecture, an unreadable or empty classes file, a bad preset.
    """
    if not is_torchvision(name):
        try:
            architecture(name)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
    names = read_classes(classes) if classes is not None else None
    base = preset_for(name, weights)
    preset = _preset(base, resize=resize, crop=crop, mean=mean, std=std)
    return ClassifierSpec(name, weights, names, None if classes is None else str(classes), preset)


def add_classifier_arguments(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """``--classifier`` (alias ``--backbone``), ``--weights``, ``--classes`` and the preset overrides."""
    parser.add_argument(
        "--classifier",
        "--backbone",
        dest="backbone",
        required=required,
        **({} if required else {"default": "efficientnet_lite0"}),
        help="efficientnet_lite0, resnet152, tiny, or torchvision:<arch> (any torchvision classifier whose "
        "head is a final Linear: resnet*, efficientnet*, mobilenet*, convnext*, regnet*, vit_*)",
    )
    parser.add_argument(
        "--weights",
        default="default",
        help="default, imagenet, IMAGENET1K_V1/V2 (resnet152), random, or the architecture's own "
        "state_dict() saved with torch.save",
    )
    parser.add_argument("--classes", default=None, help="classes file, one name a line: the head's N outputs")
    parser.add_argument("--resize", type=int, default=None, help="shorter side before the crop")
    parser.add_argument(
        "--crop", type=int, default=None, help=f"centre crop (the served input: {INPUT_SIZE})"
    )
    parser.add_argument("--mean", type=float, nargs=3, default=None, help="normalisation mean (R G B, 0-1)")
    parser.add_argument("--std", type=float, nargs=3, default=None, help="normalisation std (R G B, 0-1)")


def spec_from_args(args: argparse.Namespace) -> ClassifierSpec:
    """The spec :func:`add_classifier_arguments` parsed."""
    return classifier_spec(
        args.backbone,
        weights=args.weights,
        classes=getattr(args, "classes", None),
        resize=getattr(args, "resize", None),
        crop=getattr(args, "crop", None),
        mean=getattr(args, "mean", None),
        std=getattr(args, "std", None),
    )


def checked_spec(args: argparse.Namespace, prog: str) -> ClassifierSpec | None:
    """:func:`spec_from_args`, its network built once before anything is written; None after one line
    on stderr (the command then exits 2) for a bad spec or weights that do not fit. Needs torch."""
    from fitguard.backbones import build_classifier
    from fitguard.weights import WeightsUnavailableError

    try:
        spec = spec_from_args(args)
        build_classifier(spec)
    except (ValueError, FileNotFoundError, WeightsUnavailableError, ImportError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None
    return spec
