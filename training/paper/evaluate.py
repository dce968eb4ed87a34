"""``fitguard evaluate``: the paper's evaluation (Tables IV and V, Fig. 3) and today's baselines, as a report.

Everything is measured on the groups of :mod:`fitguard.training.paper.groups` with features computed as the
server computes them (:func:`fitguard.training.paper.train.compute_features`). The detector file supplies
the recipe (split unit, repeats, seed, threshold rule); the ten repeats of the pair protocol are rerun
here so every held-out number comes with its spread:

- per repeat, a detector (top-5 + quality) and an SVM on top-5 alone are fitted on the training half of
  the pairs; originals and adversarial images of the test half, distorted images made from test-half
  originals, and all fooling images are scored;
- methods (higher score = more unfit): ``detector``, ``svm_top5``, ``quality`` (negated DTNIQ-f score),
  ``msp`` and ``energy`` (pytorch-ood's ``MaxSoftmax`` / ``EnergyBased`` on the classifier logits);
- per group and method: AUROC and FPR at 95% TPR against the test-half clean originals, and the
  detection rate at fixed clean false-alarm rates (5% and the paper's 8.57% = 1 - 91.43%), the
  threshold being the matching quantile of the clean test scores;
- operating points: the detector's own threshold (from training), baseline-2 (quality < 0.3);
- selective classification on clean + distorted test images: risk-coverage, AURC, accuracy at 80/90/95%
  coverage;
- Fig. 3: KDE of quality against the Wu-Palmer similarity of clean and degraded predictions.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fitguard.cache import cache_root
from fitguard.contract import DEFAULT_PATCHES
from fitguard.training.image_groups import (
    ADVERSARIAL,
    DISTORTED,
    FOOLING_GROUPS,
    GROUPS,
    LABELLED_GROUPS,
    ORIGINALS,
    UNFIT_GROUPS,
    GroupConfig,
    ImageGroup,
)
from fitguard.training.paper.features import GroupFeatures, compute_features, load_feature_models
from fitguard.training.paper.groups import add_group_arguments, build_groups
from fitguard.training.paper.protocol import (
    FARS,
    METHODS,
    QUALITY_THRESHOLD,
    REPEATS,
    Accumulator,
    collapse,
    fit_all_groups,
    run_protocol,
    split_groups,
    test_rows,
)
from fitguard.training.paper.report import METHOD_NAMES, comparisons, group_notes, write_plots, write_report
from fitguard.training.paper.scoring import (
    TOP5,
    add_clean_points,
    add_method_metrics,
    add_operating_points,
    add_selective,
    base_scores,
    score_rows,
)
from fitguard.training.paper.svm import HYPERPARAMETERS

log = logging.getLogger(__name__)
QUALITY_REFUSAL_GROUPS: tuple[str, ...] = (DISTORTED, *FOOLING_GROUPS)

# --------------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------------


def evaluate_scores(
    groups: dict[str, ImageGroup],
    feats: dict[str, GroupFeatures],
    repeats: int = REPEATS,
    seed: int = 0,
    split_by: str = "photo",
    target_far: float | None = 0.05,
    recipe: tuple[str, ...] = UNFIT_GROUPS,
) -> dict[str, Any]:
    """All held-out numbers of the report from groups and their features (no plotting, no I/O).

    ``recipe`` names the unfit groups ``detector_all`` learns: the shipped detector's, so the report
    measures the recipe that is deployed beside the paper's.
    """
    gid = split_groups(groups[ORIGINALS], split_by)
    present = [g for g in UNFIT_GROUPS if g in groups]
    scored = [ORIGINALS, *present]
    protocol = {
        "originals": groups[ORIGINALS],
        "orig_feats": feats[ORIGINALS],
        "adv_feats": feats[ADVERSARIAL],
    }
    common = {"repeats": repeats, "seed": seed, "split_by": split_by, "target_far": target_far}
    full = run_protocol(**protocol, **common, progress="protocol: detector")
    top5 = run_protocol(**protocol, **common, columns=TOP5, progress="protocol: svm_top5")
    base = {g: base_scores(feats[g]) for g in scored}
    x = {g: feats[g].features for g in scored}
    correct = {g: feats[g].top1 == groups[g].labels for g in [ORIGINALS, *LABELLED_GROUPS] if g in groups}
    acc = Accumulator()
    curves: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    grid = np.linspace(0.01, 1.0, 100)
    roc_example: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    for r in tqdm(range(repeats), desc="evaluate repeats", leave=False):
        fool_test = {
            g: rng.permutation(len(groups[g])) < len(groups[g]) // 2 for g in present if g in FOOLING_GROUPS
        }
        det_all = fit_all_groups(groups, x, gid, full[r]["train_ids"], fool_test, target_far, recipe)
        dets = {"detector": full[r]["detector"], "detector_all": det_all, "svm_top5": top5[r]["detector"]}
        rows = {g: test_rows(g, groups[g], gid, full[r]["test_ids"], fool_test.get(g)) for g in scored}
        scores, fit_op = {}, {}
        for g in scored:
            base_rows = {m: s[rows[g]] for m, s in base[g].items()}
            scores[g], fit_op[g] = score_rows(dets, x[g][rows[g]], base_rows, feats[g].quality[rows[g]])
        clean = scores[ORIGINALS]
        if r == 0:
            roc_example = {g: {m: (clean[m], scores[g][m]) for m in METHODS} for g in present}
        for g in present:
            ok = correct[g][rows[g]] if g in correct else None
            add_method_metrics(acc, g, scores[g], clean, ok)
            tags = groups[g].tags[rows[g]] if g == DISTORTED else None
            add_operating_points(acc, g, fit_op[g], ok, tags)
        add_clean_points(acc, fit_op[ORIGINALS], dets)
        if DISTORTED in present:
            ok_mix = np.concatenate(
                [correct[ORIGINALS][rows[ORIGINALS]], correct[DISTORTED][rows[DISTORTED]]]
            )
            add_selective(acc, curves, clean, scores[DISTORTED], ok_mix, grid)
    return _collapsed(acc, full=full, top5=top5, grid=grid, curves=curves, roc_example=roc_example)


def _collapsed(
    acc: Accumulator, *, full: list, top5: list, grid: np.ndarray, curves: dict, roc_example: dict
) -> dict[str, Any]:
    """The repeats' figures, the SVMs' hyperparameters per repeat and the mean risk-coverage curves."""
    out = collapse(acc.tree)
    out["hyperparameters"] = {
        "detector": [{k: run["detector"].meta[k] for k in HYPERPARAMETERS} for run in full],
        "svm_top5": [{k: run["detector"].meta[k] for k in ("C", "gamma", "cv_auroc")} for run in top5],
    }
    out["risk_coverage_curve"] = {
        "coverage": grid.tolist(),
        **{m: np.mean(curves[m], axis=0).tolist() for m in METHODS if curves[m]},
    }
    out["_roc_example"] = roc_example
    return out


def wup_kde_data(groups: dict[str, ImageGroup], feats: dict[str, GroupFeatures]) -> dict[str, Any]:
    """Per panel (adversarial, each distortion kind): Wu-Palmer(clean label, degraded top-1) and quality."""
    from fitguard.training.data.wordnet import WuPalmer

    wup = WuPalmer()
    panels: dict[str, Any] = {}
    if ADVERSARIAL in groups:
        g = groups[ADVERSARIAL]
        panels["adversarial (UAP)"] = (
            wup.many(g.labels, feats[ADVERSARIAL].top1),
            feats[ADVERSARIAL].quality,
        )
    if DISTORTED in groups:
        g = groups[DISTORTED]
        sim = np.asarray(wup.many(g.labels, feats[DISTORTED].top1))
        for kind in sorted(set(g.tags.tolist())):
            m = g.tags == kind
            panels[kind] = (sim[m].tolist(), feats[DISTORTED].quality[m])
    return {
        k: {"wup": [float(v) for v in s], "quality": [float(v) for v in q]} for k, (s, q) in panels.items()
    }


def shipped_detector_rates(det: Any, groups: dict[str, ImageGroup], feats: dict[str, GroupFeatures]) -> dict:
    """The shipped detector file on every image of every group (in-sample for what it trained on).

    A fit = right detector learned on the labelled objects; of these groups it saw the fooling images
    only (the same generator and seed make them). A detector of the paper's recipe names its groups."""
    if "fit_means" in det.meta:
        trained_on = set(FOOLING_GROUPS)
    else:
        trained_on = {ORIGINALS, *det.meta.get("unfit_groups", [ADVERSARIAL])}
    shipped = {}
    for g in [ORIGINALS, *UNFIT_GROUPS]:
        if g in groups:
            f = feats[g]
            fit = det.fit_verdict(det.features(f.probs, f.quality, f.energy))
            shipped[g] = {
                "detection_rate": float(np.mean(~fit)),
                "n_images": len(fit),
                "in_training_data": g in trained_on,
            }
    return shipped


def _setup(
    meta: dict[str, Any], target_far: float | None, recipe: tuple[str, ...], groups: dict[str, ImageGroup]
) -> dict[str, Any]:
    """The rest of the report's ``setup``: rules, baselines and how each group was made."""
    rule = meta.get("threshold_rule", "SVM boundary (0)")
    if target_far is not None:
        rule += f", target clean false-alarm rate {target_far}"
    return {
        "threshold_rule": rule,
        "quality_threshold_baseline2": QUALITY_THRESHOLD,
        "fars": list(FARS),
        "detector_all_unfit_groups": list(recipe),
        "originals": groups[ORIGINALS].meta,
        "group_meta": {g: grp.meta for g, grp in groups.items()},
        "group_notes": group_notes(groups),
        "methods": METHOD_NAMES,
    }


def _load_detector_for(detector: str | Path, backbone: str) -> Any:
    """The detector file, refused when it was trained for another backbone."""
    from fitguard.detector import load_detector

    det = load_detector(detector)
    if det.meta.get("backbone") not in (None, backbone):
        raise ValueError(f"{detector} was trained for backbone {det.meta['backbone']!r}, not {backbone!r}")
    return det


def _detector_all_recipe(meta: dict[str, Any]) -> tuple[str, ...]:
    """The unfit groups detector_all learns: the detector file's; for a detector trained the paper's way
    (adversarial alone) every group, so detector_all still adds something beside detector; beside a fit =
    right detector (trained on other images) the quality-refusal recipe of docs/evaluation.md."""
    recipe = tuple(meta.get("unfit_groups") or ())
    if "fit_means" in meta:
        recipe = QUALITY_REFUSAL_GROUPS
    elif recipe in ((), (ADVERSARIAL,)):
        recipe = UNFIT_GROUPS
    return recipe


def _figures(
    det: Any, groups: dict, feats: dict, *, res: dict, kde: dict | None, plots: list, seconds: dict
) -> dict[str, Any]:
    """The report after its setup, in the report's order."""
    return {
        "n_images": {g: len(grp) for g, grp in groups.items()},
        "results": res,
        "comparisons": comparisons(res, 0.05),
        "comparisons_8.57": comparisons(res, 0.0857),
        "comparisons_all": comparisons(res, 0.05, "detector_all"),
        "shipped_detector": shipped_detector_rates(det, groups, feats),
        "kde": kde,
        "kde_n_images": 0 if not kde else sum(len(v["wup"]) for v in kde.values()),
        "plots": plots,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def evaluate(
    backbone: str,
    head: str | Path,
    detector: str | Path,
    report: str | Path,
    images: str | Path | None = None,
    weights: str | None = "default",
    patches: int = DEFAULT_PATCHES,
    cache: str | Path | None = None,
    config: GroupConfig | None = None,
    repeats: int | None = None,
    wordnet: bool = True,
) -> dict[str, Any]:
    """Write ``report/report.md``, its PNG plots and ``report/report.json``; return the JSON content."""
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    det = _load_detector_for(detector, backbone)
    repeats = int(repeats or det.meta.get("repeats", REPEATS))
    seed = int(det.meta.get("seed", 0))
    split_by = str(det.meta.get("split_by", "photo"))
    target_far = det.meta.get("target_far", 0.05)
    config = config or GroupConfig(seed=seed)
    cache_dir = Path(cache) if cache is not None else cache_root()
    models = load_feature_models(backbone, head, weights)
    if det.meta.get("head_key") not in (None, models.key):
        log.warning("%s was trained with another quality head or backbone weights than %s", detector, head)
    groups = build_groups(models.backbone, images, GROUPS, config, cache_dir)
    seconds["groups"] = time.perf_counter() - t0
    t = time.perf_counter()
    feats = {g: compute_features(models, grp, patches, cache=cache_dir) for g, grp in groups.items()}
    seconds["features"] = time.perf_counter() - t
    t = time.perf_counter()
    recipe = _detector_all_recipe(det.meta)
    res = evaluate_scores(groups, feats, repeats, seed, split_by, target_far, recipe)
    seconds["protocol"] = time.perf_counter() - t
    t = time.perf_counter()
    kde = wup_kde_data(groups, feats) if wordnet else None
    seconds["wordnet"] = time.perf_counter() - t
    out_dir = Path(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    plots = write_plots(out_dir, res, kde)
    seconds["plots"] = time.perf_counter() - t
    res.pop("_roc_example")
    seconds["total"] = time.perf_counter() - t0
    setup = {
        "backbone": backbone,
        "weights_id": models.backbone.weights_id,
        "iqa_head": str(head),
        "detector": str(detector),
        "images": "package-shipped photos" if images is None else str(images),
        **{"patches": patches, "repeats": repeats, "seed": seed, "split_by": split_by},
        **_setup(det.meta, target_far, recipe, groups),
    }
    rep = {"setup": setup, **_figures(det, groups, feats, res=res, kde=kde, plots=plots, seconds=seconds)}
    write_report(out_dir, rep, plots)
    return rep


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", required=True, help="resnet152, efficientnet_lite0 or tiny")
    parser.add_argument("--iqa-head", required=True, help="quality head file (fitguard train iqa)")
    parser.add_argument("--detector", required=True, help="detector file (fitguard train detector)")
    parser.add_argument("--report", required=True, help="folder for report.md, report.json and PNG plots")
    add_group_arguments(parser)
    parser.add_argument(
        "--distort-sources",
        type=int,
        default=GroupConfig.distort_sources,
        help="originals to distort (photo-balanced subset); 0: all",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="protocol repeats (default: the detector's)"
    )
    parser.add_argument("--no-wordnet", action="store_true", help="skip the Wu-Palmer plots")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from fitguard.detector import load_detector

    seed = int(load_detector(args.detector).meta.get("seed", 0))
    config = GroupConfig(
        views=args.views,
        labels_file=args.labels,
        limit=args.limit,
        seed=seed,
        distort_sources=args.distort_sources or None,
    )
    rep = evaluate(
        backbone=args.backbone,
        head=args.iqa_head,
        detector=args.detector,
        report=args.report,
        images=args.images,
        weights=args.weights,
        patches=args.patches,
        cache=args.cache,
        config=config,
        repeats=args.repeats,
        wordnet=not args.no_wordnet,
    )
    res = rep["results"]
    for g in UNFIT_GROUPS:
        if g in res["detector"]:
            line = ", ".join(f"{m} {res[m][g]['far_0.05']['detection_rate']['mean']:.3f}" for m in METHODS)
            print(f"{g:12s} detection at 5% false alarms: {line}")
    print(f"wrote {Path(args.report) / 'report.md'} ({rep['seconds']['total']:.0f} s)")
    return 0
