"""Fooling images: Fool_GD (gradient ascent from the mean image toward random target classes, Simonyan et
al. 2014) and Fool_EV (MAP-Elites with a direct pixel encoding, Nguyen et al. 2015, on a CPU budget)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from fitguard.preprocess import center_offset
from fitguard.training.image_groups import (
    FOOL_EV,
    FOOL_GD,
    NO_LABEL,
    ImageGroup,
    cached_path,
    classifier_batch,
    float_logits_module,
    make_group,
    predict_logits,
    stable_key,
)

if TYPE_CHECKING:
    from fitguard.backbones import Backbone


def head_key(backbone: Backbone) -> list[int]:
    """Cache-key parts of the head's size: none for ImageNet's (earlier keys stay valid)."""
    from fitguard.contract import NUM_CLASSES

    return [] if backbone.num_classes == NUM_CLASSES else [backbone.num_classes]


def mean_canvas(backbone: Backbone) -> np.ndarray:
    """The mean image the classifier normalises by (per-channel mean of its preset) as a canvas."""
    side = backbone.preset.resize
    mean = np.rint(np.asarray(backbone.preset.mean) * 255.0).astype(np.uint8)
    return np.broadcast_to(mean, (side, side, 3)).copy()


def _gd_ascent(
    backbone: Backbone, start_crop: np.ndarray, targets: np.ndarray, *, steps: int, lr: float, l2: float
) -> np.ndarray:
    """Adam ascent of every target's log-probability from ``start_crop`` (uint8 [1, 3, S, S]), less
    ``l2`` times the squared distance to it; returns the crops as uint8 [N, S, S, 3]."""
    import torch

    model = float_logits_module(backbone)
    for p in model.parameters():
        p.requires_grad_(False)
    start = torch.from_numpy(start_crop.astype(np.float32) / 255.0)
    x = start.repeat(len(targets), 1, 1, 1).clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    target = torch.from_numpy(targets)
    for _ in tqdm(range(steps), desc="fool_gd: ascent", leave=False):
        opt.zero_grad()
        logp = torch.log_softmax(model(x), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -(logp - l2 * ((x - start) ** 2).flatten(1).sum(1)).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
    return np.rint(x.detach().numpy() * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)


def _unlabelled_group(
    name: str, images: np.ndarray, tags: list[str], *, meta: dict, path: Path | None
) -> ImageGroup:
    """A group of images without a class (one source each), saved to ``path`` where given."""
    count = len(tags)
    group = make_group(name, images, [NO_LABEL] * count, [-1] * count, [-1] * count, tags, meta=meta)
    if path is not None:
        group.save(path)
    return group


def fool_gd_group(
    backbone: Backbone,
    count: int = 16,
    steps: int = 20,
    lr: float = 0.02,
    l2: float = 0.01,
    seed: int = 0,
    cache: Path | None = None,
) -> ImageGroup:
    """Fool_GD: from the mean image, Adam ascent on log p(target) - l2 * ||x - mean||^2 per random target.

    Only the classifier crop is optimised (the border keeps the mean colour); the result is rounded to
    uint8 as any served image would be.
    """
    from fitguard.classifier import softmax

    key = stable_key(
        "fool_gd/1", backbone.name, backbone.weights_id, count, steps, lr, l2, seed, *head_key(backbone)
    )
    path = cached_path(cache, "fool_gd", key)
    if path is not None and path.exists():
        return ImageGroup.load(path)
    t0 = time.perf_counter()
    n = backbone.num_classes  # a team's head may have fewer classes than fooling images
    targets = np.random.default_rng(seed).choice(n, size=count, replace=count > n)
    base = mean_canvas(backbone)
    crop = backbone.preset.crop
    o = center_offset(base.shape[0], crop)
    crops = _gd_ascent(backbone, classifier_batch(base[None], crop), targets, steps=steps, lr=lr, l2=l2)
    images = np.repeat(base[None], count, axis=0)
    images[:, o : o + crop, o : o + crop] = crops
    probs = softmax(predict_logits(backbone, images))
    conf = probs[np.arange(count), targets]
    meta = {
        "steps": steps,
        "lr": lr,
        "l2": l2,
        "seed": seed,
        "target_hit_rate": float(np.mean(probs.argmax(1) == targets)),
        "median_target_confidence": float(np.median(conf)),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return _unlabelled_group(FOOL_GD, images, [f"target={t}" for t in targets], meta=meta, path=path)


def polynomial_mutation(
    genes: np.ndarray,
    rate: float,
    eta: float,
    rng: np.random.Generator,
    low: float = 0.0,
    high: float = 255.0,
) -> np.ndarray:
    """Deb's polynomial mutation; each gene mutates at ``rate``; larger ``eta``, smaller steps."""
    x = genes.astype(np.float32)
    u = rng.random(x.shape, dtype=np.float32)
    delta = np.where(u < 0.5, (2 * u) ** (1 / (eta + 1)) - 1, 1 - (2 * (1 - u)) ** (1 / (eta + 1)))
    mask = rng.random(x.shape) < rate
    return np.clip(np.where(mask, x + delta * (high - low), x), low, high)


class _Elites:
    """MAP-Elites' archive: per class, the genome whose rendering the classifier gives the highest
    probability so far."""

    def __init__(self, backbone: Backbone, *, side: int, grid: int) -> None:
        self.backbone, self.side, self.grid = backbone, side, grid
        n = backbone.num_classes
        self.best_fit = np.zeros(n, np.float32)
        self.best = np.zeros((n, grid, grid, 3), np.uint8)
        self.filled = np.zeros(n, bool)

    def render(self, genomes: np.ndarray) -> np.ndarray:
        k = self.side // self.grid
        return np.repeat(np.repeat(genomes, k, axis=1), k, axis=2)

    def evaluate(self, genomes: np.ndarray) -> None:
        """Each class's elite gives way to the genome with that class's highest probability, if higher."""
        from fitguard.classifier import softmax

        probs = softmax(predict_logits(self.backbone, self.render(genomes)))
        for c in range(probs.shape[1]):
            j = int(probs[:, c].argmax())
            if probs[j, c] > self.best_fit[c]:
                self.best_fit[c], self.best[c], self.filled[c] = probs[j, c], genomes[j], True


def fool_ev_group(
    backbone: Backbone,
    count: int = 16,
    generations: int = 20,
    batch: int = 32,
    grid: int = 32,
    rate: float = 0.1,
    eta: float = 15.0,
    seed: int = 0,
    cache: Path | None = None,
) -> ImageGroup:
    """Fool_EV: MAP-Elites over the classifier's classes with a direct pixel encoding (Nguyen et al. 2015).

    A genome is a ``grid`` x ``grid`` x 3 array of pixel values shown as blocks on the canvas (coarser
    than one gene per pixel, so a CPU budget of ``generations`` x ``batch`` evaluations moves the
    elites). Genes start uniform in [0, 255] and change by polynomial mutation at ``rate``. Each child
    replaces the elite of every class whose probability it beats; the group is the ``count`` fittest
    elites, one per class.
    """
    key = stable_key(
        "fool_ev/1",
        backbone.name,
        backbone.weights_id,
        count,
        generations,
        batch,
        grid,
        rate,
        eta,
        seed,
        *head_key(backbone),
    )
    path = cached_path(cache, "fool_ev", key)
    if path is not None and path.exists():
        return ImageGroup.load(path)
    t0 = time.perf_counter()
    side = backbone.preset.resize
    if side % grid:
        raise ValueError(f"grid {grid} must divide the canvas side {side}")
    rng = np.random.default_rng(seed)
    elites = _Elites(backbone, side=side, grid=grid)
    elites.evaluate(rng.integers(0, 256, size=(batch, grid, grid, 3), dtype=np.uint8))
    for _ in tqdm(range(generations - 1), desc="fool_ev: MAP-Elites", leave=False):
        parents = elites.best[rng.choice(np.flatnonzero(elites.filled), size=batch)]
        elites.evaluate(np.rint(polynomial_mutation(parents, rate, eta, rng)).astype(np.uint8))
    chosen = np.argsort(-elites.best_fit, kind="stable")[:count]
    images = elites.render(elites.best[chosen])
    meta = {
        "generations": generations,
        "batch": batch,
        "evaluations": generations * batch,
        "grid": grid,
        "rate": rate,
        "eta": eta,
        "seed": seed,
        "classes_filled": int(elites.filled.sum()),
        "median_confidence": float(np.median(elites.best_fit[chosen])),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return _unlabelled_group(FOOL_EV, images, [f"class={c}" for c in chosen], meta=meta, path=path)
