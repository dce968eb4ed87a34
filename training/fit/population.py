"""The images a fit = right evaluation scores, made from the labelled objects (one stamp per group).

- ``clean``: composites as users send them: the shorter side resized to one of :data:`SIZES` and
  encoded as JPEG or WebP at a quality in :data:`QUALITIES`, all chosen per image by a seeded draw.
- ``distorted``: the paper's distortions x five levels of the serving canvas of one item per chosen stamp.
- ``uap_deepfool`` / ``uap_pgd``: a universal perturbation (L-inf 10/255) fitted on the canvases of
  one half of the stamps and applied to the other half's, so no perturbed image's stamp helped fit it.
- ``fool_gd`` / ``fool_ev``: the fooling images of :mod:`fitguard.training.attacks.fooling` (always wrong).

Each image keeps its item (or -1), stamp, group name, kind and level; right/wrong is decided later from
the item's acceptable classes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from fitguard.training.image_groups import canvas

if TYPE_CHECKING:
    from fitguard.backbones import Backbone
    from fitguard.training.data import Dataset

CLEAN, DISTORTED, UAP_DEEPFOOL, UAP_PGD = "clean", "distorted", "uap_deepfool", "uap_pgd"
FOOL_GD, FOOL_EV = "fool_gd", "fool_ev"
POPULATION_GROUPS: tuple[str, ...] = (CLEAN, DISTORTED, UAP_DEEPFOOL, UAP_PGD, FOOL_GD, FOOL_EV)
SIZES: tuple[int, ...] = (224, 256, 320, 400)
QUALITIES: tuple[int, ...] = (70, 75, 80, 85, 90, 95)
CODECS: tuple[str, ...] = ("JPEG", "WEBP")


@dataclass(frozen=True)
class PopulationConfig:
    """How many images of each kind (the defaults keep a CPU run bounded)."""

    clean_per_stamp: int = 2
    distort_stamps: int = 16
    uap_fit_images: int = 32
    uap_max_iter: int = 1
    pgd_epochs: int = 4
    fool_count: int = 16
    seed: int = 0


@dataclass
class Population:
    images: list[np.ndarray]
    item: np.ndarray  # index into the dataset, -1 for fooling images
    group: np.ndarray  # str: one of POPULATION_GROUPS
    kind: np.ndarray  # str: codec@quality/size, distortion kind, attacker, fooling target
    level: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)


def as_sent(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The image resized and compressed as a user's upload would be; returns it and its recipe."""
    from fitguard.preprocess import decode_image, resize_shorter

    size, quality, codec = int(rng.choice(SIZES)), int(rng.choice(QUALITIES)), str(rng.choice(CODECS))
    img = Image.fromarray(resize_shorter(rgb, size, "bicubic"))
    buf = io.BytesIO()
    img.save(buf, format=codec, quality=quality)
    return decode_image(buf.getvalue()), f"{codec.lower()}@{quality}/{size}"


def stamp_halves(dataset: Dataset, seed: int) -> tuple[set[str], set[str]]:
    """A fixed halving of the stamps: the perturbations are fitted on one half, applied to the other."""
    stamps = np.random.default_rng([seed, 1]).permutation(dataset.groups()).tolist()
    return set(stamps[: len(stamps) // 2]), set(stamps[len(stamps) // 2 :])


def first_items(dataset: Dataset, stamps: set[str], per_stamp: int = 1) -> list[int]:
    seen: dict[str, int] = {}
    out = []
    for i, it in enumerate(dataset):
        if it.group in stamps and seen.get(it.group, 0) < per_stamp:
            seen[it.group] = seen.get(it.group, 0) + 1
            out.append(i)
    return out


def _add(pop: dict[str, list], images: list, items: list, group: str, kinds: list, levels: list) -> None:
    pop["images"] += images
    pop["item"] += items
    pop["group"] += [group] * len(images)
    pop["kind"] += kinds
    pop["level"] += levels


def build_population(
    backbone: Backbone, dataset: Dataset, config: PopulationConfig, cache: Path | None
) -> Population:
    """Every group of the module docstring, deterministic for a seed."""
    from fitguard.training.attacks.fooling import fool_ev_group, fool_gd_group
    from fitguard.training.attacks.universal import uap_group
    from fitguard.training.data.distortions import LEVELS, PAPER_DISTORTIONS, distort

    rng = np.random.default_rng(config.seed)
    side = backbone.preset.resize
    pop: dict[str, list] = {"images": [], "item": [], "group": [], "kind": [], "level": []}
    clean_items = first_items(dataset, set(dataset.groups()), config.clean_per_stamp)
    sent = [as_sent(dataset[i].image(), rng) for i in clean_items]
    _add(pop, [s[0] for s in sent], clean_items, CLEAN, [s[1] for s in sent], [0] * len(sent))
    chosen = rng.permutation(dataset.groups())[: config.distort_stamps]
    for i in first_items(dataset, set(chosen.tolist())):
        base = canvas(dataset[i].image(), side)
        for kind in PAPER_DISTORTIONS:
            imgs = [distort(base, kind, lv, seed=i) for lv in LEVELS]
            _add(pop, imgs, [i] * len(imgs), DISTORTED, [kind] * len(imgs), list(LEVELS))
    fit_half, apply_half = stamp_halves(dataset, config.seed)
    meta: dict[str, Any] = {"uap_fit_stamps": len(fit_half), "uap_applied_stamps": len(apply_half)}
    for attacker, name in (("deepfool", UAP_DEEPFOOL), ("pgd", UAP_PGD)):
        imgs, items, info = uap_group(
            backbone=backbone,
            dataset=dataset,
            fit_items=first_items(dataset, fit_half)[: config.uap_fit_images],
            apply_items=first_items(dataset, apply_half),
            attacker=attacker,
            config=config,
            cache=cache,
        )
        _add(pop, imgs, items, name, [attacker] * len(imgs), [0] * len(imgs))
        meta[name] = info
    for name, make in ((FOOL_GD, fool_gd_group), (FOOL_EV, fool_ev_group)):
        grp = make(backbone, config.fool_count, seed=config.seed, cache=cache)
        _add(pop, list(grp.images), [-1] * len(grp), name, [str(t) for t in grp.tags], [0] * len(grp))
        meta[name] = grp.meta
    return Population(
        pop["images"],
        np.asarray(pop["item"], np.int64),
        np.asarray(pop["group"], dtype=str),
        np.asarray(pop["kind"], dtype=str),
        np.asarray(pop["level"], np.int64),
        meta,
    )
