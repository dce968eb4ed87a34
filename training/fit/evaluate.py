"""``fitguard evaluate-fit``: does the verdict track whether the answer is right, on held-out stamps?

Builds the population of :mod:`fitguard.training.fit.population` from the labelled objects, computes the
served-path features once (cached), runs the repeats of :mod:`fitguard.training.fit.protocol` and a
domain-shift split (whole stamp categories held out), and writes ``report.md``, ``report.json`` and the
risk-coverage plot (:mod:`fitguard.training.fit.report`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.contract import DEFAULT_PATCHES
from fitguard.training.fit.population import POPULATION_GROUPS, PopulationConfig
from fitguard.training.fit.protocol import (
    MIXES,
    RECIPES,
    REPEATS,
    restrict,
    run_repeats,
    table_v,
    untrained_scores,
)
from fitguard.training.fit.recipes import PASS_RATE
from fitguard.training.fit.release_gate import release_gate, release_gate_lines
from fitguard.training.fit.shifts import domain_shifts
from fitguard.training.fit.signals import (
    COVERAGES,
    SHIPPED,
    bootstrap,
    coverage_matched,
    mean_curve,
    metric,
    signal_groups,
)
from fitguard.training.fit.unseen import UnseenConfig, build_unseen, summarize_unseen, with_unseen

log = logging.getLogger(__name__)
REPORT_VERSION = "fit-report/3"  # /3: sets never trained on, the release gate
# Compared with MSP at the same coverage.
MATCHED: tuple[str, ...] = (*RECIPES, "fit_right", "paper_right", "paper_uap")
WUP_RIGHT = 0.85  # Wu-Palmer variant: a near miss (a WordNet sibling class) counts as right


def wup_right(top1: np.ndarray, items: np.ndarray, acceptable: list[frozenset[int] | None]) -> np.ndarray:
    """Right when the best Wu-Palmer similarity of top-1 to an acceptable class reaches :data:`WUP_RIGHT`."""
    from fitguard.training.data.wordnet import WuPalmer

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


def _unseen_rows(data: Any, *, config: UnseenConfig, patches: int, cache: Path) -> dict[str, Any]:
    """The population's rows with the sets never trained on appended (their features cached too)."""
    from fitguard.training.fit.features import compute_fit_features

    unseen = build_unseen(data.dataset, side=data.models.backbone.preset.resize, config=config)
    ufeats = compute_fit_features(data.models, unseen.images, patches, cache=cache, desc="unseen")
    return with_unseen(data, unseen, ufeats)


def _repeat_results(
    rows: dict[str, Any], common: dict[str, Any], *, repeats: int, draws: int, seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stamp-split repeats summarised per mix and per set never trained on."""
    right, trainable = rows["right"], rows["trainable"]
    reps = run_repeats(**common, right=right, repeats=repeats, seed=seed, trainable=trainable)
    methods = list(reps[0]["conf"])
    return summarize_mixes(reps, methods, draws), summarize_unseen(reps, methods, MATCHED, draws)


def _wordnet_aurc(
    rows: dict[str, Any], common: dict[str, Any], *, acceptable: list, repeats: int, draws: int, seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Whether each answer is right by Wu-Palmer, and every mix's AURC by that rule (no SVM baselines)."""
    wright = wup_right(rows["feats"].logits.argmax(axis=1), rows["pop"].item, acceptable)
    wreps = run_repeats(
        **common, right=wright, repeats=repeats, seed=seed, svms=False, trainable=rows["trainable"]
    )
    wmethods = list(wreps[0]["conf"])
    wu = {mix: bootstrap(restrict(wreps, MIXES[mix]), wmethods, metric("aurc"), draws=draws) for mix in MIXES}
    return wright, wu


def _domain_shift(data: Any, common: dict[str, Any], *, draws: int, seed: int) -> dict[str, Any]:
    """The domain-shift splits, on the population's rows only (the unseen rows follow them)."""
    n = len(data.pop)
    return domain_shifts(
        pop=data.pop,
        signals={k: v[:n] for k, v in common["signals"].items()},
        untrained={k: v[:n] for k, v in common["untrained"].items()},
        stamps=data.stamps,
        scenes=data.scenes,
        right=data.right,
        draws=draws,
        seed=seed,
    )


def _population_rows(data: Any) -> dict[str, Any]:
    """The population's rows alone, as :func:`_unseen_rows` gives them: a team's labelled photos have no
    stamps to composite the sets never trained on from."""
    return {
        "pop": data.pop,
        "feats": data.feats,
        "right": data.right,
        "stamps": data.stamps,
        "trainable": None,
    }


def _measure(
    data: Any,
    rows: dict[str, Any],
    *,
    repeats: int,
    draws: int,
    seed: int,
    seconds: dict[str, float],
    objects: bool = True,
) -> dict[str, Any]:
    """Every figure of the report but its setup, in the report's order; the steps' seconds go to
    ``seconds``. The WordNet rule and the domain shifts need the labelled objects (``objects``): a team's
    classes have no WordNet ids, its photos no stamp categories."""
    t = time.perf_counter()
    feats = rows["feats"]
    signals = signal_groups(feats)
    untrained = untrained_scores(feats.logits, feats.quality)
    common = {"pop": rows["pop"], "signals": signals, "untrained": untrained, "stamps": rows["stamps"]}
    results, unseen_results = _repeat_results(rows, common, repeats=repeats, draws=draws, seed=seed)
    seconds["repeats"] = time.perf_counter() - t
    t = time.perf_counter()
    wright, wu, shift = rows["right"], {}, {}
    if objects:
        wright, wu = _wordnet_aurc(
            rows, common, acceptable=data.acceptable, repeats=repeats, draws=draws, seed=seed
        )
        shift = _domain_shift(data, common, draws=draws, seed=seed)
    seconds["wordnet_and_shift"] = time.perf_counter() - t
    n = len(data.pop)
    groups = _group_summary(data.pop.group, right=data.right, wright=wright[:n], quality=data.feats.quality)
    return {
        "groups": groups,
        "results": results,
        "wordnet_aurc": wu,
        "domain_shift": shift,
        "unseen": unseen_results,
    }


def _setup(
    data: Any,
    *,
    backbone: str,
    head: str | Path,
    patches: int,
    repeats: int,
    draws: int,
    config: PopulationConfig,
    attacks: dict[str, Any],
) -> dict[str, Any]:
    """The report's ``setup``: what was measured, and how."""
    return {
        "backbone": backbone,
        "weights_id": data.models.backbone.weights_id,
        "iqa_head": str(head),
        "quality_features": data.models.head_info.get("mode"),
        "patches": patches,
        "repeats": repeats,
        "bootstrap_draws": draws,
        "pass_rate_right_clean": PASS_RATE,
        "wup_right": WUP_RIGHT,
        "population": config.__dict__,
        "attacks": attacks,
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
    unseen_config: UnseenConfig | None = None,
    classifier: Any = None,
    labelled: str | Path | None = None,
) -> dict[str, Any]:
    """The whole evaluation; returns what ``report.json`` holds, its release gate included
    (:mod:`fitguard.training.fit.release_gate`). It writes no detector file: ``fitguard train detector`` fits
    the shipped recipe on every image. ``classifier`` (a spec) and ``labelled`` (the team's photos)
    evaluate a team's classifier on its photos, every repeat holding out half of their groups."""
    from fitguard.cache import cache_root
    from fitguard.training.fit.custom import load_custom_fit_data
    from fitguard.training.fit.report import write_fit_report
    from fitguard.training.fit.train import load_fit_data

    unseen_config = unseen_config or UnseenConfig(seed=config.seed)
    cache = cache or cache_root()  # the unseen sets' features are cached beside the population's
    custom = classifier is not None and not (classifier.is_plain and labelled is None)

    t0 = time.perf_counter()
    if custom:
        data = load_custom_fit_data(
            classifier=classifier, head=head, config=config, labelled=labelled, patches=patches, cache=cache
        )
        backbone = classifier.name
    else:
        if classifier is not None:
            backbone, weights = classifier.name, classifier.weights
        data = load_fit_data(
            backbone=backbone, head=head, config=config, patches=patches, cache=cache, weights=weights
        )
    seconds = dict(data.seconds)
    t = time.perf_counter()
    rows = (
        _population_rows(data)
        if custom
        else _unseen_rows(data, config=unseen_config, patches=patches, cache=cache)
    )
    seconds["unseen_sets"] = time.perf_counter() - t
    measured = _measure(
        data, rows, repeats=repeats, draws=draws, seed=config.seed, seconds=seconds, objects=not custom
    )
    seconds["total"] = time.perf_counter() - t0
    setup = _setup(
        data,
        backbone=backbone,
        head=head,
        patches=patches,
        repeats=repeats,
        draws=draws,
        config=config,
        attacks=rows["pop"].meta,
    )
    if custom:
        setup.update(classifier={**classifier.to_dict(), **classifier.stamp()}, labelled=str(labelled))
    rep = {"setup": setup, **measured, "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    rep["gate"] = release_gate(rep)
    write_fit_report(Path(report), rep)
    return rep


def configure(parser: argparse.ArgumentParser) -> None:
    from fitguard.classifier_spec import add_classifier_arguments

    add_classifier_arguments(parser)
    parser.add_argument(
        "--labelled",
        default=None,
        help="the team's labelled photos (photos/<class name>/... or a labels file)",
    )
    parser.add_argument("--iqa-head", required=True, help="quality head file (fitguard train iqa)")
    parser.add_argument("--report", required=True, help="folder for report.md, report.json and plots")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="stamp-split repeats")
    parser.add_argument("--draws", type=int, default=200, help="bootstrap draws over stamps")
    parser.add_argument("--clean-per-stamp", type=int, default=PopulationConfig.clean_per_stamp)
    parser.add_argument("--distort-stamps", type=int, default=PopulationConfig.distort_stamps)
    parser.add_argument("--patches", type=int, default=DEFAULT_PATCHES, help="IQA patches (as served)")
    parser.add_argument("--cache", default=None, help="cache folder (default $FITGUARD_CACHE or ~/.cache)")
    parser.add_argument(
        "--no-gate", action="store_true", help="exit 0 even when the shipped detector fails its release gate"
    )


def run(args: argparse.Namespace) -> int:
    from fitguard.classifier_spec import checked_spec
    from fitguard.training.data.labelled import LabelledError
    from fitguard.training.fit.custom import load_labelled_set

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = checked_spec(args, "fitguard evaluate-fit")
    if spec is None:
        return 2
    try:
        load_labelled_set(spec, args.labelled)
    except LabelledError as exc:
        print(f"fitguard evaluate-fit: error: {exc}", file=sys.stderr)
        return 2
    config = PopulationConfig(clean_per_stamp=args.clean_per_stamp, distort_stamps=args.distort_stamps)
    rep = evaluate_fit(
        classifier=spec,
        labelled=args.labelled,
        backbone=args.backbone,
        head=args.iqa_head,
        report=args.report,
        config=config,
        repeats=args.repeats,
        draws=args.draws,
        patches=args.patches,
        cache=Path(args.cache) if args.cache else None,
    )
    for mix, res in rep["results"].items():
        a = res["aurc"]
        line = ", ".join(f"{m} {a[m]['mean']:.3f}" for m in ("msp", "quality", SHIPPED, "paper_uap"))
        print(f"{mix:8s} AURC: {line}")
    print("\n".join(release_gate_lines(rep["gate"])))
    print(f"wrote {Path(args.report) / 'report.md'} ({rep['seconds']['total']:.0f} s)")
    if not rep["gate"]["passed"] and not args.no_gate:
        print("the shipped detector fails its release gate (above); --no-gate reports without failing")
        return 3
    return 0
