"""``fitguard evaluate``: the paper's evaluation (Tables IV and V, Fig. 3) and today's baselines, as a report.

Everything is measured on the groups of :mod:`fitguard.training.groups` with features computed as the
server computes them (:func:`fitguard.training.detector.compute_features`). The detector file supplies
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
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fitguard.contract import DEFAULT_PATCHES, TOP_K
from fitguard.training.detector import (
    HYPERPARAMETERS,
    REPEATS,
    GroupFeatures,
    auroc,
    compute_features,
    load_models,
    run_protocol,
    split_groups,
    summarize,
)
from fitguard.training.groups import GROUPS, GroupConfig, ImageGroup, build_groups, default_cache_dir

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("detector", "detector_all", "svm_top5", "quality", "msp", "energy")
METHOD_NAMES = {
    "detector": "detector (top-5 + quality SVM)",
    "detector_all": "detector trained on the shipped detector's unfit groups",
    "svm_top5": "SVM on top-5 alone",
    "quality": "quality threshold alone",
    "msp": "max softmax probability",
    "energy": "energy score",
}
UNFIT_GROUPS: tuple[str, ...] = ("adversarial", "distorted", "fool_ev", "fool_gd")
LABELLED_GROUPS: tuple[str, ...] = ("adversarial", "distorted")
FARS: tuple[float, ...] = (0.05, 0.0857)  # 0.0857: the paper's detector passes 91.43% of clean originals
QUALITY_THRESHOLD = 0.3  # baseline-2: unfit when predicted MOS < 0.3
COVERAGES: tuple[float, ...] = (0.8, 0.9, 0.95)
TOP5 = slice(0, TOP_K)


# --------------------------------------------------------------------------------------------------
# Metrics (unfit scores: higher = more unfit)
# --------------------------------------------------------------------------------------------------


def fpr_at_tpr(clean: np.ndarray, unfit: np.ndarray, tpr: float = 0.95) -> float:
    """Share of clean images flagged at the loosest threshold that flags ``tpr`` of the unfit ones."""
    k = int(math.ceil(tpr * len(unfit) - 1e-9))  # flag at least k of the unfit images
    thr = np.sort(unfit)[len(unfit) - k]
    return float(np.mean(clean >= thr))


def far_threshold(clean: np.ndarray, far: float) -> float:
    """Threshold flagging (score > threshold) at most ``far`` of the clean images."""
    return float(np.quantile(clean, 1.0 - far, method="higher"))


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage k/n and selective risk (error rate of the k most confident) for k = 1..n."""
    order = np.argsort(-confidence, kind="stable")
    errors = np.cumsum(~correct[order])
    k = np.arange(1, len(order) + 1)
    return k / len(order), errors / k


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve (mean selective risk over all coverages k/n)."""
    return float(risk_coverage(confidence, correct)[1].mean())


def accuracy_at_coverage(confidence: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    cov, risk = risk_coverage(confidence, correct)
    k = max(1, int(math.ceil(coverage * len(cov))))
    return float(1.0 - risk[k - 1])


def base_scores(feats: GroupFeatures) -> dict[str, np.ndarray]:
    """Scores that need no training: quality, and MSP / energy through pytorch-ood."""
    import torch
    from pytorch_ood.detector import EnergyBased, MaxSoftmax

    logits = torch.from_numpy(feats.logits)
    return {
        "quality": -feats.quality.astype(np.float64),
        "msp": MaxSoftmax.score(logits).double().numpy(),
        "energy": EnergyBased.score(logits).double().numpy(),
    }


def _stat(values: list[float]) -> dict[str, float]:
    return summarize(values)


# --------------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------------


def test_rows(
    name: str, group: ImageGroup, gid: np.ndarray, test_ids: np.ndarray, fool_test: np.ndarray | None = None
) -> np.ndarray:
    """Rows of ``group`` in a repeat's test half: derived from test-half originals; for fooling images the
    ``fool_test`` mask (the half the all-groups detector did not train on), else all of them."""
    if name in ("originals", "adversarial"):
        return np.flatnonzero(np.isin(gid, test_ids))
    if name == "distorted":
        return np.flatnonzero(np.isin(gid[group.pairs], test_ids))
    return np.arange(len(group)) if fool_test is None else np.flatnonzero(fool_test)


def fit_all_groups(
    groups: dict[str, ImageGroup],
    x: dict[str, np.ndarray],
    gid: np.ndarray,
    train_ids: np.ndarray,
    fool_test: dict[str, np.ndarray],
    target_far: float | None,
    unfit: tuple[str, ...] = UNFIT_GROUPS,
) -> Any:
    """A detector trained on the train half of the ``unfit`` groups (label 0) against train-half originals."""
    from fitguard.detector import FIT_LABEL, UNFIT_LABEL
    from fitguard.training.detector import fit_detector

    xs, ys, gs = [], [], []
    for g in ["originals", *[u for u in UNFIT_GROUPS if u in groups and u in unfit]]:
        if g in fool_test:
            rows = np.flatnonzero(~fool_test[g])
            ids = -1_000_000 - rows  # each fooling image is its own split group
        else:
            src = gid if g in ("originals", "adversarial") else gid[groups[g].pairs]
            rows = np.flatnonzero(np.isin(src, train_ids))
            ids = src[rows]
        xs.append(x[g][rows])
        ys.append(np.full(len(rows), FIT_LABEL if g == "originals" else UNFIT_LABEL))
        gs.append(ids)
    return fit_detector(np.concatenate(xs), np.concatenate(ys), np.concatenate(gs), target_far)


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
    originals = groups["originals"]
    gid = split_groups(originals, split_by)
    present = [g for g in UNFIT_GROUPS if g in groups]
    full = run_protocol(originals, feats["originals"], feats["adversarial"], repeats, seed, split_by, target_far,
                        progress="protocol: detector")  # fmt: skip
    top5 = run_protocol(originals, feats["originals"], feats["adversarial"], repeats, seed, split_by, target_far,
                        columns=TOP5, progress="protocol: svm_top5")  # fmt: skip
    base = {g: base_scores(feats[g]) for g in ["originals", *present]}
    x = {g: feats[g].features for g in ["originals", *present]}
    correct = {g: feats[g].top1 == groups[g].labels for g in ["originals", *LABELLED_GROUPS] if g in groups}

    # acc[method][group][metric] -> list over repeats
    acc: dict[str, Any] = {}

    def add(path: tuple[str, ...], value: float) -> None:
        node = acc
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node.setdefault(path[-1], []).append(value)

    curves: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    grid = np.linspace(0.01, 1.0, 100)
    roc_example: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    for r in tqdm(range(repeats), desc="evaluate repeats", leave=False):
        det, det5 = full[r]["detector"], top5[r]["detector"]
        test_ids = full[r]["test_ids"]
        fool_test = {g: rng.permutation(len(groups[g])) < len(groups[g]) // 2
                     for g in present if g.startswith("fool")}  # fmt: skip
        det_all = fit_all_groups(groups, x, gid, full[r]["train_ids"], fool_test, target_far, recipe)
        rows = {g: test_rows(g, groups[g], gid, test_ids, fool_test.get(g)) for g in ["originals", *present]}
        scores: dict[str, dict[str, np.ndarray]] = {}
        fit_op: dict[str, dict[str, np.ndarray]] = {}
        for g in ["originals", *present]:
            xs = x[g][rows[g]]
            scores[g] = {
                "detector": -det.pipeline.decision_function(xs),
                "detector_all": -det_all.pipeline.decision_function(xs),
                "svm_top5": -det5.pipeline.decision_function(xs[:, TOP5]),
                **{m: s[rows[g]] for m, s in base[g].items()},
            }
            fit_op[g] = {
                "detector": det.fit_verdict(xs),
                "detector_all": det_all.fit_verdict(xs),
                "svm_top5": det5.fit_verdict(xs[:, TOP5]),
                "baseline2": feats[g].quality[rows[g]] >= QUALITY_THRESHOLD,
            }
        clean = scores["originals"]
        n_clean = len(rows["originals"])
        if r == 0:
            roc_example = {g: {m: (clean[m], scores[g][m]) for m in METHODS} for g in present}
        for g in present:
            n = len(rows[g])
            lab = correct.get(g)
            ok = None if lab is None else lab[rows[g]]
            for m in METHODS:
                s, c = scores[g][m], clean[m]
                add((m, g, "auroc"), auroc(c, s))
                add((m, g, "fpr_at_95tpr"), fpr_at_tpr(c, s))
                add((m, g, "n_images"), n)
                add((m, g, "n_clean"), n_clean)
                for far in FARS:
                    thr = far_threshold(c, far)
                    flagged = s > thr
                    key = f"far_{far:g}"
                    add((m, g, key, "detection_rate"), float(flagged.mean()))
                    add((m, g, key, "realized_far"), float(np.mean(c > thr)))
                    add((m, g, key, "threshold"), thr)
                    if ok is not None and (~flagged).any():
                        add((m, g, key, "accuracy_fit"), float(ok[~flagged].mean()))
            for op, f in fit_op[g].items():
                add(("operating_point", op, g, "detection_rate"), float(np.mean(~f)))
                add(("operating_point", op, g, "n_images"), n)
                add(("operating_point", op, g, "n_detected"), int(np.sum(~f)))
                if ok is not None:
                    add(
                        ("operating_point", op, g, "accuracy_fit"),
                        float(ok[f].mean()) if f.any() else float("nan"),
                    )
                    add(("operating_point", op, g, "n_fit"), int(f.sum()))
                    add(("operating_point", op, g, "n_fit_correct"), int(ok[f].sum()))
                if g == "distorted":
                    tags = groups[g].tags[rows[g]]
                    for kind in sorted(set(tags.tolist())):
                        add(
                            ("operating_point", op, "distorted_by_kind", kind),
                            float(np.mean(~f[tags == kind])),
                        )
            if ok is not None:
                add(("baseline1", g, "accuracy"), float(ok.mean()))
                add(("baseline1", g, "n_images"), n)
        for op in ("detector", "detector_all", "svm_top5", "baseline2"):
            f = fit_op["originals"][op]
            add(("operating_point", op, "originals", "clean_pass_rate"), float(f.mean()))
            add(("operating_point", op, "originals", "n_images"), n_clean)
        add(("operating_point", "detector", "threshold"), det.threshold)
        add(("operating_point", "svm_top5", "threshold"), det5.threshold)
        add(("operating_point", "detector_all", "threshold"), det_all.threshold)
        # Selective classification on clean + distorted test images.
        if "distorted" in present:
            ok_mix = np.concatenate(
                [correct["originals"][rows["originals"]], correct["distorted"][rows["distorted"]]]
            )
            add(("selective", "n_images"), len(ok_mix))
            add(("selective", "base_accuracy"), float(ok_mix.mean()))
            for m in METHODS:
                conf = -np.concatenate([clean[m], scores["distorted"][m]])
                add(("selective", m, "aurc"), aurc(conf, ok_mix))
                for cov in COVERAGES:
                    add(("selective", m, f"accuracy_at_{cov:g}"), accuracy_at_coverage(conf, ok_mix, cov))
                cv, risk = risk_coverage(conf, ok_mix)
                curves[m].append(np.interp(grid, cv, risk))
    out = _collapse(acc)
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


def _collapse(node: Any) -> Any:
    """Lists over repeats -> {mean, std, n_repeats, per_repeat}; dicts recurse."""
    if isinstance(node, dict):
        return {k: _collapse(v) for k, v in node.items()}
    return {**_stat(node), "per_repeat": [float(v) for v in node]}


def wup_kde_data(groups: dict[str, ImageGroup], feats: dict[str, GroupFeatures]) -> dict[str, Any]:
    """Per panel (adversarial, each distortion kind): Wu-Palmer(clean label, degraded top-1) and quality."""
    from fitguard.training.wordnet import WuPalmer

    wup = WuPalmer()
    panels: dict[str, Any] = {}
    if "adversarial" in groups:
        g = groups["adversarial"]
        panels["adversarial (UAP)"] = (
            wup.many(g.labels, feats["adversarial"].top1),
            feats["adversarial"].quality,
        )
    if "distorted" in groups:
        g = groups["distorted"]
        sim = np.asarray(wup.many(g.labels, feats["distorted"].top1))
        for kind in sorted(set(g.tags.tolist())):
            m = g.tags == kind
            panels[kind] = (sim[m].tolist(), feats["distorted"].quality[m])
    return {
        k: {"wup": [float(v) for v in s], "quality": [float(v) for v in q]} for k, (s, q) in panels.items()
    }


# --------------------------------------------------------------------------------------------------
# Plots and report
# --------------------------------------------------------------------------------------------------


def _plots(report_dir: Path, res: dict[str, Any], kde: dict[str, Any] | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    files = []
    ex = res["_roc_example"]
    groups = [g for g in UNFIT_GROUPS if g in ex]
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 4), squeeze=False)
    for ax, g in zip(axes[0], groups, strict=True):
        for m in METHODS:
            c, s = ex[g][m]
            fpr, tpr, _ = roc_curve(np.r_[np.zeros(len(c)), np.ones(len(s))], np.r_[c, s])
            ax.plot(fpr, tpr, label=m)
        for far in FARS:
            ax.axvline(far, color="grey", lw=0.5, ls=":")
        ax.set(title=f"{g} vs clean (repeat 1)", xlabel="clean false-alarm rate", ylabel="detection rate")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(report_dir / "roc.png", dpi=110)
    plt.close(fig)
    files.append("roc.png")

    fig, ax = plt.subplots(figsize=(1.6 * len(groups) + 3, 4))
    width = 0.8 / len(METHODS)
    for i, m in enumerate(METHODS):
        d = [res[m][g]["far_0.05"]["detection_rate"] for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, [v["mean"] for v in d], width, yerr=[v["std"] for v in d],
               label=m, capsize=2)  # fmt: skip
    ax.set_xticks(np.arange(len(groups)) + width * (len(METHODS) - 1) / 2, groups)
    ax.set(ylabel="detection rate at 5% clean false alarms", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(report_dir / "detection_at_5pct_far.png", dpi=110)
    plt.close(fig)
    files.append("detection_at_5pct_far.png")

    curve = res.get("risk_coverage_curve", {})
    if len(curve) > 1:
        fig, ax = plt.subplots(figsize=(5, 4))
        for m in METHODS:
            if m in curve:
                ax.plot(curve["coverage"], curve[m], label=m)
        ax.set(
            xlabel="coverage", ylabel="selective risk (error rate)", title="clean + distorted (test halves)"
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(report_dir / "risk_coverage.png", dpi=110)
        plt.close(fig)
        files.append("risk_coverage.png")

    if kde:
        from scipy.stats import gaussian_kde

        fig, axes = plt.subplots(1, len(kde), figsize=(3.2 * len(kde), 3.4), squeeze=False, sharey=True)
        for ax, (name, d) in zip(axes[0], kde.items(), strict=True):
            s, q = np.asarray(d["wup"]), np.asarray(d["quality"])
            try:
                k = gaussian_kde(np.vstack([s, q]))
                gx, gy = np.meshgrid(np.linspace(0, 1.05, 80), np.linspace(0, 1, 80))
                ax.contourf(
                    gx, gy, k(np.vstack([gx.ravel(), gy.ravel()])).reshape(gx.shape), levels=8, cmap="Blues"
                )
            except (np.linalg.LinAlgError, ValueError):  # degenerate (e.g. all predictions unchanged)
                pass
            ax.scatter(s, q, s=5, c="k", alpha=0.4)
            ax.set(title=f"{name} (n={len(s)})", xlabel="Wu-Palmer similarity", xlim=(0, 1.05), ylim=(0, 1))
        axes[0][0].set_ylabel("predicted quality")
        fig.tight_layout()
        fig.savefig(report_dir / "kde_quality_wup.png", dpi=110)
        plt.close(fig)
        files.append("kde_quality_wup.png")
    return files


def _pct(s: dict[str, float] | None) -> str:
    if not s or s.get("n_repeats", 0) == 0 or s["mean"] != s["mean"]:
        return "-"
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}%"


def _num(s: dict[str, float] | None, digits: int = 3) -> str:
    if not s or s.get("n_repeats", 0) == 0 or s["mean"] != s["mean"]:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _n(s: dict[str, Any] | None) -> str:
    return "-" if not s else f"{s['mean']:.0f}"


def comparisons(res: dict[str, Any], far: float = 0.05, base: str = "detector") -> dict[str, Any]:
    """``base`` vs each other method per group at the fixed false-alarm rate (mean detection rates)."""
    key = f"far_{far:g}"
    out: dict[str, Any] = {}
    for m in METHODS:
        if m == base:
            continue
        rows = {}
        for g in UNFIT_GROUPS:
            if g in res[base]:
                d, o = res[base][g][key]["detection_rate"]["mean"], res[m][g][key]["detection_rate"]["mean"]
                rows[g] = {"detector": d, m: o, "detector_wins": bool(d > o), "tie": bool(d == o)}
        out[m] = rows
    return out


def write_markdown(path: Path, rep: dict[str, Any], plots: list[str]) -> None:
    res = rep["results"]
    s = rep["setup"]
    n = rep["n_images"]
    groups = [g for g in UNFIT_GROUPS if g in res["detector"]]
    op = res["operating_point"]
    L: list[str] = []
    L += [f"# fitguard evaluation: {s['backbone']}", ""]
    L += [
        f"Images: {s['images']}. Originals: {s['originals']['mode']} ({n['originals']} originals from "
        f"{s['originals']['kept_photos']} photos, {s['originals']['candidates']} candidate views). "
        f"Protocol: {s['repeats']} repeats, 50% of the {s['split_by']}s train, the rest test. "
        f"Numbers are mean ± standard deviation over the repeats; n is the number of images per repeat.",
        "",
    ]
    L += ["| group | images | how made |", "|---|---|---|"]
    for g in GROUPS:
        if g in n:
            L.append(f"| {g} | {n[g]} | {s['group_notes'].get(g, '')} |")
    L += [""]
    L += ["## Table IV: baselines", "",
          "| group | baseline-1 accuracy | baseline-2 detection rate (quality < 0.3) | baseline-2 accuracy on fit | n |",
          "|---|---|---|---|---|"]  # fmt: skip
    b1 = res.get("baseline1", {})
    for g in groups:
        o = op["baseline2"][g]
        L.append(f"| {g} | {_pct(b1.get(g, {}).get('accuracy'))} | {_pct(o['detection_rate'])} | "
                 f"{_pct(o.get('accuracy_fit'))} | {_n(o['n_images'])} |")  # fmt: skip
    L.append(
        f"| originals (clean passed as fit) | 100% by selection | - | "
        f"{_pct(op['baseline2']['originals']['clean_pass_rate'])} | {_n(op['baseline2']['originals']['n_images'])} |"
    )
    L += ["", "## Table V: the detector at its operating threshold", "",
          f"Threshold rule: {s['threshold_rule']}; threshold per repeat {_num(op['detector']['threshold'])}.", "",
          "| group | detection rate | classifier accuracy on images passed as fit | n |", "|---|---|---|---|"]  # fmt: skip
    for g in groups:
        o = op["detector"][g]
        L.append(
            f"| {g} | {_pct(o['detection_rate'])} | {_pct(o.get('accuracy_fit'))} | {_n(o['n_images'])} |"
        )
    o = op["detector"]["originals"]
    L.append(f"| originals: clean passed as fit | {_pct(o['clean_pass_rate'])} | - | {_n(o['n_images'])} |")
    if "distorted_by_kind" in op["detector"]:
        L += ["", "Distorted, detection rate by kind (detector / baseline-2): " + ", ".join(
            f"{k} {_pct(v)} / {_pct(op['baseline2']['distorted_by_kind'][k])}"
            for k, v in op["detector"]["distorted_by_kind"].items())]  # fmt: skip
    for far in FARS:
        key = f"far_{far:g}"
        L += ["", f"## Detection at a fixed clean false-alarm rate of {100 * far:g}%", "",
              "Threshold per method and repeat: the matching quantile of the clean test originals' scores. "
              "AUROC and FPR@95%TPR are threshold-free.", "",
              "| group | method | detection rate | accuracy on fit | AUROC | FPR@95%TPR | n (group / clean) |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
        for g in groups:
            for m in METHODS:
                e = res[m][g]
                L.append(f"| {g} | {METHOD_NAMES[m]} | {_pct(e[key]['detection_rate'])} | "
                         f"{_pct(e[key].get('accuracy_fit'))} | {_num(e['auroc'])} | {_pct(e['fpr_at_95tpr'])} | "
                         f"{_n(e['n_images'])} / {_n(e['n_clean'])} |")  # fmt: skip
    if "selective" in res:
        sel = res["selective"]
        L += ["", "## Selective classification (clean + distorted test images)", "",
              f"n = {_n(sel['n_images'])} images per repeat; accuracy with no rejection {_pct(sel['base_accuracy'])}. "
              "AURC: lower is better.", "",
              "| method | AURC | accuracy at 80% coverage | at 90% | at 95% |", "|---|---|---|---|---|"]  # fmt: skip
        for m in METHODS:
            e = sel[m]
            L.append(f"| {METHOD_NAMES[m]} | {_num(e['aurc'])} | {_pct(e['accuracy_at_0.8'])} | "
                     f"{_pct(e['accuracy_at_0.9'])} | {_pct(e['accuracy_at_0.95'])} |")  # fmt: skip
    for title, key in (
        ("Detector", "comparisons"),
        (f"Detector trained on {', '.join(rep['setup']['detector_all_unfit_groups'])}", "comparisons_all"),
    ):
        L += ["", f"## {title} vs the other methods at 5% clean false alarms", ""]
        for m, rows in rep[key].items():
            wins = [g for g, r in rows.items() if r["detector_wins"]]
            losses = [g for g, r in rows.items() if not r["detector_wins"] and not r["tie"]]
            ties = [g for g, r in rows.items() if r["tie"]]
            L.append(f"- vs {METHOD_NAMES[m]}: better on {', '.join(wins) or 'none'}"
                     + (f"; worse on {', '.join(losses)}" if losses else "")
                     + (f"; equal on {', '.join(ties)}" if ties else "") + ".")  # fmt: skip
    sd = rep.get("shipped_detector")
    if sd:
        L += [
            "",
            "## The shipped detector file on every image",
            "",
            "Fitted on all pairs, so originals and adversarial images are in-sample here.",
            "",
            "| group | detection rate | n |",
            "|---|---|---|",
        ]
        for g, e in sd.items():
            L.append(f"| {g} | {100 * e['detection_rate']:.1f}% | {e['n_images']} |")
    L += ["", "## Figures", ""]
    L += [f"![{p}]({p})" for p in plots]
    if "kde_quality_wup.png" in plots:
        L += [
            "",
            f"Fig. 3 view: quality vs Wu-Palmer similarity of clean and degraded top-1 "
            f"(n = {rep['kde_n_images']} images, all of the adversarial and distorted groups).",
        ]
    L += ["", "## Timings (seconds)", "", ", ".join(f"{k} {v:.1f}" for k, v in rep["seconds"].items()), ""]
    path.write_text("\n".join(L))


def _group_notes(groups: dict[str, ImageGroup]) -> dict[str, str]:
    notes = {}
    o = groups["originals"].meta
    notes["originals"] = o["mode"]
    if "distorted" in groups:
        d = groups["distorted"].meta
        notes["distorted"] = f"{', '.join(d['kinds'])} x levels {d['levels']} of {d['sources']} originals"
    if "adversarial" in groups:
        a = groups["adversarial"].meta
        notes["adversarial"] = (
            f"ART universal perturbation (DeepFool, L-inf {a['eps'] * 255:.0f}/255, delta "
            f"{a['delta']}) fitted on {a['fit_images']} originals: ART fooling rate "
            f"{a['art_fooling_rate']:.3f}; served (uint8) fooling rate {a['fooling_rate']:.3f}"
        )
    if "fool_gd" in groups:
        f = groups["fool_gd"].meta
        notes["fool_gd"] = (
            f"gradient ascent from the mean image, {f['steps']} Adam steps; target reached "
            f"{100 * f['target_hit_rate']:.0f}%, median target confidence {f['median_target_confidence']:.3f}"
        )
    if "fool_ev" in groups:
        f = groups["fool_ev"].meta
        notes["fool_ev"] = (
            f"MAP-Elites, direct encoding {f['grid']}x{f['grid']}, {f['evaluations']} evaluations; "
            f"median elite confidence {f['median_confidence']:.3f}"
        )
    return notes


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

    from fitguard.detector import load_detector

    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    det = load_detector(detector)
    if det.meta.get("backbone") not in (None, backbone):
        raise ValueError(f"{detector} was trained for backbone {det.meta['backbone']!r}, not {backbone!r}")
    repeats = int(repeats or det.meta.get("repeats", REPEATS))
    seed = int(det.meta.get("seed", 0))
    split_by = str(det.meta.get("split_by", "photo"))
    target_far = det.meta.get("target_far", 0.05)
    config = config or GroupConfig(seed=seed)
    cache_dir = Path(cache) if cache is not None else default_cache_dir()
    models = load_models(backbone, head, weights)
    if det.meta.get("head_key") not in (None, models.key):
        log.warning("%s was trained with another quality head or backbone weights than %s", detector, head)
    groups = build_groups(models.backbone, images, GROUPS, config, cache_dir)
    seconds["groups"] = time.perf_counter() - t0
    t = time.perf_counter()
    feats = {g: compute_features(models, grp, patches, cache=cache_dir) for g, grp in groups.items()}
    seconds["features"] = time.perf_counter() - t
    t = time.perf_counter()
    # The shipped detector's unfit groups; a detector trained the paper's way (adversarial alone) gets
    # every group, so detector_all still adds something beside detector.
    recipe = tuple(det.meta.get("unfit_groups") or ())
    recipe = UNFIT_GROUPS if recipe in ((), ("adversarial",)) else recipe
    res = evaluate_scores(groups, feats, repeats, seed, split_by, target_far, recipe)
    seconds["protocol"] = time.perf_counter() - t
    t = time.perf_counter()
    kde = wup_kde_data(groups, feats) if wordnet else None
    seconds["wordnet"] = time.perf_counter() - t
    shipped = {}
    for g in ["originals", *UNFIT_GROUPS]:
        if g in groups:
            fit = det.fit_verdict(feats[g].features)
            shipped[g] = {"detection_rate": float(np.mean(~fit)), "n_images": len(fit),
                          "in_training_data": g == "originals" or g in det.meta.get("unfit_groups", ["adversarial"])}  # fmt: skip
    out_dir = Path(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    plots = _plots(out_dir, res, kde)
    seconds["plots"] = time.perf_counter() - t
    res.pop("_roc_example")
    seconds["total"] = time.perf_counter() - t0
    rep = {
        "setup": {
            "backbone": backbone, "weights_id": models.backbone.weights_id, "iqa_head": str(head),
            "detector": str(detector), "images": "package-shipped photos" if images is None else str(images),
            "patches": patches, "repeats": repeats, "seed": seed, "split_by": split_by,
            "threshold_rule": det.meta.get("threshold_rule", "SVM boundary (0)")
            + (f", target clean false-alarm rate {target_far}" if target_far is not None else ""),
            "quality_threshold_baseline2": QUALITY_THRESHOLD, "fars": list(FARS),
            "detector_all_unfit_groups": list(recipe),
            "originals": groups["originals"].meta, "group_meta": {g: grp.meta for g, grp in groups.items()},
            "group_notes": _group_notes(groups), "methods": METHOD_NAMES,
        },
        "n_images": {g: len(grp) for g, grp in groups.items()},
        "results": res,
        "comparisons": comparisons(res, 0.05),
        "comparisons_8.57": comparisons(res, 0.0857),
        "comparisons_all": comparisons(res, 0.05, "detector_all"),
        "shipped_detector": shipped,
        "kde": kde,
        "kde_n_images": 0 if not kde else sum(len(v["wup"]) for v in kde.values()),
        "plots": plots,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }  # fmt: skip
    (out_dir / "report.json").write_text(json.dumps(rep, indent=1, default=_json_default) + "\n")
    write_markdown(out_dir / "report.md", rep, plots)
    return rep


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", required=True, help="resnet152, efficientnet_lite0 or tiny")
    parser.add_argument("--iqa-head", required=True, help="quality head file (fitguard train iqa)")
    parser.add_argument("--detector", required=True, help="detector file (fitguard train detector)")
    parser.add_argument("--report", required=True, help="folder for report.md, report.json and PNG plots")
    parser.add_argument(
        "--images",
        default=None,
        help="ImageNet-style labelled folder or any photo folder; default: package photos",
    )
    parser.add_argument("--labels", default=None, help="labels file: '<file> <index or wnid>' per line")
    parser.add_argument(
        "--limit", type=int, default=None, help="use a seeded subset of this many labelled images"
    )
    parser.add_argument("--weights", default="default", help="backbone weights (see fitguard.backbones)")
    parser.add_argument(
        "--patches", type=int, default=DEFAULT_PATCHES, help="IQA patches per image (as served)"
    )
    parser.add_argument("--views", type=int, default=GroupConfig.views, help="views per unlabelled photo")
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
    parser.add_argument(
        "--cache", default=None, help="cache folder (default $FITGUARD_CACHE or ~/.cache/fitguard)"
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from fitguard.detector import load_detector

    seed = int(load_detector(args.detector).meta.get("seed", 0))
    config = GroupConfig(views=args.views, labels_file=args.labels, limit=args.limit, seed=seed,
                         distort_sources=args.distort_sources or None)  # fmt: skip
    rep = evaluate(args.backbone, args.iqa_head, args.detector, args.report, args.images, args.weights,
                   args.patches, args.cache, config, args.repeats, not args.no_wordnet)  # fmt: skip
    res = rep["results"]
    for g in UNFIT_GROUPS:
        if g in res["detector"]:
            line = ", ".join(f"{m} {res[m][g]['far_0.05']['detection_rate']['mean']:.3f}" for m in METHODS)
            print(f"{g:12s} detection at 5% false alarms: {line}")
    print(f"wrote {Path(args.report) / 'report.md'} ({rep['seconds']['total']:.0f} s)")
    return 0
