"""``fitguard train detector --recipe paper``: build the groups, run the paper's protocol, write the SVM
detector file.

The steps live in their own modules of this package: :mod:`.groups` (the images), :mod:`.features`
(what the served models say about them), :mod:`.svm` (the SVM, its search and threshold) and
:mod:`.protocol` (the ten-repeat pair protocol). The file is fitted on all pairs; its meta records the
ten-repeat held-out results that estimate how it performs.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fitguard.cache import cache_root
from fitguard.contract import DEFAULT_PATCHES, TOP_K
from fitguard.detector import FIT_LABEL, Detector, save_detector
from fitguard.training.image_groups import ADVERSARIAL, ORIGINALS, GroupConfig, ImageGroup
from fitguard.training.paper.features import (
    FeatureModels,
    GroupFeatures,
    compute_features,
    load_feature_models,
)
from fitguard.training.paper.groups import add_group_arguments, build_groups
from fitguard.training.paper.protocol import (
    REPEATS,
    mixed_held_out,
    run_protocol,
    split_groups,
    summarize,
    training_rows,
    with_extra_unfit,
)
from fitguard.training.paper.svm import DEFAULT_TARGET_FAR, HYPERPARAMETERS, fit_detector

log = logging.getLogger(__name__)
HELD_OUT_KEYS = ("adv_detection_rate", "clean_pass_rate", "adv_accuracy_fit", "auroc")


def prepare_training_data(
    models: FeatureModels,
    images: str | Path | None,
    config: GroupConfig,
    patches: int,
    cache: Path | None,
    names: tuple[str, ...] = (ORIGINALS, ADVERSARIAL),
) -> tuple[dict[str, ImageGroup], dict[str, GroupFeatures]]:
    groups = build_groups(models.backbone, images, names, config, cache)
    feats = {n: compute_features(models, g, patches, cache=cache) for n, g in groups.items()}
    return groups, feats


def fit_shipped(
    *,
    groups: dict[str, ImageGroup],
    feats: dict[str, GroupFeatures],
    unfit_groups: tuple[str, ...],
    split_by: str,
    seed: int,
    target_far: float | None,
) -> tuple[Detector, dict[str, Any] | None]:
    """The detector fitted on every row of the recipe, and the recipe measured on one held-out split."""
    extra = [n for n in unfit_groups if n != ADVERSARIAL]
    gid = split_groups(groups[ORIGINALS], split_by)
    x, y, g = training_rows(feats[ORIGINALS], feats[ADVERSARIAL], gid)
    if ADVERSARIAL not in unfit_groups:  # originals alone as the fit class
        x, y, g = x[y == FIT_LABEL], y[y == FIT_LABEL], g[y == FIT_LABEL]
    held_out = None
    if extra:
        x, y, g = with_extra_unfit(x, y, g, [(groups[n], feats[n]) for n in extra], split_by)
        held_out = mixed_held_out(
            x=x,
            y=y,
            g=g,
            groups=groups,
            feats=feats,
            extra=extra,
            gid=gid,
            seed=seed,
            target_far=target_far,
            split_by=split_by,
        )
    return fit_detector(x, y, g, target_far), held_out


def _held_out(
    groups: dict[str, ImageGroup],
    feats: dict[str, GroupFeatures],
    *,
    repeats: int,
    seed: int,
    split_by: str,
    target_far: float | None,
) -> dict[str, Any]:
    """The paper's protocol on the adversarial pairs, summarised over its repeats."""
    runs = run_protocol(
        groups[ORIGINALS], feats[ORIGINALS], feats[ADVERSARIAL], repeats, seed, split_by, target_far
    )
    return {k: summarize([r[k] for r in runs]) for k in HELD_OUT_KEYS}


def _summary(
    args: dict[str, Any],
    *,
    models: FeatureModels,
    groups: dict[str, ImageGroup],
    det: Detector,
    held_out: dict[str, Any],
    mixed: dict[str, Any] | None,
    unfit_groups: tuple[str, ...],
) -> dict[str, Any]:
    """What ``train_detector`` writes beside the detector file (the caller adds the timings)."""
    return {
        "args": args,
        "weights_id": models.backbone.weights_id,
        "features": f"top-{TOP_K} sorted probabilities + quality",
        "originals": groups[ORIGINALS].meta,
        "adversarial": groups[ADVERSARIAL].meta,
        "n_pairs": len(groups[ORIGINALS]),
        "hyperparameters": {k: det.meta[k] for k in HYPERPARAMETERS},
        "threshold": det.threshold,
        "held_out": held_out,
        "unfit_groups": list(unfit_groups),
        "mixed_held_out": mixed,
    }


def _record_in_meta(
    det: Detector,
    args: dict[str, Any],
    *,
    models: FeatureModels,
    groups: dict[str, ImageGroup],
    summary: dict[str, Any],
) -> None:
    """What the served detector file carries of its training: the backbone and head it expects, the
    protocol's arguments and held-out results, and the unfit groups it learnt."""
    det.meta.update(
        {
            "backbone": args["backbone"],
            "weights_id": models.backbone.weights_id,
            **{k: args[k] for k in ("patches", "split_by", "repeats", "seed")},
            "head_key": models.key,
            "held_out": summary["held_out"],
            "fooling_rate": groups[ADVERSARIAL].meta.get("fooling_rate"),
            "unfit_groups": list(summary["unfit_groups"]),
            "mixed_held_out": summary["mixed_held_out"],
        }
    )


def _write(out: Path, det: Detector, summary: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    save_detector(out, det)
    out.with_name(out.name + ".json").write_text(json.dumps(summary, indent=2, default=float) + "\n")


def train_detector(
    backbone: str,
    head: str | Path,
    out: str | Path,
    images: str | Path | None = None,
    weights: str | None = "default",
    patches: int = DEFAULT_PATCHES,
    target_far: float | None = DEFAULT_TARGET_FAR,
    repeats: int = REPEATS,
    split_by: str = "photo",
    seed: int = 0,
    cache: str | Path | None = None,
    config: GroupConfig | None = None,
    unfit_groups: tuple[str, ...] = (ADVERSARIAL,),
) -> dict[str, Any]:
    """Build the groups, run the ten-repeat protocol, fit on all pairs, write ``out`` and ``out``.json.

    ``unfit_groups`` names the groups the shipped detector learns as unfit. The paper uses adversarial
    images alone (the default); adding ``distorted`` and the fooling groups makes a detector that also
    refuses what it was never shown in the paper's protocol. The ten-repeat protocol always runs on the
    adversarial pairs; with more groups, one extra photo-level split measures the mixed detector held out.

    Returns:
        The summary written beside the detector (arguments, sizes, fooling rate, held-out results).
    """
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.perf_counter()
    config = config or GroupConfig(seed=seed)
    args = {
        "backbone": backbone,
        "iqa_head": str(head),
        "images": None if images is None else str(images),
        **{"weights": weights, "patches": patches, "target_far": target_far, "repeats": repeats},
        **{"split_by": split_by, "seed": seed, "groups": asdict(config)},
    }
    cache_dir = Path(cache) if cache is not None else cache_root()
    models = load_feature_models(backbone, head, weights)
    # One pass: the extra groups derive from the same originals.
    names = (ORIGINALS, ADVERSARIAL, *(n for n in unfit_groups if n != ADVERSARIAL))
    groups, feats = prepare_training_data(models, images, config, patches, cache_dir, names)
    t_data = time.perf_counter() - t0
    held_out = _held_out(groups, feats, repeats=repeats, seed=seed, split_by=split_by, target_far=target_far)
    det, mixed = fit_shipped(
        groups=groups,
        feats=feats,
        unfit_groups=unfit_groups,
        split_by=split_by,
        seed=seed,
        target_far=target_far,
    )
    summary = _summary(
        args, models=models, groups=groups, det=det, held_out=held_out, mixed=mixed, unfit_groups=unfit_groups
    )
    summary["seconds"] = {"data": round(t_data, 1), "total": round(time.perf_counter() - t0, 1)}
    _record_in_meta(det, args, models=models, groups=groups, summary=summary)
    _write(Path(out), det, summary)
    return summary


def configure(parser: argparse.ArgumentParser) -> None:
    from fitguard.classifier_spec import add_classifier_arguments

    add_classifier_arguments(parser, required=True)  # the paper recipe reads --backbone and --weights
    parser.add_argument("--iqa-head", required=True, help="quality head file (fitguard train iqa)")
    parser.add_argument(
        "--out", required=True, help="detector file to write (a .json summary goes beside it)"
    )
    add_group_arguments(parser, weights=False)
    parser.add_argument(
        "--target-far",
        type=float,
        default=DEFAULT_TARGET_FAR,
        help="share of clean training images the threshold may flag; negative: SVM boundary",
    )
    parser.add_argument("--repeats", type=int, default=REPEATS, help="protocol repeats")
    parser.add_argument(
        "--split-by",
        choices=("photo", "pair"),
        default="photo",
        help="keep whole photos (all their views) or single pairs on one side of a split",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--unfit-groups",
        default="adversarial",
        help="comma-separated groups learnt as unfit: adversarial (the paper), distorted, fool_gd, fool_ev",
    )


def config_from_args(args: argparse.Namespace) -> GroupConfig:
    return GroupConfig(views=args.views, labels_file=args.labels, limit=args.limit, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = train_detector(
        backbone=args.backbone,
        head=args.iqa_head,
        out=args.out,
        images=args.images,
        weights=args.weights,
        patches=args.patches,
        target_far=None if args.target_far < 0 else args.target_far,
        repeats=args.repeats,
        split_by=args.split_by,
        seed=args.seed,
        cache=args.cache,
        config=config_from_args(args),
        unfit_groups=tuple(n.strip() for n in args.unfit_groups.split(",") if n.strip()),
    )
    h = summary["held_out"]
    fooling = summary["adversarial"]["fooling_rate"]
    print(
        f"wrote {args.out}: {summary['n_pairs']} pairs, UAP fooling rate {fooling:.3f}, "
        f"held-out over {args.repeats} repeats: adversarial detection {h['adv_detection_rate']['mean']:.3f} "
        f"+- {h['adv_detection_rate']['std']:.3f}, clean passed {h['clean_pass_rate']['mean']:.3f}, "
        f"AUROC {h['auroc']['mean']:.3f}; {summary['seconds']['total']:.0f} s"
    )
    return 0
