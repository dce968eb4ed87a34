"""Ratios against the targets, the printed summary and the latency-vs-throughput plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# name -> (comparison, bound, what it means)
TARGETS: dict[str, tuple[str, float, str]] = {
    "served_vs_inprocess": (">=", 0.9, "served images/s at the best concurrency / in-process pipeline"),
    "served_vs_naive": (">=", 2.0, "served images/s at the best concurrency / naive PyTorch eager pipeline"),
    "latency_c1_vs_inprocess": (
        "<=",
        1.15,
        "served p50 latency at concurrency 1 / in-process call, same images",
    ),
    "preprocess_share": (
        "<=",
        0.10,
        "preprocess compute / all served compute, per image (Triton statistics)",
    ),
    "backbone_vs_gemm_peak": (
        ">=",
        0.5,
        "backbone FLOPs x served images/s / fp32 GEMM peak of the same cores",
    ),
    "served_vs_baseline": (
        ">=",
        0.95,
        "best images/s of --model-repository / of --baseline-repository (e.g. monitoring on / off), "
        "alternating rounds of one run",
    ),
}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 4)


def best_level(levels: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [lv for lv in levels if lv["requests"] > 0]
    return max(ok, key=lambda lv: lv["throughput"]) if ok else None


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    served = result.get("served") or {}
    levels = served.get("levels", [])
    best = best_level(levels)
    c1 = next((lv for lv in levels if lv["concurrency"] == 1 and lv["requests"]), None)
    inproc = result.get("inprocess") or {}
    # the in-process call that matches a served request at concurrency 1: same number of images
    same_batch = inproc.get(f"batch{c1['batch']}") if c1 else None
    naive = result.get("naive") or {}
    flops = (result.get("flops") or {}).get("per_image")
    peak = (result.get("gemm_peak") or {}).get("peak_gflops")
    served_tp = best["throughput"] if best else None
    best_stats = (best or {}).get("server_stats") or {}
    pre = (best_stats.get("models") or {}).get("preprocess", {}).get("compute_ms_per_image")
    alone = (result.get("backbone_alone") or {}).get("best", {}).get("throughput")
    out = {
        "served_vs_inprocess": _ratio(served_tp, (inproc.get("best") or {}).get("throughput")),
        "served_vs_inprocess_batch1": _ratio(served_tp, (inproc.get("batch1") or {}).get("throughput")),
        "served_vs_naive": _ratio(served_tp, naive.get("throughput")),
        "latency_c1_vs_inprocess": _ratio(
            (c1 or {}).get("latency_ms", {}).get("p50"),
            (same_batch or {}).get("latency_ms", {}).get("p50"),
        ),
        "preprocess_share": _ratio(pre, best_stats.get("compute_ms_per_image")),
        "backbone_vs_gemm_peak": _ratio(flops * served_tp / 1e9 if flops and served_tp else None, peak),
        # the backbone alone runs in one session: compare with the peak of the cores that session used
        "backbone_alone_vs_gemm_peak": _ratio(
            (result.get("flops") or {}).get("classifier", 0) * alone / 1e9 if alone else None,
            _session_peak(result),
        ),
        "inprocess_preprocess_share": (inproc.get("split_ms_per_image") or {}).get("preprocess_share"),
        "served_vs_baseline": (result.get("baseline") or {}).get("served_vs_baseline"),
        "p50_vs_baseline": (result.get("baseline") or {}).get("p50_vs_baseline"),
    }
    return out


def _session_peak(result: dict[str, Any]) -> float | None:
    peak = result.get("gemm_peak") or {}
    best = (result.get("backbone_alone") or {}).get("best") or {}
    if "per_core_gflops" not in peak or "threads" not in best:
        return None
    return peak["per_core_gflops"] * best["threads"]


def targets(r: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (op, bound, meaning) in TARGETS.items():
        value = r.get(name)
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out[name] = {"value": value, "target": f"{op} {bound}", "met": met, "meaning": meaning}
    return out


def _fmt(x: Any, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _served_lines(served: dict[str, Any]) -> list[str]:
    """One row per concurrency level, then Triton's per-model statistics at the best level."""
    lines = [
        f"served ({served['protocol']}, {served['url']}, batch {served['batch']} per request):",
        "  conc   img/s   p50 ms   p90 ms   p99 ms  errors  slowest step (ms/img)   avg batch c/q",
    ]
    for lv in served["levels"]:
        lat, st = lv["latency_ms"], lv.get("server_stats") or {}
        models = st.get("models", {})
        slow = st.get("slowest_step")
        slow_txt = f"{slow} ({models[slow]['compute_ms_per_image']:.1f})" if slow else "-"
        avg = "/".join(_fmt(models.get(k, {}).get("avg_batch_size"), 2) for k in ("classifier", "quality"))
        p50, p90, p99 = (_fmt(lat[k]) for k in ("p50", "p90", "p99"))
        lines.append(
            f"  {lv['concurrency']:>4} {lv['throughput']:>7.2f} {p50:>8} {p90:>8} {p99:>8} "
            f"{lv['errors']:>7}  {slow_txt:<22} {avg}"
        )
    best = best_level(served["levels"])
    if best and best.get("server_stats"):
        lines.append(
            f"  Triton statistics at concurrency {best['concurrency']} (ms per image; queue per request):"
        )
        for name, s in best["server_stats"]["models"].items():
            batch = _fmt(s["avg_batch_size"], 2)
            lines.append(
                f"    {name:<11} batch {batch:>5}  queue {s['queue_ms_per_request']:>7.2f}  "
                f"in {s['compute_input_ms_per_image']:>6.2f}  "
                f"infer {s['compute_infer_ms_per_image']:>7.2f}  "
                f"out {s['compute_output_ms_per_image']:>6.2f}  total {s['compute_ms_per_image']:>7.2f}"
            )
    return lines


def _gpu_lines(gpu: dict[str, Any], peak: dict[str, Any] | None) -> list[str]:
    """The backbone alone per GPU runtime and batch size."""
    lines: list[str] = []
    if peak:
        lines.append(f"GPU GEMM peak (GFLOP/s): {peak['gflops']}")
    gflop = gpu["flops_per_image"] / 1e9
    lines.append(f"backbone {gpu['backbone']} alone on {gpu['device']} ({gflop:.1f} GFLOP/img):")
    for name, per_batch in gpu["runtimes"].items():
        if "error" in per_batch:
            lines.append(f"  {name}: {per_batch['error']}")
            continue
        parts = [
            f"b{k}: {v['throughput']:.0f} img/s p50 {_fmt(v['latency_ms']['p50'], 2)} ms"
            for k, v in per_batch.items()
        ]
        lines.append(f"  {name}: " + "; ".join(parts))
    return lines


def _ratio_lines(result: dict[str, Any]) -> list[str]:
    """Each target ratio against its target, the baseline's levels, then the ratios without a target."""
    lines = ["ratios (target):"]
    for name, t in result.get("targets", {}).items():
        state = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"  {name:<26} {_fmt(t['value'], 3):>8}  ({t['target']}) {state}")
    base = result.get("baseline")
    if base:
        for name in ("repository", "baseline"):
            cells = ", ".join(f"c={lv['concurrency']} {lv['throughput']:.2f} img/s" for lv in base[name])
            lines.append(f"  {name} (median of {base['rounds']} rounds): {cells}")
    names = ("served_vs_inprocess_batch1", "backbone_alone_vs_gemm_peak", "inprocess_preprocess_share")
    for name in (*names, "p50_vs_baseline"):
        v = result.get("ratios", {}).get(name)
        if v is not None:
            lines.append(f"  {name:<26} {_fmt(v, 3):>8}")
    return lines


def summary_text(result: dict[str, Any]) -> str:
    lines: list[str] = []
    m = result["machine"]
    lines.append(
        f"machine: {m['cpu_model']}, {m['cores']} cores, {m['threads_used']} threads; "
        f"load at start {m['load_average_at_start']}"
    )
    peak = result.get("gemm_peak")
    if peak:
        lines.append(
            f"fp32 GEMM peak: {peak['peak_gflops']} GFLOP/s ({peak['peak_library']}; all: {peak['gflops']})"
        )
    fl = result.get("flops")
    if fl:
        lines.append(
            f"FLOPs per image: {fl['per_image'] / 1e9:.2f} G (classifier {fl['classifier'] / 1e9:.2f} G "
            f"+ quality on {fl['patches']} patches {fl['quality'] / 1e9:.2f} G)"
        )
    served = result.get("served")
    if served:
        lines += _served_lines(served)
    ip = result.get("inprocess")
    if ip:
        parts = [
            f"{k} ({v['threads']}): {v['throughput']:.2f} img/s, p50 {_fmt(v['latency_ms']['p50'])} ms"
            for k, v in ip.items()
            if k.startswith("batch")
        ]
        lines.append("in-process ONNX: " + "; ".join(parts))
        if ip.get("split_ms_per_image"):
            lines.append(f"  split of one image (ms): {ip['split_ms_per_image']}")
    nv = result.get("naive")
    if nv:
        others = "; ".join(f"{k}: {v['throughput']:.2f} img/s" for k, v in nv.get("runs", {}).items())
        lines.append(
            f"naive PyTorch eager + sklearn ({nv.get('threads')}): {nv['throughput']:.2f} img/s, "
            f"p50 {_fmt(nv['latency_ms']['p50'])} ms  [{others}]"
        )
    ba = result.get("backbone_alone")
    if ba:
        parts = [f"b{k}: {v['throughput']:.1f} img/s ({v['threads']} thr)" for k, v in ba["batches"].items()]
        lines.append(f"backbone alone ({ba['runtime']}): " + ", ".join(parts))
    gpu = result.get("backbone_runtimes")
    if gpu:
        lines += _gpu_lines(gpu, result.get("gpu_gemm_peak"))
    lines += _ratio_lines(result)
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Latency (p50, with p90..p99 whiskers) against throughput per concurrency, plus the references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    served = result.get("served") or {}
    levels = [lv for lv in served.get("levels", []) if lv["requests"]]
    if levels:
        x = [lv["throughput"] for lv in levels]
        p50 = [lv["latency_ms"]["p50"] for lv in levels]
        p90 = [lv["latency_ms"]["p90"] for lv in levels]
        p99 = [lv["latency_ms"]["p99"] for lv in levels]
        ax.plot(x, p50, "o-", label=f"served ({served.get('protocol')}) p50", color="C0")
        ax.vlines(x, p90, p99, color="C0", alpha=0.5, label="p90..p99")
        for lv, xi, yi in zip(levels, x, p50, strict=True):
            ax.annotate(
                f"c={lv['concurrency']}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    for key, label, color in (("inprocess", "in-process ONNX", "C2"), ("naive", "naive PyTorch eager", "C3")):
        ref = result.get(key)
        if not ref:
            continue
        point = ref.get("batch1", ref)
        ax.plot(
            [point["throughput"]], [point["latency_ms"]["p50"]], "s", color=color, label=f"{label} (1 image)"
        )
    ax.set_xlabel("throughput (images/s)")
    ax.set_ylabel("latency (ms)")
    m = result["machine"]
    ax.set_title(
        f"fitguard bench — {result.get('backbone') or 'model'} on {m['cpu_model']} ({m['cores']} cores)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    """The results table for the README / docs: one run, with its date and machine."""
    m, r = result["machine"], result.get("ratios", {})
    served = result.get("served") or {}
    best = best_level(served.get("levels", []))
    c1 = next((lv for lv in served.get("levels", []) if lv["concurrency"] == 1), None)
    ip, nv = result.get("inprocess") or {}, result.get("naive") or {}
    fl, peak = result.get("flops") or {}, result.get("gemm_peak") or {}
    rows = [
        (
            "served, best concurrency",
            best and f"{best['throughput']:.2f} img/s at c={best['concurrency']}",
            best and f"p50 {best['latency_ms']['p50']:.0f} / p99 {best['latency_ms']['p99']:.0f} ms",
        ),
        (
            "served, concurrency 1",
            c1 and f"{c1['throughput']:.2f} img/s",
            c1 and f"p50 {c1['latency_ms']['p50']:.0f} / p99 {c1['latency_ms']['p99']:.0f} ms",
        ),
        (
            "in-process ONNX (no server)",
            ip.get("best") and f"{ip['best']['throughput']:.2f} img/s",
            ip.get("batch1") and f"p50 {ip['batch1']['latency_ms']['p50']:.0f} ms (1 image)",
        ),
        (
            "naive PyTorch eager + sklearn",
            nv and f"{nv['throughput']:.2f} img/s",
            nv and f"p50 {nv['latency_ms']['p50']:.0f} ms",
        ),
    ]
    lines = [
        f"`{result.get('backbone')}`, {fl.get('patches', '?')} IQA patches, "
        f"{(fl.get('per_image') or 0) / 1e9:.2f} GFLOP/image; {result['date'][:10]}, {m['cpu_model']} "
        f"({m['cores']} cores), load average at start {m['load_average_at_start'][0]}; fp32 GEMM peak "
        f"{peak.get('peak_gflops')} GFLOP/s; batch {served.get('batch', 1)} per request, "
        f"{served.get('protocol', '-')}.",
        "",
        "| pipeline | throughput | latency |",
        "|---|---|---|",
        *(f"| {a} | {b or '-'} | {c or '-'} |" for a, b, c in rows),
        "",
        "| ratio | value | target | met |",
        "|---|---|---|---|",
    ]
    for name, t in result.get("targets", {}).items():
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(f"| `{name}` | {_fmt(t['value'], 3)} | {t['target']} | {met} |")
    for name in ("backbone_alone_vs_gemm_peak", "inprocess_preprocess_share", "p50_vs_baseline"):
        if r.get(name) is not None:
            lines.append(f"| `{name}` | {_fmt(r[name], 3)} | | |")
    return "\n".join(lines)
