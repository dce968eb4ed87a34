"""The evaluation report: plots, markdown tables and ``report.json`` from the results of
:func:`fitguard.training.paper.evaluate.evaluate_scores` (no measuring here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.training.image_groups import (
    ADVERSARIAL,
    DISTORTED,
    FOOL_EV,
    FOOL_GD,
    GROUPS,
    ORIGINALS,
    UNFIT_GROUPS,
    ImageGroup,
)
from fitguard.training.paper.protocol import FARS, METHODS

METHOD_NAMES = {
    "detector": "detector (top-5 + quality SVM)",
    "detector_all": "detector trained on the shipped detector's unfit groups",
    "svm_top5": "SVM on top-5 alone",
    "quality": "quality threshold alone",
    "msp": "max softmax probability",
    "energy": "energy score",
}


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path.name


def roc_plot(report_dir: Path, example: dict[str, Any]) -> str:
    """ROC curves of every method per unfit group, from the first repeat."""
    from sklearn.metrics import roc_curve

    groups = [g for g in UNFIT_GROUPS if g in example]
    fig, axes = _pyplot().subplots(1, len(groups), figsize=(4 * len(groups), 4), squeeze=False)
    for ax, g in zip(axes[0], groups, strict=True):
        for m in METHODS:
            c, s = example[g][m]
            fpr, tpr, _ = roc_curve(np.r_[np.zeros(len(c)), np.ones(len(s))], np.r_[c, s])
            ax.plot(fpr, tpr, label=m)
        for far in FARS:
            ax.axvline(far, color="grey", lw=0.5, ls=":")
        ax.set(title=f"{g} vs clean (repeat 1)", xlabel="clean false-alarm rate", ylabel="detection rate")
    axes[0][0].legend(fontsize=8)
    return _save(fig, report_dir / "roc.png")


def detection_plot(report_dir: Path, res: dict[str, Any], groups: list[str]) -> str:
    """Detection rate at 5% clean false alarms, per group and method, with the spread over repeats."""
    fig, ax = _pyplot().subplots(figsize=(1.6 * len(groups) + 3, 4))
    width = 0.8 / len(METHODS)
    for i, m in enumerate(METHODS):
        d = [res[m][g]["far_0.05"]["detection_rate"] for g in groups]
        means, stds = [v["mean"] for v in d], [v["std"] for v in d]
        ax.bar(np.arange(len(groups)) + i * width, means, width, yerr=stds, label=m, capsize=2)
    ax.set_xticks(np.arange(len(groups)) + width * (len(METHODS) - 1) / 2, groups)
    ax.set(ylabel="detection rate at 5% clean false alarms", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    return _save(fig, report_dir / "detection_at_5pct_far.png")


def risk_coverage_plot(report_dir: Path, curve: dict[str, Any]) -> str:
    fig, ax = _pyplot().subplots(figsize=(5, 4))
    for m in METHODS:
        if m in curve:
            ax.plot(curve["coverage"], curve[m], label=m)
    ax.set(xlabel="coverage", ylabel="selective risk (error rate)", title="clean + distorted (test halves)")
    ax.legend(fontsize=8)
    return _save(fig, report_dir / "risk_coverage.png")


def kde_plot(report_dir: Path, kde: dict[str, Any]) -> str:
    """Fig. 3: quality against the Wu-Palmer similarity of clean and degraded predictions, per panel."""
    from scipy.stats import gaussian_kde

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(kde), figsize=(3.2 * len(kde), 3.4), squeeze=False, sharey=True)
    for ax, (name, d) in zip(axes[0], kde.items(), strict=True):
        s, q = np.asarray(d["wup"]), np.asarray(d["quality"])
        try:
            k = gaussian_kde(np.vstack([s, q]))
            gx, gy = np.meshgrid(np.linspace(0, 1.05, 80), np.linspace(0, 1, 80))
            density = k(np.vstack([gx.ravel(), gy.ravel()])).reshape(gx.shape)
            ax.contourf(gx, gy, density, levels=8, cmap="Blues")
        except (np.linalg.LinAlgError, ValueError):  # degenerate (e.g. all predictions unchanged)
            pass
        ax.scatter(s, q, s=5, c="k", alpha=0.4)
        ax.set(title=f"{name} (n={len(s)})", xlabel="Wu-Palmer similarity", xlim=(0, 1.05), ylim=(0, 1))
    axes[0][0].set_ylabel("predicted quality")
    return _save(fig, report_dir / "kde_quality_wup.png")


def write_plots(report_dir: Path, res: dict[str, Any], kde: dict[str, Any] | None) -> list[str]:
    """Every figure of the report; returns their file names."""
    example = res["_roc_example"]
    files = [roc_plot(report_dir, example)]
    files.append(detection_plot(report_dir, res, [g for g in UNFIT_GROUPS if g in example]))
    curve = res.get("risk_coverage_curve", {})
    if len(curve) > 1:
        files.append(risk_coverage_plot(report_dir, curve))
    if kde:
        files.append(kde_plot(report_dir, kde))
    return files


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


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


def _setup_lines(rep: dict[str, Any]) -> list[str]:
    s, n = rep["setup"], rep["n_images"]
    o = s["originals"]
    lines = [
        f"# fitguard evaluation: {s['backbone']}",
        "",
        f"Images: {s['images']}. Originals: {o['mode']} ({n[ORIGINALS]} originals from "
        f"{o['kept_photos']} photos, {o['candidates']} candidate views). "
        f"Protocol: {s['repeats']} repeats, 50% of the {s['split_by']}s train, the rest test. "
        f"Numbers are mean ± standard deviation over the repeats; n is the number of images per repeat.",
        "",
        "| group | images | how made |",
        "|---|---|---|",
    ]
    lines += [f"| {g} | {n[g]} | {s['group_notes'].get(g, '')} |" for g in GROUPS if g in n]
    return [*lines, ""]


def _baseline_lines(res: dict[str, Any], groups: list[str]) -> list[str]:
    op, b1 = res["operating_point"], res.get("baseline1", {})
    lines = [
        "## Table IV: baselines",
        "",
        "| group | baseline-1 accuracy | baseline-2 detection rate (quality < 0.3) "
        "| baseline-2 accuracy on fit | n |",
        "|---|---|---|---|---|",
    ]
    for g in groups:
        o = op["baseline2"][g]
        lines.append(
            f"| {g} | {_pct(b1.get(g, {}).get('accuracy'))} | {_pct(o['detection_rate'])} | "
            f"{_pct(o.get('accuracy_fit'))} | {_n(o['n_images'])} |"
        )
    clean = op["baseline2"][ORIGINALS]
    lines.append(
        f"| originals (clean passed as fit) | 100% by selection | - | "
        f"{_pct(clean['clean_pass_rate'])} | {_n(clean['n_images'])} |"
    )
    return lines


def _operating_point_lines(rep: dict[str, Any], groups: list[str]) -> list[str]:
    op = rep["results"]["operating_point"]
    lines = [
        "",
        "## Table V: the detector at its operating threshold",
        "",
        f"Threshold rule: {rep['setup']['threshold_rule']}; "
        f"threshold per repeat {_num(op['detector']['threshold'])}.",
        "",
        "| group | detection rate | classifier accuracy on images passed as fit | n |",
        "|---|---|---|---|",
    ]
    for g in groups:
        o = op["detector"][g]
        lines.append(
            f"| {g} | {_pct(o['detection_rate'])} | {_pct(o.get('accuracy_fit'))} | {_n(o['n_images'])} |"
        )
    o = op["detector"][ORIGINALS]
    lines.append(
        f"| originals: clean passed as fit | {_pct(o['clean_pass_rate'])} | - | {_n(o['n_images'])} |"
    )
    if "distorted_by_kind" in op["detector"]:
        by_kind = op["baseline2"]["distorted_by_kind"]
        kinds = ", ".join(
            f"{k} {_pct(v)} / {_pct(by_kind[k])}" for k, v in op["detector"]["distorted_by_kind"].items()
        )
        lines += ["", "Distorted, detection rate by kind (detector / baseline-2): " + kinds]
    return lines


def _far_lines(res: dict[str, Any], groups: list[str], far: float) -> list[str]:
    key = f"far_{far:g}"
    lines = [
        "",
        f"## Detection at a fixed clean false-alarm rate of {100 * far:g}%",
        "",
        "Threshold per method and repeat: the matching quantile of the clean test originals' scores. "
        "AUROC and FPR@95%TPR are threshold-free.",
        "",
        "| group | method | detection rate | accuracy on fit | AUROC | FPR@95%TPR | n (group / clean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        for m in METHODS:
            e = res[m][g]
            lines.append(
                f"| {g} | {METHOD_NAMES[m]} | {_pct(e[key]['detection_rate'])} | "
                f"{_pct(e[key].get('accuracy_fit'))} | {_num(e['auroc'])} | {_pct(e['fpr_at_95tpr'])} | "
                f"{_n(e['n_images'])} / {_n(e['n_clean'])} |"
            )
    return lines


def _selective_lines(sel: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Selective classification (clean + distorted test images)",
        "",
        f"n = {_n(sel['n_images'])} images per repeat; accuracy with no rejection "
        f"{_pct(sel['base_accuracy'])}. AURC: lower is better.",
        "",
        "| method | AURC | accuracy at 80% coverage | at 90% | at 95% |",
        "|---|---|---|---|---|",
    ]
    for m in METHODS:
        e = sel[m]
        lines.append(
            f"| {METHOD_NAMES[m]} | {_num(e['aurc'])} | {_pct(e['accuracy_at_0.8'])} | "
            f"{_pct(e['accuracy_at_0.9'])} | {_pct(e['accuracy_at_0.95'])} |"
        )
    return lines


def _comparison_lines(rep: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for title, key in (
        ("Detector", "comparisons"),
        (f"Detector trained on {', '.join(rep['setup']['detector_all_unfit_groups'])}", "comparisons_all"),
    ):
        lines += ["", f"## {title} vs the other methods at 5% clean false alarms", ""]
        for m, rows in rep[key].items():
            wins = [g for g, r in rows.items() if r["detector_wins"]]
            losses = [g for g, r in rows.items() if not r["detector_wins"] and not r["tie"]]
            ties = [g for g, r in rows.items() if r["tie"]]
            lines.append(
                f"- vs {METHOD_NAMES[m]}: better on {', '.join(wins) or 'none'}"
                + (f"; worse on {', '.join(losses)}" if losses else "")
                + (f"; equal on {', '.join(ties)}" if ties else "")
                + "."
            )
    return lines


def _closing_lines(rep: dict[str, Any], plots: list[str]) -> list[str]:
    lines: list[str] = []
    sd = rep.get("shipped_detector")
    if sd:
        lines += [
            "",
            "## The shipped detector file on every image",
            "",
            "Fitted on all pairs, so originals and adversarial images are in-sample here.",
            "",
            "| group | detection rate | n |",
            "|---|---|---|",
        ]
        lines += [f"| {g} | {100 * e['detection_rate']:.1f}% | {e['n_images']} |" for g, e in sd.items()]
    lines += ["", "## Figures", ""]
    lines += [f"![{p}]({p})" for p in plots]
    if "kde_quality_wup.png" in plots:
        lines += [
            "",
            f"Fig. 3 view: quality vs Wu-Palmer similarity of clean and degraded top-1 "
            f"(n = {rep['kde_n_images']} images, all of the adversarial and distorted groups).",
        ]
    seconds = ", ".join(f"{k} {v:.1f}" for k, v in rep["seconds"].items())
    return [*lines, "", "## Timings (seconds)", "", seconds, ""]


def write_markdown(path: Path, rep: dict[str, Any], plots: list[str]) -> None:
    res = rep["results"]
    groups = [g for g in UNFIT_GROUPS if g in res["detector"]]
    lines = _setup_lines(rep) + _baseline_lines(res, groups) + _operating_point_lines(rep, groups)
    for far in FARS:
        lines += _far_lines(res, groups, far)
    if "selective" in res:
        lines += _selective_lines(res["selective"])
    lines += _comparison_lines(rep) + _closing_lines(rep, plots)
    path.write_text("\n".join(lines))


def group_notes(groups: dict[str, ImageGroup]) -> dict[str, str]:
    """One line per group on how it was made, from the meta its generator recorded."""
    notes = {ORIGINALS: groups[ORIGINALS].meta["mode"]}
    if DISTORTED in groups:
        d = groups[DISTORTED].meta
        notes[DISTORTED] = f"{', '.join(d['kinds'])} x levels {d['levels']} of {d['sources']} originals"
    if ADVERSARIAL in groups:
        a = groups[ADVERSARIAL].meta
        notes[ADVERSARIAL] = (
            f"ART universal perturbation (DeepFool, L-inf {a['eps'] * 255:.0f}/255, delta "
            f"{a['delta']}) fitted on {a['fit_images']} originals: ART fooling rate "
            f"{a['art_fooling_rate']:.3f}; served (uint8) fooling rate {a['fooling_rate']:.3f}"
        )
    if FOOL_GD in groups:
        f = groups[FOOL_GD].meta
        notes[FOOL_GD] = (
            f"gradient ascent from the mean image, {f['steps']} Adam steps; target reached "
            f"{100 * f['target_hit_rate']:.0f}%, median target confidence {f['median_target_confidence']:.3f}"
        )
    if FOOL_EV in groups:
        f = groups[FOOL_EV].meta
        notes[FOOL_EV] = (
            f"MAP-Elites, direct encoding {f['grid']}x{f['grid']}, {f['evaluations']} evaluations; "
            f"median elite confidence {f['median_confidence']:.3f}"
        )
    return notes


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_report(out_dir: Path, rep: dict[str, Any], plots: list[str]) -> None:
    """``report.json`` and ``report.md`` in ``out_dir`` (the plots are already there)."""
    (out_dir / "report.json").write_text(json.dumps(rep, indent=1, default=_json_default) + "\n")
    write_markdown(out_dir / "report.md", rep, plots)
