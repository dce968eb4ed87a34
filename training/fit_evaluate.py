"""``fitguard evaluate-fit``: does the verdict track whether the answer is right, on held-out stamps?

Builds the population of :mod:`fitguard.training.fit_population` from the labelled objects, computes the
served-path features once (cached), runs the repeats of :mod:`fitguard.training.fit_right` and a
domain-shift split (whole stamp categories held out), and writes ``report.md``, ``report.json`` and the
risk-coverage plot (:mod:`fitguard.training.fit_report`).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.contract import DEFAULT_PATCHES
from fitguard.training.fit_detector import PASS_RATE
from fitguard.training.fit_population import POPULATION_GROUPS, PopulationConfig
from fitguard.training.fit_right import (
    MIXES,
    REPEATS,
    cv_groups,
    fit_shipped,
    restrict,
    right_flags,
    run_repeats,
    table_v,
    untrained_scores,
)
from fitguard.training.fit_shift import domain_shifts
from fitguard.training.selective import (
    COVERAGES,
    SHIPPED,
    bootstrap,
    coverage_matched,
    mean_curve,
    metric,
    signal_groups,
)

log = logging.getLogger(__name__)
REPORT_VERSION = "fit-report/2"  # /2: three domain shifts, accuracy at threshold against MSP
MATCHED: tuple[str, ...] = (SHIPPED, "fit_right", "paper_right", "paper_uap")  # compared with MSP at coverage
WUP_RIGHT = 0.85  # Wu-Palmer variant: a near miss (a WordNet sibling class) counts as right


def wup_right(top1: np.ndarray, items: np.ndarray, acceptable: list[frozenset[int] | None]) -> np.ndarray:
    """Right when the best Wu-Palmer similarity of top-1 to an acceptable class reaches :data:`WUP_RIGHT`."""
    from fitguard.training.wordnet import WuPalmer

    wup = WuPalmer()
    out = np.zeros(len(top1), bool)
    for k, (t, i) in enumerate(zip(top1.tolist(), items.tolist(), strict=True)):
        if i >= 0 and acceptable[i]:
            out[k] = max(wup(int(t), int(c)) for c in acceptable[i]) >= WUP_RIGHT
    return out


def summarize_mixes(repeats: list[dict[str, Any]], methods: list[str], draws: int) -> dict[str, Any]:
    """Per mix: every selective metric with intervals (differences to MSP), Table V, the mean curve."""
    out: dict[str, Any] = {}
    names = ["aurc", *[f"accuracy_at_{c:g}" for c in COVERAGES]]
    grid = np.linspace(0.01, 1.0, 100)
    for mix, groups in MIXES.items():
        sub = restrict(repeats, groups)
        out[mix] = {
            "n_test_mean": float(np.mean([len(r["right"]) for r in sub])),
            "base_accuracy": float(np.mean([r["right"].mean() for r in sub])),
            **{n: bootstrap(sub, methods, metric(n), draws=draws) for n in names},
            "table_v": table_v(sub, methods, groups),
            "at_threshold": {m: coverage_matched(sub, m, draws=draws) for m in MATCHED if m in methods},
            "curve": {"coverage": grid.tolist(), **{m: mean_curve(sub, m, grid) for m in methods}},
        }
    return out


def _population_features(models: Any, pop: Any, *, patches: int, cache: Path) -> Any:
    """One backbone pass per image of every group, back in population order."""
    from fitguard.training.fit_features import FitFeatures, compute_fit_features

    parts, order = [], []
    for g in POPULATION_GROUPS:
        idx = np.flatnonzero(pop.group == g)
        parts.append(compute_fit_features(models, [pop.images[i] for i in idx], patches, cache=cache, desc=g))
        order.append(idx)
    return FitFeatures.concat(parts).subset(np.argsort(np.concatenate(order)))


def _group_summary(
    group: np.ndarray, *, right: np.ndarray, wright: np.ndarray, quality: np.ndarray
) -> dict[str, dict[str, float]]:
    return {
        g: {
            "n": int(np.sum(group == g)),
            "accuracy": float(right[group == g].mean()),
            "accuracy_wup": float(wright[group == g].mean()),
            "quality_median": float(np.median(quality[group == g])),
        }
        for g in POPULATION_GROUPS
    }


def ship_detector(
    out: Path,
    *,
    signals: dict[str, np.ndarray],
    right: np.ndarray,
    stamps: np.ndarray,
    group: np.ndarray,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Fit the shipped recipe on every row and write the detector file; returns its meta."""
    from fitguard.detector import save_detector

    det, _ = fit_shipped(signals[SHIPPED], right, groups=cv_groups(stamps), group=group)
    det.meta.update(meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_detector(out, det)
    return det.meta


def _held_out_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The shipped recipe's held-out AURC beside MSP's, per mix: what a detector file records."""
    return {
        mix: {m: res["aurc"][m] for m in (SHIPPED, "msp")} | {"table_v": res["table_v"][SHIPPED]}
        for mix, res in results.items()
    }


def evaluate_fit(
    *,
    backbone: str,
    head: str | Path,
    report: str | Path,
    config: PopulationConfig,
    repeats: int = REPEATS,
    draws: int = 200,
    patches: int = DEFAULT_PATCHES,
    cache: Path | None = None,
    weights: str | None = "default",
    detector_out: Path | None = None,
) -> dict[str, Any]:
    """The whole evaluation; returns what ``report.json`` holds. With ``detector_out``, the shipped
    recipe is also fitted on every image and written there, its held-out figures in its meta."""
    import torch

    from fitguard.training.datasets import load_dataset
    from fitguard.training.fit_population import build_population
    from fitguard.training.fit_report import write_fit_report
    from fitguard.training.group_features import load_models
    from fitguard.training.groups import default_cache_dir

    torch.set_num_threads(min(2, torch.get_num_threads()))
    cache = cache or default_cache_dir()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    models = load_models(backbone, head, weights)
    dataset = load_dataset("objects")
    pop = build_population(models.backbone, dataset, config, cache)
    seconds["population"] = time.perf_counter() - t0
    t = time.perf_counter()
    feats = _population_features(models, pop, patches=patches, cache=cache)
    seconds["features"] = time.perf_counter() - t
    t = time.perf_counter()
    acceptable = [it.labels for it in dataset]
    top1 = feats.logits.argmax(axis=1)
    right = right_flags(pop, top1, acceptable)
    stamps = np.asarray([dataset[i].group if i >= 0 else "" for i in pop.item])
    signals = signal_groups(feats)
    untrained = untrained_scores(feats.logits, feats.quality)
    common = {"pop": pop, "signals": signals, "untrained": untrained, "stamps": stamps}
    reps = run_repeats(**common, right=right, repeats=repeats, seed=config.seed)
    methods = list(reps[0]["conf"])
    results = summarize_mixes(reps, methods, draws)
    seconds["repeats"] = time.perf_counter() - t
    t = time.perf_counter()
    wright = wup_right(top1, pop.item, acceptable)
    wreps = run_repeats(**common, right=wright, repeats=repeats, seed=config.seed, svms=False)
    wmethods = list(wreps[0]["conf"])
    wu = {mix: bootstrap(restrict(wreps, MIXES[mix]), wmethods, metric("aurc"), draws=draws) for mix in MIXES}
    scenes = np.asarray([dataset[i].meta.get("scene", "") if i >= 0 else "" for i in pop.item])
    shift = domain_shifts(**common, scenes=scenes, right=right, draws=draws, seed=config.seed)
    seconds["wordnet_and_shift"] = time.perf_counter() - t
    groups = _group_summary(pop.group, right=right, wright=wright, quality=feats.quality)
    if detector_out is not None:
        meta = {
            "backbone": backbone,
            "weights_id": models.backbone.weights_id,
            "head_key": models.key,
            "patches": patches,
            "seed": config.seed,
            "population": config.__dict__,
            "held_out": _held_out_summary(results),
        }
        ship_detector(detector_out, signals=signals, right=right, stamps=stamps, group=pop.group, meta=meta)
    seconds["total"] = time.perf_counter() - t0
    rep = {
        "setup": {
            "backbone": backbone,
            "weights_id": models.backbone.weights_id,
            "iqa_head": str(head),
            "patches": patches,
            "repeats": repeats,
            "bootstrap_draws": draws,
            "pass_rate_right_clean": PASS_RATE,
            "wup_right": WUP_RIGHT,
            "population": config.__dict__,
            "attacks": pop.meta,
        },
        "groups": groups,
        "results": results,
        "wordnet_aurc": wu,
        "domain_shift": shift,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    write_fit_report(Path(report), rep)
    return rep


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="efficientnet_lite0", help="resnet152, efficientnet_lite0")
    parser.add_argument("--iqa-head", required=True, help="quality head file (fitguard train iqa)")
    parser.add_argument("--report", required=True, help="folder for report.md, report.json and plots")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="stamp-split repeats")
    parser.add_argument("--draws", type=int, default=200, help="bootstrap draws over stamps")
    parser.add_argument("--clean-per-stamp", type=int, default=PopulationConfig.clean_per_stamp)
    parser.add_argument("--distort-stamps", type=int, default=PopulationConfig.distort_stamps)
    parser.add_argument("--patches", type=int, default=DEFAULT_PATCHES, help="IQA patches (as served)")
    parser.add_argument("--cache", default=None, help="cache folder (default $FITGUARD_CACHE or ~/.cache)")
    parser.add_argument(
        "--detector-out", default=None, help="also fit the shipped detector on every image and write it here"
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = PopulationConfig(clean_per_stamp=args.clean_per_stamp, distort_stamps=args.distort_stamps)
    rep = evaluate_fit(
        backbone=args.backbone,
        head=args.iqa_head,
        report=args.report,
        config=config,
        repeats=args.repeats,
        draws=args.draws,
        patches=args.patches,
        cache=Path(args.cache) if args.cache else None,
        detector_out=Path(args.detector_out) if args.detector_out else None,
    )
    for mix, res in rep["results"].items():
        a = res["aurc"]
        line = ", ".join(f"{m} {a[m]['mean']:.3f}" for m in ("msp", "quality", SHIPPED, "paper_uap"))
        print(f"{mix:8s} AURC: {line}")
    print(f"wrote {Path(args.report) / 'report.md'} ({rep['seconds']['total']:.0f} s)")
    return 0
