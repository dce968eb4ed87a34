"""The fit = right report: ``report.json``, ``report.md`` and the risk-coverage plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fitguard.training.fit.protocol import learned_sets
from fitguard.training.fit.release_gate import release_gate_lines
from fitguard.training.paper.report import _json_default, _pyplot, _save

MAIN_METHODS: tuple[str, ...] = (
    "shipped",
    "guarded_uap",
    "lr_right",
    "fit_right",
    "paper_right",
    "paper_uap",
    "lr_msp_quality",
    "msp",
    "maxlogit",
    "margin",
    "energy",
    "doctor",
    "entropy",
    "quality",
)
TABLE_V_GROUPS: tuple[str, ...] = ("clean", "distorted", "uap_deepfool", "uap_pgd", "fool_gd", "fool_ev")


def _ci(entry: dict[str, Any], digits: int = 3) -> str:
    lo, hi = entry["ci95"]
    return f"{entry['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _selective_table(res: dict[str, Any], methods: list[str]) -> list[str]:
    lines = [
        "| method | AURC | minus MSP (95% CI) | rel. | acc@80% | acc@90% | acc@95% |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        a = res["aurc"][m]
        d = a.get("minus_msp")
        diff = _ci(d) if d else "-"
        rel = f"{100 * d['relative']:+.1f}%" if d and d["relative"] is not None else "-"
        accs = " | ".join(_ci(res[f"accuracy_at_{c}"][m]) for c in ("0.8", "0.9", "0.95"))
        lines.append(f"| {m} | {_ci(a)} | {diff} | {rel} | {accs} |")
    return lines


def _table_v(tv: dict[str, Any], methods: list[str]) -> list[str]:
    lines = [
        "| method | group | baseline-1 acc | passed | fit-accuracy | right passed | refused |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        for g in TABLE_V_GROUPS:
            if g in tv.get(m, {}):
                r = tv[m][g]
                lines.append(
                    f"| {m} | {g} | {r['baseline1']:.3f} | {r['passed']:.3f} | {r['fit_accuracy']:.3f} "
                    f"| {r['right_passed']:.3f} | {1 - r['passed']:.3f} |"
                )
    return lines


def _at_threshold(at: dict[str, Any]) -> list[str]:
    lines = [
        "| method | coverage | accuracy of passed | MSP accuracy, same coverage | difference |",
        "|---|---|---|---|---|",
    ]
    for m, r in at.items():
        lines.append(
            f"| {m} | {_ci(r['coverage'])} | {_ci(r['accuracy'])} | {_ci(r['msp_accuracy'])} "
            f"| {_ci(r['minus_msp'])} |"
        )
    return lines


def _sides(value: Any) -> str:
    return ", ".join(value) if isinstance(value, list) else str(value)


def _shift_sections(shifts: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, shift in shifts.items():
        lines += [
            "",
            f"## Domain shift ({name}): train on {_sides(shift['train'])}; test on {_sides(shift['test'])}",
            "",
            f"{shift['n_train']} training rows, {shift['n_test']} test rows.",
            "",
            "| method | clean AURC | natural AURC | paper AURC | right clean passed | clean passed |",
            "|---|---|---|---|---|---|",
        ]
        for m in MAIN_METHODS:
            tv = shift["clean"]["table_v"][m]["clean"]
            lines.append(
                f"| {m} | {_ci(shift['clean']['aurc'][m])} | {_ci(shift['natural']['aurc'][m])} "
                f"| {_ci(shift['paper']['aurc'][m])} | {tv['right_passed']:.3f} | {tv['passed']:.3f} |"
            )
    return lines


def _unseen_sections(unseen: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, res in unseen.items():
        lines += [
            "",
            f"## Never trained on ({name}): {res['n_test_mean']:.0f} held-out images per repeat, "
            f"accuracy {res['base_accuracy']:.3f}",
            "",
            "| method | AURC | minus MSP (95% CI) | paper-mix AURC | minus MSP (95% CI) | right passed |",
            "|---|---|---|---|---|---|",
        ]
        for m in MAIN_METHODS:
            nat, pap = res["natural"]["aurc"][m], res["paper"]["aurc"][m]
            diff = _ci(nat["minus_msp"]) if "minus_msp" in nat else "-"
            pdiff = _ci(pap["minus_msp"]) if "minus_msp" in pap else "-"
            right_passed = res["table_v"][m].get(name, {}).get("right_passed", float("nan"))
            lines.append(f"| {m} | {_ci(nat)} | {diff} | {_ci(pap)} | {pdiff} | {right_passed:.3f} |")
        lines += ["", "At the threshold, against MSP at the same coverage:", ""]
        lines += _at_threshold(res["at_threshold"])
    return lines


def risk_coverage_plot(out_dir: Path, results: dict[str, Any]) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4))
    for ax, (mix, res) in zip(axes, results.items(), strict=True):
        curve = res["curve"]
        for m in ("shipped", "paper_uap", "lr_msp_quality", "msp", "quality"):
            ax.plot(curve["coverage"], curve[m], label=m)
        ax.set_title(f"{mix} mix (held out)")
        ax.set_xlabel("coverage")
        ax.set_ylabel("selective risk")
    axes[0].legend()
    return _save(fig, out_dir / "risk_coverage.png")


def write_markdown(path: Path, rep: dict[str, Any], plot: str) -> None:
    setup = rep["setup"]
    # A team's photos are split by their groups (the labels file's, else each photo), the objects by stamp.
    data, unit = (
        (f"`{setup['labelled']}`", "group") if setup.get("labelled") else ("the labelled objects", "stamp")
    )
    lines = [
        f"# Fit = right: held-out selective classification on {data}",
        "",
        f"Backbone {setup['backbone']}, quality head `{setup['iqa_head']}`, {setup['patches']} patches, "
        f"{setup['repeats']} repeats of a 50% {unit} split, {setup['bootstrap_draws']} bootstrap draws over "
        f"held-out {unit}s (mean over repeats [95% interval]). Thresholds pass "
        f"{100 * setup['pass_rate_right_clean']:.2f}% of the right clean training images.",
        "",
        *(release_gate_lines(rep["gate"]) if "gate" in rep else []),
        "",
        "## Groups",
        "",
        "| group | images | top-1 right | Wu-Palmer right | median quality |",
        "|---|---|---|---|---|",
    ]
    for g, s in rep["groups"].items():
        lines.append(
            f"| {g} | {s['n']} | {s['accuracy']:.3f} | {s['accuracy_wup']:.3f} | {s['quality_median']:.3f} |"
        )
    attacks = setup["attacks"]
    for name in ("uap_deepfool", "uap_pgd"):
        a = attacks.get(name, {})
        lines.append(
            f"\n{name}: fooling rate against the true label {a.get('fooling_rate_true_label', 0):.3f} "
            f"(clean error of the same images {a.get('clean_error_same_images', 0):.3f}), mean |v| "
            f"{a.get('mean_abs_v_255', 0):.2f}/255, max |v| {a.get('max_abs_v_255', 0):.2f}/255."
        )
    ablation = [m for m in learned_sets() if m != "fit_right"]
    for mix, res in rep["results"].items():
        lines += ["", f"## {mix} mix ({res['n_test_mean']:.0f} held-out images per repeat, "]
        lines[-1] += f"accuracy {res['base_accuracy']:.3f})"
        lines += ["", *_selective_table(res, list(MAIN_METHODS)), "", "Feature-group ablation:", ""]
        lines += _selective_table(res, ["fit_right", *ablation])
        lines += ["", "Table V at the thresholds:", "", *_table_v(res["table_v"], list(MAIN_METHODS))]
        if res.get("at_threshold"):
            lines += ["", "At the threshold, against MSP at the same coverage:", ""]
            lines += _at_threshold(res["at_threshold"])
    wup = ("shipped", "lr_right", "fit_right", "msp", "quality", "lr_msp_quality")
    lines += [
        "",
        "## Wu-Palmer variant (AURC)",
        "",
        f"| mix | {' | '.join(wup)} |",
        "|---|" + "---|" * len(wup),
    ]
    for mix, res in rep["wordnet_aurc"].items():
        cells = " | ".join(_ci(res[m]) for m in wup)
        lines.append(f"| {mix} | {cells} |")
    lines += _shift_sections(rep["domain_shift"])
    lines += _unseen_sections(rep.get("unseen", {}))
    lines += ["", f"![risk-coverage]({plot})", "", f"Seconds: {rep['seconds']}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_fit_report(out_dir: Path, rep: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = risk_coverage_plot(out_dir, rep["results"])
    rep["plots"] = [plot]
    (out_dir / "report.json").write_text(json.dumps(rep, indent=1, default=_json_default), encoding="utf-8")
    write_markdown(out_dir / "report.md", rep, plot)
