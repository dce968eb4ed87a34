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
import inspect
import logging
import time
from dataclasses import asdict, dataclass, replace
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


def _features(items: list, net: Any, patches: int, cache_dir, progress, mode: str):
    from fitguard.training.quality.features import feature_cache_dir, patch_features

    cache = Path(cache_dir) if cache_dir is not None else feature_cache_dir()
    feats, unique = patch_features(
        [it.load for it in items], net, patches, cache, progress=progress, mode=mode
    )
    return feats, unique


def _backbone(backbone: str, weights: str | None, classifier: Any) -> Any:
    from fitguard.backbones import build_backbone, build_classifier

    return build_classifier(classifier) if classifier is not None else build_backbone(backbone, weights)


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
    progress: bool = True,
    quick: bool = False,
    baseline: bool = True,
    left_out: bool = True,
    quality_features: str = PATCHES_MODE,
    classifier: Any = None,
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
    patches per image) or ``shared`` (the classifier's centre crop, as served). ``classifier``, a
    :class:`fitguard.classifier_spec.ClassifierSpec`, names the backbone, its weights and preset instead
    of ``backbone`` and ``weights``. Returns the metrics.
    """
    from fitguard.training.quality.data import SYNTHETIC_SETS, label_name, load_quality_set
    from fitguard.training.quality.report import write_outputs

    patches = _patches_for(quality_features, patches)
    args = _recorded(locals())
    lap = _stopwatch()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if quick:
        views, splits = 6 if views is None else views, min(splits, 2)
    config = default_head_config(dataset) if config is None else config
    items = load_quality_set(dataset, root=root, photos=photos, views=views, seed=seed, progress=progress)
    labels = Labels.from_items(items)
    lap("data")
    net = _backbone(backbone, weights, classifier)
    feats, unique = _features(items, net, patches, cache_dir, progress, quality_features)
    lap("features")
    # Synthetic sets validate on views rather than scenes (see train_head).
    val_groups = labels.views if dataset in SYNTHETIC_SETS else None
    protocol = _Protocol(splits=splits, seed=seed, baseline=baseline, left_out=left_out, progress=progress)
    heads = _train_heads(feats, unique, items, labels, config, val_groups, protocol=protocol, lap=lap)
    run = _Run(dataset=dataset, backbone=net.name, patches=patches, quality_features=quality_features)
    metrics = _metrics(
        run, heads, net=net, labels=labels, config=config, label=label_name(dataset), args=args, lap=lap
    )
    write_outputs(out, heads.head, net, metrics, labels, heads.held_out)
    return metrics


def _recorded(params: dict[str, Any]) -> dict[str, Any]:
    """``train_iqa``'s arguments as the metrics file records them: None, numbers and text as they are, the
    rest as text, without the head config (recorded on its own) and the progress flag."""
    names = set(inspect.signature(train_iqa).parameters) - {"config", "progress", "classifier"}
    out = {
        k: v if v is None or isinstance(v, int | float | str) else str(v)
        for k, v in params.items()
        if k in names
    }
    spec = params.get("classifier")
    if spec is not None and not spec.is_plain:  # metrics of a plain name keep their earlier form
        out.update(backbone=spec.name, weights=spec.weights, classifier={**spec.to_dict(), **spec.stamp()})
    return out


@dataclass(frozen=True)
class _Protocol:
    """What ``train_iqa`` measures before it trains the head it writes (its arguments of these names)."""

    splits: int
    seed: int
    baseline: bool
    left_out: bool
    progress: bool


@dataclass(frozen=True)
class _Heads:
    """The head ``train_iqa`` writes, the config it trained with, and what the protocol measured first."""

    head: Any
    config: HeadConfig
    evaluation: dict[str, Any]
    held_out: list


def _train_heads(
    feats: np.ndarray,
    unique: np.ndarray,
    items: list,
    labels: Labels,
    config: HeadConfig,
    val_groups: np.ndarray | None,
    *,
    protocol: _Protocol,
    lap,
) -> _Heads:
    """The protocol where ``protocol.splits`` asks for it, then the head trained on every scene."""
    seed = protocol.seed
    if protocol.splits:
        fit = head_fit(feats, unique, labels, config, seed, val_groups)
        split_list = reference_splits(labels.references, protocol.splits, seed=seed)
        evaluation, held_out = _evaluate(
            fit, items, labels, split_list, protocol.baseline, protocol.left_out, protocol.progress, lap
        )
        final_config = _final_config(config, evaluation)
    else:  # fitted once, early-stopped on a held-out share of the scenes: what a build ships
        evaluation, held_out, final_config = {"splits": []}, [], config
    all_idx = np.arange(len(items))
    head, _ = train_head(feats, unique, labels.scores, labels.references, all_idx, final_config, seed=seed)
    lap("final")
    return _Heads(head=head, config=final_config, evaluation=evaluation, held_out=held_out)


@dataclass(frozen=True)
class _Run:
    """What the metrics file names first: the data set and the features the head reads."""

    dataset: str
    backbone: str
    patches: int
    quality_features: str


def _metrics(
    run: _Run,
    heads: _Heads,
    *,
    net: Any,
    labels: Labels,
    config: HeadConfig,
    label: str,
    args: dict[str, Any],
    lap,
) -> dict[str, Any]:
    """The metrics file's content (``lap(None)`` gives its seconds)."""
    references = int(len(np.unique(labels.references)))
    return {
        "dataset": run.dataset,
        "backbone": run.backbone,
        "weights_id": net.weights_id,
        "images": len(labels.scores),
        "references": references,
        "patches": run.patches,
        "quality_features": run.quality_features,
        "split_scheme": SPLIT_SCHEME,
        "evaluation": EVALUATION,
        **heads.evaluation,
        "final_head": f"trained on all {references} references for {heads.config.epochs} epochs",
        "label": label,
        "score_range": [0.0, 1.0],
        "higher_is_better": True,
        "head_config": asdict(config),
        "args": args,
        "seconds": lap(None),
        "torch_threads": _threads(),
    }


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
    from fitguard.classifier_spec import add_classifier_arguments
    from fitguard.training.quality.data import QUALITY_SETS

    add = parser.add_argument
    add_classifier_arguments(parser)
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
    add("--cache-dir", help="feature cache (default: $FITGUARD_CACHE/features or ~/.cache/fitguard)")
    add("--views", type=int, help="scenes, synthetic: views per scene (default: about 6,240 images in all)")
    add("--epochs", type=int, default=HeadConfig.epochs, help="maximum epochs (%(default)s)")
    add("--hidden", type=int, help="head width (default: 2048 as in the paper; 512 on scenes, synthetic)")
    add("--no-baseline", action="store_true", help="skip the BRISQUE baseline")
    add("--no-left-out", action="store_true", help="skip the heads trained with one distortion kind left out")
    add("--threads", type=int, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    from fitguard.classifier_spec import checked_spec

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    hidden = args.hidden or default_head_config(args.dataset).hidden
    spec = checked_spec(args, "fitguard train iqa")
    if spec is None:
        return 2
    m = train_iqa(
        classifier=spec,
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
