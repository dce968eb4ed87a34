"""``fitguard train detector``: fit the shipped detector on every labelled image and write its file.

The rows are the fit = right population of :mod:`fitguard.training.fit.population` (the labelled objects
as users send them, distorted, universal perturbations, fooling images), scored by what the served
graphs compute (:mod:`fitguard.training.fit.features`). The recipe is :mod:`fitguard.training.fit.recipes`;
``--recipe paper`` fits the paper's SVM instead (:mod:`fitguard.training.paper.train`). Nothing here
evaluates: ``fitguard evaluate-fit`` measures the same recipe held out by stamp and under shift.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.contract import DEFAULT_PATCHES
from fitguard.training.fit.population import POPULATION_GROUPS, Population, PopulationConfig

log = logging.getLogger(__name__)
PAPER_RECIPE = "paper"


@dataclass
class FitData:
    """The population, what the served graphs say about it, and whether each answer is right."""

    models: Any  # fitguard.training.paper.features.FeatureModels
    dataset: Any  # the labelled objects
    pop: Population
    feats: Any  # fitguard.training.fit.features.FitFeatures
    right: np.ndarray
    stamps: np.ndarray  # "" for fooling images
    scenes: np.ndarray  # "" for fooling images
    seconds: dict[str, float]

    @property
    def acceptable(self) -> list[frozenset[int] | None]:
        return [it.labels for it in self.dataset]


def _population_features(models: Any, pop: Population, *, patches: int, cache: Path) -> Any:
    """One backbone pass per image of every group, back in population order."""
    from fitguard.training.fit.features import FitFeatures, compute_fit_features

    parts, order = [], []
    for g in POPULATION_GROUPS:
        idx = np.flatnonzero(pop.group == g)
        parts.append(compute_fit_features(models, [pop.images[i] for i in idx], patches, cache=cache, desc=g))
        order.append(idx)
    return FitFeatures.concat(parts).subset(np.argsort(np.concatenate(order)))


def load_fit_data(
    *,
    backbone: str,
    head: str | Path,
    config: PopulationConfig,
    patches: int = DEFAULT_PATCHES,
    cache: Path | None = None,
    weights: str | None = "default",
) -> FitData:
    """Build (or read from ``cache``) the population and its served-path features."""
    from fitguard.training.data import load_dataset
    from fitguard.training.paper.features import load_feature_models

    return population_fit_data(
        lambda: (load_feature_models(backbone, head, weights), load_dataset("objects")),
        config=config,
        patches=patches,
        cache=cache,
    )


def population_fit_data(
    load: Callable[[], tuple[Any, Any]], *, config: PopulationConfig, patches: int, cache: Path | None
) -> FitData:
    """The population of the labelled set ``load`` gives with its models, what the served graphs say about
    it and whether each answer is right; an item's group stands for its stamp."""
    import torch

    from fitguard.cache import cache_root
    from fitguard.training.fit.population import build_population
    from fitguard.training.fit.protocol import right_flags

    torch.set_num_threads(min(2, torch.get_num_threads()))
    cache = cache or cache_root()
    t0 = time.perf_counter()
    models, dataset = load()
    pop = build_population(models.backbone, dataset, config, cache)
    t1 = time.perf_counter()
    feats = _population_features(models, pop, patches=patches, cache=cache)
    seconds = {"population": t1 - t0, "features": time.perf_counter() - t1}
    right = right_flags(pop, feats.logits.argmax(axis=1), [it.labels for it in dataset])
    stamps = np.asarray([dataset[i].group if i >= 0 else "" for i in pop.item])
    scenes = np.asarray([dataset[i].meta.get("scene", "") if i >= 0 else "" for i in pop.item])
    return FitData(models, dataset, pop, feats, right, stamps, scenes, seconds)


def train_fit_detector(
    out: Path,
    *,
    backbone: str,
    head: str | Path,
    config: PopulationConfig,
    patches: int = DEFAULT_PATCHES,
    cache: Path | None = None,
    weights: str | None = "default",
    recipe: str | None = None,
) -> dict[str, Any]:
    """Fit a recipe (the shipped one by default, or ``lr_right``:
    :func:`fitguard.training.fit.protocol.fit_recipe`) on every image of the population, write the detector
    file, return its meta."""
    from fitguard.detector import save_detector
    from fitguard.training.fit.protocol import cv_groups, fit_recipe
    from fitguard.training.fit.signals import SHIPPED, signal_groups

    data = load_fit_data(
        backbone=backbone, head=head, config=config, patches=patches, cache=cache, weights=weights
    )
    t = time.perf_counter()
    x = signal_groups(data.feats)[SHIPPED]
    groups = cv_groups(data.stamps)
    det, _ = fit_recipe(x, data.right, groups=groups, group=data.pop.group, recipe=recipe or SHIPPED)
    det.meta.update(
        {
            "backbone": backbone,
            "weights_id": data.models.backbone.weights_id,
            "head_key": data.models.key,
            "patches": patches,
            "seed": config.seed,
            "population": config.__dict__,
            "rows": len(data.right),
            "right_share": float(data.right.mean()),
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    save_detector(out, det)
    seconds = {**data.seconds, "fit": time.perf_counter() - t}
    return {**det.meta, "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def configure(parser: argparse.ArgumentParser) -> None:
    from fitguard.training.fit.protocol import LR_RIGHT
    from fitguard.training.fit.signals import SHIPPED
    from fitguard.training.paper.train import configure as paper_configure

    parser.add_argument(
        "--recipe",
        choices=(SHIPPED, LR_RIGHT, PAPER_RECIPE),
        default=SHIPPED,
        help="shipped: the served fit = right detector on the labelled objects, MSP guarded by a veto; "
        "lr_right: the logistic regression shipped before it (docs/fit_right.md); paper: the paper's "
        "SVM on clean against universal-perturbation images (docs/evaluation.md); "
        "--images, --labels, --limit, --target-far, --views, --repeats, --split-by and --unfit-groups "
        "are the paper recipe's alone",
    )
    paper_configure(parser)  # the shipped recipe reads --backbone, --weights, --iqa-head, --out,
    # --patches, --seed and --cache of the same parser


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.recipe == PAPER_RECIPE:
        from fitguard.training.paper.train import run as paper_run

        return paper_run(args)
    meta = train_fit_detector(
        Path(args.out),
        backbone=args.backbone,
        head=args.iqa_head,
        config=PopulationConfig(seed=args.seed),
        patches=args.patches,
        cache=Path(args.cache) if args.cache else None,
        weights=args.weights,
        recipe=args.recipe,
    )
    print(f"wrote {args.out}: {meta['rows']} rows ({meta['right_share']:.1%} right), {meta['seconds']}")
    return 0
