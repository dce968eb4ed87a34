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

A team's labelled set may be small. The gate then says what its held-out images cannot show either
way (``not_shown``): a rate whose 95% Wilson interval at the images held out per repeat contains its
minimum (with how many images would settle it), and an AURC row that fails only because its interval
is wide (the mean difference within the margin). Failing rows stay failing: a release is not made on
what the data could not show.
"""

from __future__ import annotations

import math
from typing import Any

from fitguard.training.fit.signals import SHIPPED

NATURAL_MARGIN = 0.02
PAPER_GAIN = 0.15
RATES: dict[str, float] = {
    "fooling_refused": 0.95,
    "right_clean_passed": 0.90,
    "right_clean_passed_shift": 0.85,
}
Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def wilson(rate: float, n: float) -> tuple[float, float]:
    """The 95% Wilson score interval of a rate seen on ``n`` images (the whole [0, 1] for none)."""
    if not n or rate != rate:
        return 0.0, 1.0
    z2 = Z95 * Z95
    centre = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def images_to_show(minimum: float, rate: float = 1.0) -> int | None:
    """The fewest images on which ``rate`` has its Wilson lower bound at ``minimum`` (None where the rate
    is not above it: no number of images shows a rate above its minimum that it does not reach)."""
    if not rate > minimum:
        return None
    n = 1
    while wilson(rate, n)[0] < minimum:
        n *= 2
    lo, hi = n // 2, n  # the bound rises with n: bisect for the first n that reaches the minimum
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if wilson(rate, mid)[0] >= minimum else (mid, hi)
    return hi


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
                "width": hi - lo,
                "not_shown": bool(not ok and mix != "paper" and det["mean"] - msp <= NATURAL_MARGIN * msp),
            }
        )
    return rows


def _rate(table: dict[str, Any], group: str, key: str) -> float | None:
    entry = table.get(group)
    return None if entry is None else entry[key]


def _count(table: dict[str, Any], group: str, key: str) -> float:
    """The held-out images per repeat behind a rate (0 for a report made before they were counted)."""
    return float(table.get(group, {}).get(key, 0.0))


def rate_rows(rep: dict[str, Any], method: str = SHIPPED) -> list[dict[str, Any]]:
    rows = []
    paper = rep["results"]["paper"]["table_v"][method]
    for group in ("fool_gd", "fool_ev"):
        passed = _rate(paper, group, "passed")
        if passed is not None:
            rows.append(
                {
                    "what": f"{group} refused",
                    "value": 1 - passed,
                    "min": RATES["fooling_refused"],
                    "n": _count(paper, group, "n"),
                }
            )
    clean_table = rep["results"]["clean"]["table_v"][method]
    rows.append(
        {
            "what": "right clean passed, in-domain",
            "value": _rate(clean_table, "clean", "right_passed"),
            "min": RATES["right_clean_passed"],
            "n": _count(clean_table, "clean", "n_right"),
        }
    )
    shifted = [
        (name, shift["clean"]["table_v"][method], "clean")
        for name, shift in rep.get("domain_shift", {}).items()
    ]
    shifted += [
        (name, rep["unseen"][name]["table_v"][method], name)
        for name in ("plain_background",)
        if name in rep.get("unseen", {})
    ]
    for name, table, group in shifted:
        rows.append(
            {
                "what": f"right clean passed, {name}",
                "value": _rate(table, group, "right_passed"),
                "min": RATES["right_clean_passed_shift"],
                "n": _count(table, group, "n_right"),
            }
        )
    for r in rows:
        r["ok"] = r["value"] is not None and r["value"] >= r["min"]
        lo, hi = wilson(r["value"] if r["value"] is not None else float("nan"), r["n"])
        r["ci95"] = [lo, hi]
        r["not_shown"] = bool(r["n"]) and lo < r["min"] <= hi
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
        "not_shown": _not_shown(aurc, rates),
    }


def _not_shown(aurc: list[dict[str, Any]], rates: list[dict[str, Any]]) -> list[str]:
    """What the held-out images are too few to show either way, one sentence a row."""
    out = [
        f"{r['where']} {r['mix']}: AURC {r['aurc']:.3f} vs MSP {r['msp']:.3f}, but its interval is "
        f"{r['width']:.3f} wide (the margin is {NATURAL_MARGIN * r['msp']:.3f})"
        for r in aurc
        if r["not_shown"]
    ]
    for r in rates:
        if r["not_shown"]:
            lo, hi = r["ci95"]
            needed = images_to_show(r["min"], r["value"])
            more = (
                f"about {needed} at this rate would show it"
                if needed is not None
                else "below it: more images would show whether it falls short"
            )
            out.append(
                f"{r['what']} {r['value']:.3f} on {r['n']:.0f} images per repeat: [{lo:.2f}, {hi:.2f}] "
                f"contains {r['min']:.2f} ({more})"
            )
    return out


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
    if gate.get("not_shown"):
        lines += ["", "Too few held-out images to show either way:", ""]
        lines += [f"- {line}" for line in gate["not_shown"]]
    return lines
