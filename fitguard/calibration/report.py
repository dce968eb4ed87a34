"""The calibration report: ``report.json`` (every figure), ``report.md`` (the same, to read) and
``risk_coverage.png`` (labelled: risk against coverage with the bound and the guarantee drawn;
unlabelled: pass rate against threshold with the interval), written to one folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.guarantee import RiskCurve

JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "report.json", "report.md", "risk_coverage.png"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def _interval(pair: Any) -> str:
    return f"[{_pct(pair[0])}, {_pct(pair[1])}]"


def _rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    cal, check, sample = report.get("calibration"), report.get("check"), report["sample"]
    rows = [
        ("guarantee", report["guarantee"]),
        ("images (judged of listed)", f"{sample['judged']} of {sample['images']}"),
        (
            "calibration images (used by the bounds) / check images",
            "{calibration} ({calibration_used}) / {check}".format(**sample),
        ),
        (
            "threshold (new, previous)",
            "{}, {:.6g}".format(_num(report["threshold"]["new"]), report["threshold"]["previous"]),
        ),
        ("detector version (new, previous)", "{new}, {previous}".format(**report["detector_version"])),
    ]
    if cal and report["mode"] == "risk":
        rows += [
            ("calibration: coverage", f"{_pct(cal['coverage'])} ({cal['passed']} of {cal['n']})"),
            ("calibration: risk", f"{_pct(cal['risk'])} ({cal['errors']} wrong)"),
            (f"calibration: risk bound ({_pct(1 - report['delta'])})", _pct(cal["bound"])),
            ("coverage on new images (interval)", _interval(cal["pass_interval"])),
        ]
    elif cal:
        rows += [
            ("calibration: pass rate", f"{_pct(cal['pass_rate'])} ({cal['passed']} of {cal['n']})"),
            ("pass rate on new images (interval)", _interval(cal["interval"])),
        ]
    if check:
        rows.append(("check: coverage", f"{_pct(check['coverage'])} {_interval(check['coverage_interval'])}"))
        if "risk" in check:
            rows.append(("check: risk", f"{_pct(check['risk'])} {_interval(check['risk_interval'])}"))
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Calibration {report['id'] or '(none written)'}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _rows(report)]
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    if report.get("out"):
        lines += [
            "",
            f"Serve `{report['out']}`: its ensemble answers with detector version "
            f"{report['detector_version']['new']}; version {report['detector_version']['previous']} "
            "stays loaded beside it.",
        ]
    lines += ["", f"Intervals are two-sided at {_pct(1 - report['delta'])} (Clopper-Pearson).", ""]
    return "\n".join(lines)


def _plot_risk(
    ax: Any, report: dict[str, Any], curve: RiskCurve, confidence: np.ndarray, wrong: np.ndarray
) -> None:
    delta, target = report["delta"], report["target"]["risk"]
    previous = confidence >= report["threshold"]["previous"]
    if previous.any():
        ax.plot([previous.mean()], [wrong[previous].mean()], "x", color="k", label="previous threshold")
    ax.plot(curve.coverage, curve.risk, color="C0", label="risk on the calibration part")
    ax.plot(curve.coverage, curve.bound(delta), color="C0", ls="--", label=f"upper bound ({1 - delta:.0%})")
    ax.axhline(target, color="C3", lw=1, label=f"target risk {target:g}")
    cal, check = report.get("calibration"), report.get("check")
    if cal:
        ax.axvline(cal["coverage"], color="C2", lw=1, label=f"calibrated: coverage {cal['coverage']:.1%}")
        ax.plot([cal["coverage"]], [cal["bound"]], "o", color="C2")
    if check and check["passed"]:
        low, high = check["risk_interval"]
        ax.errorbar(
            [check["coverage"]],
            [check["risk"]],
            yerr=[[check["risk"] - low], [high - check["risk"]]],
            fmt="s",
            color="C1",
            capsize=3,
            label="check part (held out)",
        )
    ax.set(xlabel="coverage (share of images passed)", ylabel="selective risk (wrong among passed)")
    ax.set_ylim(0, min(1.0, max(3 * target, float(np.max(curve.risk)) + 0.05)))
    ax.set_title(f"risk <= {target:g} with probability >= {1 - delta:g}")


def _plot_pass_rate(ax: Any, report: dict[str, Any], confidence: np.ndarray) -> None:
    delta, target = report["delta"], report["target"]["pass_rate"]
    desc = np.sort(confidence)[::-1]
    ax.plot(desc, np.arange(1, desc.size + 1) / desc.size, color="C0", label="pass rate, calibration part")
    ax.axhline(target, color="C3", lw=1, label=f"target pass rate {target:g}")
    cal, check = report.get("calibration"), report.get("check")
    if cal:
        ax.axvline(cal["threshold"], color="C2", lw=1, label=f"threshold {cal['threshold']:.4g}")
        ax.axhspan(*cal["interval"], color="C2", alpha=0.2, label=f"interval ({1 - delta:.0%})")
    if check:
        ax.plot([report["threshold"]["new"]], [check["coverage"]], "s", color="C1", label="check part")
    ax.set(xlabel="threshold (detector confidence)", ylabel="pass rate")
    ax.set_title(f"pass rate {target:g}, interval at {1 - delta:g}")


def plot(path: Path, report: dict[str, Any], confidence: np.ndarray, wrong: np.ndarray | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fitguard.guarantee import risk_curve

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if report["mode"] == "risk":
        _plot_risk(ax, report, risk_curve(confidence, wrong), confidence, np.asarray(wrong, bool))
    else:
        _plot_pass_rate(ax, report, confidence)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    folder: str | Path, report: dict[str, Any], confidence: np.ndarray, wrong: np.ndarray | None
) -> Path:
    """Write the three files to ``folder`` (created); ``confidence`` and ``wrong`` of the calibration
    part draw the curve. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / JSON_NAME).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (folder / MARKDOWN_NAME).write_text(markdown(report), encoding="utf-8")
    plot(folder / PLOT_NAME, report, confidence, wrong)
    return folder
