"""Two repositories served side by side in one run, measured in alternating rounds
(``--baseline-repository``).

Both embedded servers run at once and only one is driven at a time; each round measures every level on
the repository, then on the baseline, so drift of a shared machine (other jobs, thermal state) lands on
both alike. The ratios use each level's median over the rounds.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from pathlib import Path
from typing import Any

from fitguard import contract


def _median_levels(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    levels = []
    for per_level in zip(*rounds, strict=True):
        levels.append(
            {
                "concurrency": per_level[0]["concurrency"],
                "throughput": round(statistics.median(lv["throughput"] for lv in per_level), 3),
                "p50_ms": round(statistics.median(lv["latency_ms"]["p50"] or 0.0 for lv in per_level), 3),
                "errors": sum(lv["errors"] for lv in per_level),
                "rounds": [
                    {"throughput": lv["throughput"], "p50_ms": lv["latency_ms"]["p50"]} for lv in per_level
                ],
            }
        )
    return levels


def compare_two_servers(
    repository: str | Path,
    baseline: str | Path,
    images: list[bytes],
    *,
    concurrency: tuple[int, ...],
    requests: int | None,
    duration: float | None,
    rounds: int = 3,
    protocol: str = "grpc",
    batch: int = 1,
    deadline_s: float = 600.0,
) -> dict[str, Any]:
    """Serve ``repository`` and ``baseline`` together; return per-level medians and the ratios.

    ``served_vs_baseline`` is the best level's throughput over the baseline's best; ``p50_vs_baseline`` is
    the p50 latency at the lowest concurrency over the baseline's.
    """
    from fitguard.bench import load
    from fitguard.serve.embedded import EmbeddedServer

    names = {"repository": Path(repository), "baseline": Path(baseline)}
    measured: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        urls = {}
        for name, path in names.items():
            server = stack.enter_context(EmbeddedServer(path, http_port=0, grpc_port=0, metrics_port=0))
            urls[name] = server.grpc_url if protocol == "grpc" else server.http_url
            load.wait_ready(protocol, urls[name], (contract.ENSEMBLE,))
            load.run_level(  # warm every instance and batch shape
                protocol, urls[name], images, max(concurrency), batch, requests=2 * max(concurrency), warmup=0
            )
        for r in range(rounds):
            for name, url in urls.items():
                levels = []
                for c in concurrency:
                    result = load.run_level(
                        protocol,
                        url,
                        images,
                        c,
                        batch,
                        requests=requests,
                        duration_s=duration,
                        deadline_s=deadline_s,
                        warmup=0,
                    )
                    levels.append(result.to_dict())
                measured[name].append(levels)
                best = max(lv["throughput"] for lv in levels)
                print(f"[bench] round {r + 1} {name}: best {best:.2f} img/s", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"rounds": rounds, "paths": {k: str(v) for k, v in names.items()}}
    for name in names:
        out[name] = _median_levels(measured[name])
    best = {name: max(lv["throughput"] for lv in out[name]) for name in names}
    low = {name: out[name][0]["p50_ms"] for name in names}
    out["served_vs_baseline"] = round(best["repository"] / best["baseline"], 4) if best["baseline"] else None
    out["p50_vs_baseline"] = round(low["repository"] / low["baseline"], 4) if low["baseline"] else None
    return out
