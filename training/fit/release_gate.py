"""The release gate: the shipped detector against max softmax probability (MSP), in-domain and under
every shift of the fit = right report, judged by its worst case rather than its mean.

The gate fails when, anywhere:

- the detector *loses* to MSP (the whole 95% interval of the AURC difference above zero);
- on a natural or clean mix the upper bound of (detector AURC - MSP AURC) exceeds
  :data:`NATURAL_MARGIN` of MSP's AURC (never measurably worse than the classifier's own confidence);
- fooling images are refused, or right clean answers passed, below the rates of :data:`RATES`.

Paper mixes (fooling images in) carry a target beside it, reported but not gating: the detector's AURC
at least :data:`PAPER_GAIN` below MSP's. MSP ranks the natural answers, so where almost every answer is
wrong (the strongest degradations) refusing the fooling images cannot move the ratio that far.
"""

from __future__ import annotations

from typing import Any

from fitguard.training.fit.signals import SHIPPED

NATURAL_MARGIN = 0.02
PAPER_GAIN = 0.15
RATES: dict[str, float] = {
    "fooling_refused": 0.95,
    "right_clean_passed": 0.90,
    "right_clean_passed_shift": 0.85,
}


def _places(rep: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(where, mix, the AURC entries of every method) for every place the report measured."""
    out = [("in-domain", mix, res["aurc"]) for mix, res in rep["results"].items()]
    for name, shift in rep.get("domain_shift", {}).items():
        out += [(name, mix, shift[mix]["aurc"]) for mix in ("clean", "natural", "paper") if mix in shift]
    for name, res in rep.get("unseen", {}).items():
        out += [(name, mix, res[mix]["aurc"]) for mix in ("natural", "paper")]
    return out


def aurc_rows(rep: dict[str, Any], method: str = SHIPPED) -> list[dict[str, Any]]:
    rows = []
    for where, mix, aurc in _places(rep):
        msp, det = aurc["msp"]["mean"], aurc[method]
        lo, hi = det["minus_msp"]["ci95"]
        if mix == "paper":
            ok, rule = det["mean"] <= (1.0 - PAPER_GAIN) * msp, f"<= {1 - PAPER_GAIN:.2f} x MSP"
        else:
            ok, rule = hi <= NATURAL_MARGIN * msp, f"upper bound <= +{NATURAL_MARGIN:.0%} of MSP"
        rows.append(
            {
                "where": where,
                "mix": mix,
                "aurc": det["mean"],
                "msp": msp,
                "ratio": det["mean"] / msp if msp else float("nan"),
                "minus_msp_ci95": [lo, hi],
                "loses": lo > 0.0,
                "rule": rule,
                "ok": bool(ok),
            }
        )
    return rows


def _rate(table: dict[str, Any], group: str, key: str) -> float | None:
    entry = table.get(group)
    return None if entry is None else entry[key]


def rate_rows(rep: dict[str, Any], method: str = SHIPPED) -> list[dict[str, Any]]:
    rows = []
    paper = rep["results"]["paper"]["table_v"][method]
    for group in ("fool_gd", "fool_ev"):
        passed = _rate(paper, group, "passed")
        if passed is not None:
            rows.append({"what": f"{group} refused", "value": 1 - passed, "min": RATES["fooling_refused"]})
    clean = _rate(rep["results"]["clean"]["table_v"][method], "clean", "right_passed")
    rows.append({"what": "right clean passed, in-domain", "value": clean, "min": RATES["right_clean_passed"]})
    for name, shift in rep.get("domain_shift", {}).items():
        value = _rate(shift["clean"]["table_v"][method], "clean", "right_passed")
        rows.append(
            {"what": f"right clean passed, {name}", "value": value, "min": RATES["right_clean_passed_shift"]}
        )
    for name in ("plain_background",):
        if name in rep.get("unseen", {}):
            value = _rate(rep["unseen"][name]["table_v"][method], name, "right_passed")
            rows.append(
                {
                    "what": f"right clean passed, {name}",
                    "value": value,
                    "min": RATES["right_clean_passed_shift"],
                }
            )
    for r in rows:
        r["ok"] = r["value"] is not None and r["value"] >= r["min"]
    return rows


def release_gate(rep: dict[str, Any], method: str = SHIPPED) -> dict[str, Any]:
    """Every row of the module docstring, the worst AURC ratio to MSP per mix kind, the verdict and
    whether the paper-mix target is met everywhere."""
    aurc, rates = aurc_rows(rep, method), rate_rows(rep, method)
    gating = [r for r in aurc if r["mix"] != "paper"]
    worst = {
        kind: max((r for r in aurc if (r["mix"] == "paper") == (kind == "paper")), key=lambda r: r["ratio"])
        for kind in ("natural", "paper")
    }
    return {
        "method": method,
        "passed": all(r["ok"] for r in gating + rates) and not any(r["loses"] for r in aurc),
        "loses_anywhere": any(r["loses"] for r in aurc),
        "paper_target_met": all(r["ok"] for r in aurc if r["mix"] == "paper"),
        "worst": {k: {"where": r["where"], "mix": r["mix"], "ratio": r["ratio"]} for k, r in worst.items()},
        "aurc": aurc,
        "rates": rates,
    }


def release_gate_lines(gate: dict[str, Any]) -> list[str]:
    """The gate as markdown: verdict, worst ratios, then every failing row."""
    verdict = "PASSED" if gate["passed"] else "FAILED"
    lines = [f"Release gate for `{gate['method']}`: **{verdict}**", ""]
    met = "met" if gate["paper_target_met"] else "not met everywhere (rows below)"
    lines.append(f"- paper-mix target (AURC at least {PAPER_GAIN:.0%} below MSP's): {met}")
    for kind, w in gate["worst"].items():
        lines.append(f"- worst {kind} AURC ratio to MSP: {w['ratio']:.3f} ({w['where']}, {w['mix']} mix)")
    for r in gate["aurc"]:
        if not r["ok"] or r["loses"]:
            lo, hi = r["minus_msp_ci95"]
            what = "loses to MSP" if r["loses"] else "fails" if r["mix"] != "paper" else "misses the target"
            lines.append(
                f"- {what}: {r['where']} {r['mix']}: AURC {r['aurc']:.3f} vs MSP {r['msp']:.3f} "
                f"(difference [{lo:+.3f}, {hi:+.3f}]; rule {r['rule']})"
            )
    for r in gate["rates"]:
        if not r["ok"]:
            lines.append(f"- fails: {r['what']} {r['value']} (at least {r['min']:.2f})")
    return lines
