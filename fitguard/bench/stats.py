"""Triton's per-model statistics (the statistics extension), differenced over a measurement window.

Triton counts cumulatively per model: ``inference_stats`` per *request* (success, queue, compute_input,
compute_infer, compute_output), ``batch_stats`` per *execution* at each batch size, plus
``inference_count`` (images) and ``execution_count`` (batches). Per-request compute times repeat the
whole batch's time for every request in it, so compute per image is taken from ``batch_stats`` when the
backend reports them.
"""

from __future__ import annotations

from typing import Any

_PHASES = ("queue", "compute_input", "compute_infer", "compute_output")
_COMPUTE = ("compute_input", "compute_infer", "compute_output")


def _num(x: Any) -> int:
    return int(x or 0)  # gRPC's JSON writes int64 as strings


def _duration(d: dict[str, Any] | None) -> tuple[int, int]:
    d = d or {}
    return _num(d.get("count")), _num(d.get("ns"))


def normalise(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Statistics JSON from the HTTP or gRPC client -> ``{model: flat counters}`` (latest version)."""
    out: dict[str, dict[str, Any]] = {}
    for m in raw.get("model_stats", []):
        inf = m.get("inference_stats", {})
        flat: dict[str, Any] = {
            "inference_count": _num(m.get("inference_count")),
            "execution_count": _num(m.get("execution_count")),
        }
        for phase in ("success", "fail", *_PHASES):
            flat[f"{phase}_count"], flat[f"{phase}_ns"] = _duration(inf.get(phase))
        batch: dict[int, dict[str, int]] = {}
        for b in m.get("batch_stats", []) or []:
            size = _num(b.get("batch_size"))
            entry = {"count": _duration(b.get("compute_infer"))[0]}
            for phase in _COMPUTE:
                entry[f"{phase}_ns"] = _duration(b.get(phase))[1]
            batch[size] = entry
        flat["batch"] = batch
        name = m.get("name", "")
        # several versions: keep the one that served the most
        if name not in out or flat["inference_count"] >= out[name]["inference_count"]:
            out[name] = flat
    return out


def diff(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Counters accumulated between two :func:`normalise` snapshots."""
    out: dict[str, dict[str, Any]] = {}
    for name, a in after.items():
        b = before.get(name, {})
        d = {k: v - b.get(k, 0) for k, v in a.items() if k != "batch"}
        batches: dict[int, dict[str, int]] = {}
        for size, entry in a["batch"].items():
            prev = b.get("batch", {}).get(size, {})
            e = {k: v - prev.get(k, 0) for k, v in entry.items()}
            if e["count"] > 0:
                batches[size] = e
        d["batch"] = batches
        out[name] = d
    return out


def summarise(window: dict[str, dict[str, Any]], steps: tuple[str, ...]) -> dict[str, Any]:
    """Per-step milliseconds per image and per request, average batch size, and the slowest step.

    Args:
        window: a :func:`diff` of two snapshots.
        steps: the composing models of the ensemble, in pipeline order.
    """
    models: dict[str, Any] = {}
    for name in steps:
        d = window.get(name)
        if not d or d["inference_count"] == 0:
            continue
        images, execs, requests = d["inference_count"], d["execution_count"], max(d["success_count"], 1)
        s: dict[str, Any] = {
            "images": images,
            "requests": d["success_count"],
            "executions": execs,
            "avg_batch_size": round(images / execs, 2) if execs else None,
            "queue_ms_per_request": round(d["queue_ns"] / requests / 1e6, 3),
        }
        if d["batch"]:  # exact: each execution counted once
            source = "batch_stats"
            per_phase = {p: sum(e[f"{p}_ns"] for e in d["batch"].values()) for p in _COMPUTE}
            s["batch_sizes"] = {str(k): v["count"] for k, v in sorted(d["batch"].items())}
        else:  # per-request sums repeat a batch's time for each request in it: an upper bound
            source = "inference_stats"
            per_phase = {p: d[f"{p}_ns"] for p in _COMPUTE}
        for p in _COMPUTE:
            s[f"{p}_ms_per_image"] = round(per_phase[p] / images / 1e6, 3)
        s["compute_ms_per_image"] = round(sum(per_phase.values()) / images / 1e6, 3)
        s["compute_ms_per_execution"] = round(sum(per_phase.values()) / execs / 1e6, 3) if execs else None
        s["source"] = source
        models[name] = s
    total = sum(m["compute_ms_per_image"] for m in models.values())
    slowest = max(models, key=lambda n: models[n]["compute_ms_per_image"]) if models else None
    return {
        "models": models,
        "compute_ms_per_image": round(total, 3),
        "slowest_step": slowest,
        "slowest_share": round(models[slowest]["compute_ms_per_image"] / total, 3)
        if slowest and total
        else None,
    }


def ensemble_summary(window: dict[str, dict[str, Any]], ensemble: str) -> dict[str, Any] | None:
    """End-to-end time inside the server for the ensemble (request in to response out), per request."""
    d = window.get(ensemble)
    if not d or d["success_count"] == 0:
        return None
    return {
        "requests": d["success_count"],
        "images": d["inference_count"],
        "server_ms_per_request": round(d["success_ns"] / d["success_count"] / 1e6, 3),
    }
