"""The paper's image groups, generated deterministically: originals, distorted, adversarial, Fool_GD, Fool_EV.

One module per group (:mod:`.originals`, :mod:`.distorted`, and the attacks of
:mod:`fitguard.training.attacks`: :mod:`~fitguard.training.attacks.adversarial`,
:mod:`~fitguard.training.attacks.fooling`) over the shared helpers of :mod:`fitguard.training.image_groups`
(the group record, names, canvases, cache keys). Every image is a
square canvas of the preset's resize size whose served centre crop is the classifier input.

- **originals**: ImageNet validation images the classifier gets right (labels file or class-folder
  layout) or, for unlabelled folders and the package-shipped photos, several views of each photo
  (square crops at a few scales and positions, some mirrored) whose top-1 prediction equals the
  photo's own clean prediction, which serves as the reference label.
- **distorted**: :data:`fitguard.training.data.distortions.PAPER_DISTORTIONS` x five levels of a
  deterministic subset of originals.
- **adversarial**: one universal perturbation (ART ``UniversalPerturbation``, DeepFool, L-inf
  10/255, delta 0.2) computed on a subset of originals and added to every original's classifier crop.
- **fool_gd**: gradient ascent from the mean image toward random target classes (Simonyan et al. 2014,
  the paper's Fool_GD).
- **fool_ev**: MAP-Elites with a direct pixel encoding (Nguyen et al. 2015) on a CPU-sized budget.

Groups and their expensive parts are cached as ``.npz`` under a cache folder, keyed by a hash of
everything that determines them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fitguard.contract import DEFAULT_PATCHES
from fitguard.training.attacks.adversarial import adversarial_group
from fitguard.training.attacks.fooling import fool_ev_group, fool_gd_group
from fitguard.training.image_groups import (
    ADVERSARIAL,
    DISTORTED,
    FOOL_EV,
    FOOL_GD,
    GROUPS,
    ORIGINALS,
    GroupConfig,
    ImageGroup,
)
from fitguard.training.paper.distorted import distorted_group
from fitguard.training.paper.originals import load_originals

if TYPE_CHECKING:
    from fitguard.backbones import Backbone


def build_groups(
    backbone: Backbone,
    images: str | Path | None = None,
    names: Sequence[str] = GROUPS,
    config: GroupConfig | None = None,
    cache: Path | None = None,
) -> dict[str, ImageGroup]:
    """The requested groups (originals always come first; the others derive from them)."""
    config = config or GroupConfig()
    out = {ORIGINALS: load_originals(backbone, images, config, cache)}
    originals = out[ORIGINALS]
    if ADVERSARIAL in names:
        out[ADVERSARIAL] = adversarial_group(
            backbone,
            originals,
            config.uap_fit_images,
            max_iter=config.uap_max_iter,
            seed=config.seed,
            cache=cache,
        )
    if DISTORTED in names:
        out[DISTORTED] = distorted_group(originals, max_sources=config.distort_sources)
    if FOOL_GD in names:
        out[FOOL_GD] = fool_gd_group(
            backbone, config.fool_gd_count, config.fool_gd_steps, seed=config.seed, cache=cache
        )
    if FOOL_EV in names:
        out[FOOL_EV] = fool_ev_group(
            backbone, config.fool_ev_count, config.fool_ev_generations, seed=config.seed, cache=cache
        )
    return {n: out[n] for n in GROUPS if n in out}


def add_group_arguments(parser: argparse.ArgumentParser, *, weights: bool = True) -> None:
    """The flags that choose the groups' images and how they are seen, shared by the paper's commands
    (``weights=False`` where the classifier spec's flags give ``--weights``)."""
    parser.add_argument(
        "--images",
        default=None,
        help="ImageNet-style labelled folder (val.txt/labels.txt or <wnid>/ folders) or any "
        "photo folder; default: the package-shipped photos",
    )
    parser.add_argument("--labels", default=None, help="labels file: '<file> <index or wnid>' per line")
    parser.add_argument(
        "--limit", type=int, default=None, help="use a seeded subset of this many labelled images"
    )
    if weights:
        parser.add_argument("--weights", default="default", help="backbone weights (see fitguard.backbones)")
    parser.add_argument(
        "--patches", type=int, default=DEFAULT_PATCHES, help="IQA patches per image (as served)"
    )
    parser.add_argument("--views", type=int, default=GroupConfig.views, help="views per unlabelled photo")
    parser.add_argument(
        "--cache", default=None, help="cache folder (default $FITGUARD_CACHE or ~/.cache/fitguard)"
    )
