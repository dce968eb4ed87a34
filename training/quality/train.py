"""``fitguard train iqa``: train the DTNIQ-f quality head on cached backbone features.

Steps: load a dataset (TID2013, KADID-10k, or synthetic distortions of scenes labelled by a
full-reference metric), compute the frozen backbone's features of every patch once (cached on disk),
then train :class:`fitguard.quality.QualityHead` with cross-entropy over 70 score bins. ``--splits``
splits by scene (repeated k-fold, :mod:`fitguard.training.quality.evaluate`) measure SRCC/PLCC, ordering and
calibration on held-out scenes, for the head and the BRISQUE baseline, and one head per distortion kind
is trained without that kind; the head written to ``--out`` is then trained on all scenes. torch is
imported inside functions only.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.contract import DEFAULT_PATCHES, PATCHES_MODE, QUALITY_MODES, SHARED_MODE
from fitguard.training.quality.evaluate import (
    EVALUATION,
    SPLIT_SCHEME,
    Fit,
    Labels,
    left_out_kinds,
    reference_splits,
    scene_protocol,
)
from fitguard.training.quality.head import HeadConfig, default_head_config, head_fit, train_head

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# The whole run: data -> cached features -> scene protocol, baseline, left-out kinds -> final head
# --------------------------------------------------------------------------------------------------


def _features(
    items: list, backbone: str, weights: str | None, patches: int, cache_dir, device, progress, mode: str
):
    from fitguard.backbones import build_backbone
    from fitguard.training.quality.features import feature_cache_dir, patch_features

    net = build_backbone(backbone, weights)
    cache = Path(cache_dir) if cache_dir is not None else feature_cache_dir()
    feats, unique = patch_features(
        [it.load for it in items], net, patches, cache, device=device, progress=progress, mode=mode
    )
    return net, feats, unique


def _patches_for(quality_features: str, patches: int) -> int:
    """P for the mode: the shared mode reads one view, the classifier's centre crop."""
    if quality_features not in QUALITY_MODES:
        raise ValueError(f"unknown quality mode {quality_features!r}; choose from {', '.join(QUALITY_MODES)}")
    return 1 if quality_features == SHARED_MODE else patches


def _final_config(config: HeadConfig, evaluation: dict[str, Any]) -> HeadConfig:
    """The final head trains on every scene for the median of the splits' early-stopped epoch counts."""
    epochs = [s["best_epoch"] for s in evaluation["splits"]]
    return replace(config, epochs=int(np.median(epochs)) if epochs else config.epochs, val_fraction=0.0)


def train_iqa(
    backbone: str = "efficientnet_lite0",
    dataset: str = "scenes",
    out: str | Path = "quality_head.pt",
    root: str | Path | None = None,
    photos: str | Path | None = None,
    patches: int = DEFAULT_PATCHES,
    splits: int = 10,
    seed: int = 0,
    weights: str | None = "default",
    cache_dir: str | Path | None = None,
    views: int | None = None,
    config: HeadConfig | None = None,
    device: str | None = None,
    progress: bool = True,
    quick: bool = False,
    baseline: bool = True,
    left_out: bool = True,
    quality_features: str = PATCHES_MODE,
) -> dict[str, Any]:
    """Train and evaluate a quality head; write the head, ``<out>.metrics.json`` and the figures.

    ``splits`` splits by scene (repeated k-fold) give held-out SRCC/PLCC, ordering and calibration
    (:func:`fitguard.training.quality.evaluate.scene_protocol`); ``baseline`` measures BRISQUE on the same
    splits; ``left_out`` trains one head per distortion kind without it. The head written to ``out`` is
    then trained on all scenes for the median of the splits' early-stopped epoch counts. ``splits=0``
    evaluates nothing and fits the head once, early-stopped on a held-out share of the scenes (what
    ``fitguard build`` ships; ``make report`` runs the evaluation). ``config``
    defaults to :func:`fitguard.training.quality.head.default_head_config`; ``quick`` trains a small set
    (6 views per scene, 2 splits) for tests that need some head. ``quality_features``: ``patches`` (P
    patches per image) or ``shared`` (the classifier's centre crop, as served). Returns the metrics.
    """
    from fitguard.training.quality.data import SYNTHETIC_SETS, label_name, load_quality_set
    from fitguard.training.quality.report import write_outputs

    patches = _patches_for(quality_features, patches)
    args = {k: v if v is None or isinstance(v, int | float | str) else str(v) for k, v in locals().items()}
    args.pop("config"), args.pop("progress")
    lap = _stopwatch()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if quick:
        views, splits = 6 if views is None else views, min(splits, 2)
    config = default_head_config(dataset) if config is None else config
    items = load_quality_set(dataset, root=root, photos=photos, views=views, seed=seed, progress=progress)
    labels = Labels.from_items(items)
    lap("data")
    net, feats, unique = _features(
        items, backbone, weights, patches, cache_dir, device, progress, quality_features
    )
    lap("features")
    # Synthetic sets validate on views rather than scenes (see train_head).
    if splits:
        val_groups = labels.views if dataset in SYNTHETIC_SETS else None
        fit = head_fit(feats, unique, labels, config, seed, val_groups)
        split_list = reference_splits(labels.references, splits, seed=seed)
        evaluation, held_out = _evaluate(fit, items, labels, split_list, baseline, left_out, progress, lap)
        final_config = _final_config(config, evaluation)
    else:  # fitted once, early-stopped on a held-out share of the scenes: what a build ships
        evaluation, held_out, final_config = {"splits": []}, [], config
    all_idx = np.arange(len(items))
    head, _ = train_head(feats, unique, labels.scores, labels.references, all_idx, final_config, seed=seed)
    lap("final")
    references = int(len(np.unique(labels.references)))
    metrics: dict[str, Any] = {
        "dataset": dataset,
        "backbone": backbone,
        "weights_id": net.weights_id,
        "images": len(items),
        "references": references,
        "patches": patches,
        "quality_features": quality_features,
        "split_scheme": SPLIT_SCHEME,
        "evaluation": EVALUATION,
        **evaluation,
        "final_head": f"trained on all {references} references for {final_config.epochs} epochs",
        "label": label_name(dataset),
        "score_range": [0.0, 1.0],
        "higher_is_better": True,
        "head_config": asdict(config),
        "args": args,
        "seconds": lap(None),
        "torch_threads": _threads(),
    }
    write_outputs(out, head, net, metrics, labels, held_out)
    return metrics


def _stopwatch():
    """``lap(name)`` records the seconds since the last lap under ``name``; ``lap(None)`` returns all,
    with the total and the process's CPU seconds (all threads: on a loaded machine, CPU seconds over
    the thread count estimate the time on free cores better than the wall clock does)."""
    t0 = last = time.perf_counter()
    cpu0 = time.process_time()
    laps: dict[str, float] = {}

    def lap(name: str | None) -> dict[str, float]:
        nonlocal last
        now = time.perf_counter()
        if name is None:
            return {**laps, "total": round(now - t0, 1), "cpu": round(time.process_time() - cpu0, 1)}
        laps[name], last = round(now - last, 1), now
        return laps

    return lap


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _evaluate(fit: Fit, items, labels: Labels, splits, baseline: bool, left_out: bool, progress: bool, lap):
    """The scene protocol, then the baseline and the left-out kinds where asked."""
    say = print if progress else log.info
    summary, held_out = scene_protocol(fit, labels, splits, log=say)
    lap("splits")
    if baseline:
        from fitguard.training.quality.brisque import brisque_protocol

        summary["baseline"] = brisque_protocol(items, labels, splits, held_out, log=say)
        lap("baseline")
    if left_out:
        summary["left_out_kinds"] = left_out_kinds(fit, labels, splits, included=summary["splits"], log=say)
        lap("left_out")
    return summary, held_out


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    from fitguard.training.quality.data import QUALITY_SETS

    add = parser.add_argument
    add("--backbone", default="efficientnet_lite0", help="backbone name (default: %(default)s)")
    add("--dataset", choices=QUALITY_SETS, default="scenes", help="(default: %(default)s)")
    add("--root", help="dataset folder in its published layout (tid2013, kadid10k)")
    add("--photos", help="synthetic: folder of reference photos (default: package-shipped photos)")
    add("--out", required=True, help="quality-head file to write")
    add("--patches", type=int, default=DEFAULT_PATCHES, help="IQA patches per image (%(default)s)")
    add(
        "--quality-features",
        choices=QUALITY_MODES,
        default=SHARED_MODE,
        help="what the head reads: the classifier's centre crop (shared, one backbone pass per image, as "
        "the build serves it) or P patches (the paper's DTNIQ-f)",
    )
    add(
        "--splits",
        type=int,
        default=10,
        help="splits by scene, repeated k-fold (%(default)s); 0 fits the head once and evaluates nothing",
    )
    add("--seed", type=int, default=0)
    add("--weights", default="default", help="backbone weights: default, imagenet, a path, random")
    add("--cache-dir", help="feature cache (default: $FITGUARD_CACHE/features or ~/.cache/fitguard)")
    add("--views", type=int, help="scenes, synthetic: views per scene (default: about 6,240 images in all)")
    add("--epochs", type=int, default=HeadConfig.epochs, help="maximum epochs (%(default)s)")
    add("--hidden", type=int, help="head width (default: 2048 as in the paper; 512 on scenes, synthetic)")
    add("--no-baseline", action="store_true", help="skip the BRISQUE baseline")
    add("--no-left-out", action="store_true", help="skip the heads trained with one distortion kind left out")
    add("--device", help="torch device for features (default: cuda if available, else cpu)")
    add("--threads", type=int, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    hidden = args.hidden or default_head_config(args.dataset).hidden
    m = train_iqa(
        backbone=args.backbone,
        dataset=args.dataset,
        out=args.out,
        root=args.root,
        photos=args.photos,
        patches=args.patches,
        splits=args.splits,
        seed=args.seed,
        weights=args.weights,
        cache_dir=args.cache_dir,
        views=args.views,
        config=HeadConfig(hidden=hidden, epochs=args.epochs),
        device=args.device,
        baseline=not args.no_baseline,
        left_out=not args.no_left_out,
        quality_features=args.quality_features,
    )
    line = f"{m['backbone']} on {m['dataset']} ({m['images']} images, {m['references']} references)"
    if m["splits"]:
        line += (
            f", {len(m['splits'])} splits: SRCC {m['srcc_mean']:.4f} ± {m['srcc_std']:.4f}, "
            f"PLCC {m['plcc_mean']:.4f} ± {m['plcc_std']:.4f}"
        )
    print(f"{line}; {m['seconds']['total']:.0f} s")
    print(f"wrote {args.out} and its .metrics.json, .scatter.png, .levels.png")
    return 0
