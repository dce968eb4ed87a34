"""Images the detector never trains on, for the shift evaluation of ``fitguard evaluate-fit``.

Each set is made from the labelled objects (one composite per stamp, so held-out stamps stay held out)
or from the package photos, and sent as users send images (:func:`fitguard.training.fit.population.as_sent`):

- ``unseen_kinds``: degradations of kinds outside the training population: contrast, brightness,
  pixelation, motion blur and defocus, at a middle and a strong level;
- ``ladder_above``: the training kinds (:data:`fitguard.training.data.distortions.PAPER_DISTORTIONS`) one
  step past their strongest level;
- ``plain_background``: the stamp on plain grey and on a studio-like gradient instead of a scene;
- ``photos``: the package photos that show an ImageNet object, clean and degraded (a small real set).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from fitguard.training.data.distortions import distort, distort_with
from fitguard.training.fit.population import as_sent

UNSEEN_KINDS, LADDER_ABOVE, PLAIN_BACKGROUND, PHOTOS = (
    "unseen_kinds",
    "ladder_above",
    "plain_background",
    "photos",
)
UNSEEN_GROUPS: tuple[str, ...] = (UNSEEN_KINDS, LADDER_ABOVE, PLAIN_BACKGROUND, PHOTOS)
# One step past level 5 of each training kind (docs/fit_right.md lists the ladder).
ABOVE: dict[str, float] = {"gaussian_blur": 8.0, "white_noise": 0.5, "jpeg": 4.0, "jpeg2000": 480.0}
PHOTO_DEGRADATIONS: tuple[tuple[str, int], ...] = (("gaussian_blur", 3), ("white_noise", 3), ("jpeg", 4))


@dataclass
class UnseenConfig:
    """How many stamps each set uses (``None``: every stamp) and the seed of the draws."""

    kind_stamps: int | None = 40
    above_stamps: int | None = 40
    background_stamps: int | None = None
    seed: int = 0


@dataclass
class UnseenSet:
    """Rows of every unseen set: image, acceptable classes, stamp (``photo:<name>`` for photos), group,
    kind and level."""

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[frozenset[int]] = field(default_factory=list)
    stamps: list[str] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    level: list[int] = field(default_factory=list)

    def add(self, image: np.ndarray, labels: frozenset[int], stamp: str, group: str, kind: str, level: int):
        self.images.append(image)
        self.labels.append(labels)
        self.stamps.append(stamp)
        self.group.append(group)
        self.kind.append(kind)
        self.level.append(level)

    def right(self, top1: np.ndarray) -> np.ndarray:
        return np.asarray([int(t) in labels for t, labels in zip(top1, self.labels, strict=True)])


def pixelate(rgb: np.ndarray, factor: int) -> np.ndarray:
    img = Image.fromarray(rgb)
    small = img.resize((max(1, img.width // factor), max(1, img.height // factor)), Image.Resampling.BOX)
    return np.asarray(small.resize(img.size, Image.Resampling.NEAREST))


def motion_blur(rgb: np.ndarray, length: int) -> np.ndarray:
    """A horizontal streak of ``length`` pixels (a camera panned during the exposure)."""
    from scipy.ndimage import uniform_filter1d

    return np.asarray(uniform_filter1d(rgb.astype(np.float32), size=length, axis=1) + 0.5).astype(np.uint8)


def defocus(rgb: np.ndarray, radius: int) -> np.ndarray:
    """A disk kernel of ``radius`` pixels (an out-of-focus lens), unlike the training's Gaussian blur."""
    from scipy.ndimage import convolve

    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = (x**2 + y**2 <= radius**2).astype(np.float32)
    disk /= disk.sum()
    out = np.stack([convolve(rgb[..., c].astype(np.float32), disk, mode="reflect") for c in range(3)], -1)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _unseen_kinds(rgb: np.ndarray, seed: int) -> list[tuple[str, int, np.ndarray]]:
    """(kind, level, image): two strengths per kind, level 3 and 5 of a five-step ladder."""
    out = []
    for level, (factor, length, radius) in ((3, (4, 9, 3)), (5, (8, 17, 6))):
        out += [
            ("contrast", level, distort(rgb, "contrast_change", level, seed)),
            ("brightness", level, distort(rgb, "mean_shift", level, seed)),
            ("pixelate", level, pixelate(rgb, factor)),
            ("motion_blur", level, motion_blur(rgb, length)),
            ("defocus", level, defocus(rgb, radius)),
        ]
    return out


def _studio(size: int) -> Image.Image:
    """A light vertical gradient, as a product photo's backdrop."""
    ramp = np.linspace(235, 165, size, dtype=np.float32)[:, None, None]
    return Image.fromarray(np.broadcast_to(ramp, (size, size, 3)).astype(np.uint8))


def _on_backgrounds(stamp: Image.Image) -> list[tuple[str, np.ndarray]]:
    from fitguard.training.data import composite as comp

    spec = comp.CompositeSpec(scene="plain", crop=(0, 0, comp.SIZE), cover=0.6, fx=0.5, fy=0.5, flip=False)
    grey = Image.new("RGB", (comp.SIZE, comp.SIZE), (128, 128, 128))
    return [
        ("grey", comp.composite(stamp, grey, spec)),
        ("studio", comp.composite(stamp, _studio(comp.SIZE), spec)),
    ]


def _first_per_stamp(dataset: Any) -> dict[str, int]:
    first: dict[str, int] = {}
    for i, item in enumerate(dataset):
        first.setdefault(item.group, i)
    return first


def _pick(stamps: list[str], count: int | None, rng: np.random.Generator) -> list[str]:
    return (
        stamps if count is None or count >= len(stamps) else sorted(rng.choice(stamps, count, replace=False))
    )


def _photo_rows(out: UnseenSet, side: int, rng: np.random.Generator) -> None:
    from fitguard.photos import PHOTO_LABELS, package_photos
    from fitguard.training.image_groups import canvas

    for name, rgb in package_photos(tuple(PHOTO_LABELS)).items():
        base = canvas(rgb, side)
        labels, stamp = PHOTO_LABELS[name], f"photo:{name}"
        out.add(as_sent(rgb, rng)[0], labels, stamp, PHOTOS, "clean", 0)
        for kind, level in PHOTO_DEGRADATIONS:
            out.add(distort(base, kind, level, seed=0), labels, stamp, PHOTOS, kind, level)


def build_unseen(dataset: Any, *, side: int, config: UnseenConfig) -> UnseenSet:
    """Every set of the module docstring from the labelled objects ``dataset`` (deterministic)."""
    from fitguard.training.data.objects import stamp_image
    from fitguard.training.image_groups import canvas

    rng = np.random.default_rng(config.seed)
    first = _first_per_stamp(dataset)
    stamps = sorted(first)
    out = UnseenSet()
    for stamp in _pick(stamps, config.kind_stamps, rng):
        item = dataset[first[stamp]]
        base = canvas(item.image(), side)
        for kind, level, img in _unseen_kinds(base, seed=first[stamp]):
            out.add(img, item.labels, stamp, UNSEEN_KINDS, kind, level)
    for stamp in _pick(stamps, config.above_stamps, rng):
        item = dataset[first[stamp]]
        base = canvas(item.image(), side)
        for kind, param in ABOVE.items():
            out.add(
                distort_with(base, kind, param, seed=first[stamp]), item.labels, stamp, LADDER_ABOVE, kind, 6
            )
    for stamp in _pick(stamps, config.background_stamps, rng):
        item = dataset[first[stamp]]
        for kind, img in _on_backgrounds(stamp_image(item)):
            out.add(as_sent(img, rng)[0], item.labels, stamp, PLAIN_BACKGROUND, kind, 0)
    _photo_rows(out, side, rng)
    return out


def with_unseen(data: Any, unseen: UnseenSet, feats: Any) -> dict[str, Any]:
    """The population and the unseen rows as one set of rows for :func:`fitguard.training.fit.protocol.
    run_repeats`: ``pop``, ``feats``, ``right``, ``stamps`` and ``trainable`` (population rows only)."""
    from fitguard.training.fit.features import FitFeatures
    from fitguard.training.fit.population import POPULATION_GROUPS, Population

    n = len(unseen.images)
    pop = Population(
        [],
        np.concatenate([data.pop.item, np.full(n, -1, np.int64)]),
        np.concatenate([data.pop.group, np.asarray(unseen.group, dtype=str)]),
        np.concatenate([data.pop.kind, np.asarray(unseen.kind, dtype=str)]),
        np.concatenate([data.pop.level, np.asarray(unseen.level, np.int64)]),
        data.pop.meta,
    )
    right = np.concatenate([data.right, unseen.right(feats.logits.argmax(axis=1))])
    return {
        "pop": pop,
        "feats": FitFeatures.concat([data.feats, feats]),
        "right": right,
        "stamps": np.concatenate([data.stamps, np.asarray(unseen.stamps, dtype=str)]),
        "trainable": np.isin(pop.group, POPULATION_GROUPS),
    }


def summarize_unseen(
    repeats: list[dict[str, Any]], methods: list[str], matched: tuple[str, ...], draws: int
) -> dict[str, Any]:
    """Per unseen set: AURC (natural: the set alone; paper: with the held-out fooling images) with paired
    intervals against MSP, accuracy at threshold against MSP at the same coverage, and Table V."""
    from fitguard.training.fit.protocol import FOOLING, restrict, table_v
    from fitguard.training.fit.signals import bootstrap, coverage_matched, metric

    out: dict[str, Any] = {}
    for group in UNSEEN_GROUPS:
        # A small set can have no held-out rows in a repeat: such repeats say nothing about it.
        alone, with_fooling = restrict(repeats, (group,)), restrict(repeats, (group, *FOOLING))
        held = [k for k, r in enumerate(alone) if len(r["right"])]
        if not held:
            continue
        sub, with_fooling = [alone[k] for k in held], [with_fooling[k] for k in held]
        out[group] = {
            "n_test_mean": float(np.mean([len(r["right"]) for r in sub])),
            "base_accuracy": float(np.mean([r["right"].mean() for r in sub])),
            "natural": {"aurc": bootstrap(sub, methods, metric("aurc"), draws=draws)},
            "paper": {"aurc": bootstrap(with_fooling, methods, metric("aurc"), draws=draws)},
            "at_threshold": {m: coverage_matched(sub, m, draws=draws) for m in matched if m in methods},
            "table_v": table_v(sub, methods, (group,)),
        }
    return out
