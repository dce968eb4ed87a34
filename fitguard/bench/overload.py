"""The overload promise, measured on a running server: capacity, 4x open-loop arrivals, many clients.

One run gives what docs/operations.md promises and the overload test checks: the capacity (closed loop),
open-loop arrivals at a multiple of it (answered and refused latency, answered throughput), closed-loop
clients without back-off, SDK clients with back-off (attempts the server saw per call), readiness
throughout, and the speed right after each phase.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fitguard.bench import closedloop, load, openloop


@dataclass(frozen=True)
class OverloadPlan:
    """How long and how hard each phase runs (the defaults are the issue's; the test shortens them)."""

    capacity_clients: int = 4
    capacity_seconds: float = 10.0
    factor: float = 4.0
    open_seconds: float = 20.0
    closed_clients: int = 96
    closed_seconds: float = 20.0
    sdk_clients: int = 96
    sdk_seconds: float = 0.0  # 0: no SDK phase
    after_seconds: float = 5.0


@dataclass
class ReadyLog:
    """Readiness probes every half second while a phase runs."""

    probes: list[bool] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {"ready": sum(self.probes), "probes": len(self.probes)}


@contextmanager
def watch_ready(http_url: str) -> Iterator[ReadyLog]:
    import tritonclient.http as httpclient

    log, stop = ReadyLog(), threading.Event()

    def probe() -> None:
        client = httpclient.InferenceServerClient(http_url, network_timeout=5.0)
        try:
            while not stop.wait(0.5):
                try:
                    log.probes.append(bool(client.is_server_ready()))
                except Exception:  # noqa: BLE001 - an unanswered probe is a not-ready observation
                    log.probes.append(False)
        finally:
            client.close()

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        yield log
    finally:
        stop.set()
        thread.join(timeout=10)


def _level(url: str, images: Sequence[bytes], clients: int, seconds: float) -> dict[str, Any]:
    level = load.run_level("grpc", url, list(images), clients, duration_s=seconds, warmup=0)
    return {
        "throughput": round(level.throughput, 2),
        "errors": level.errors,
        "first_error": level.first_error,
        **{f"{k}_ms": v for k, v in load.latency_summary(level.latencies_ms).items()},
    }


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure_overload(
    grpc_url: str,
    http_url: str,
    images: Sequence[bytes],
    plan: OverloadPlan,
    *,
    sdk_caller: closedloop.Caller | None = None,
) -> dict[str, Any]:
    """Run every phase of ``plan`` against the server; the figures and the ratios to the capacity.

    ``sdk_caller``: the SDK clients of the last phase (run when given and ``plan.sdk_seconds``)."""
    c = plan.capacity_clients
    load.run_level("grpc", grpc_url, list(images), c, requests=4 * c, warmup=0)
    out: dict[str, Any] = {"load_average_at_start": _load_average()}
    out["capacity"] = capacity = _level(grpc_url, images, c, plan.capacity_seconds)
    with watch_ready(http_url) as ready:
        burst = openloop.run_open_loop(
            grpc_url,
            images,
            rate=plan.factor * capacity["throughput"],
            seconds=plan.open_seconds,
            timeout_s=60,
        )
    out["open_loop"] = {**burst.summary(), **ready.summary()}
    out["after_open_loop"] = _level(grpc_url, images, c, plan.after_seconds)
    with watch_ready(http_url) as ready:
        crowd = closedloop.run_closed_loop(
            grpc_url, images, clients=plan.closed_clients, seconds=plan.closed_seconds, kind="raw"
        )
    out["closed_loop"] = {**crowd.summary(), **ready.summary()}
    out["after_closed_loop"] = _level(grpc_url, images, c, plan.after_seconds)
    if plan.sdk_seconds and sdk_caller is not None:
        with watch_ready(http_url) as ready:
            sdk = closedloop.run_closed_loop(
                grpc_url,
                images,
                clients=plan.sdk_clients,
                seconds=plan.sdk_seconds,
                caller=sdk_caller,
                kind="sdk",
            )
        calls = sum(sdk.count(k) for k in ("answered", "overloaded", "error"))
        out["sdk"] = {**sdk.summary(), **ready.summary(), "calls": calls}
    out["load_average_at_end"] = _load_average()
    out["ratios"] = ratios(out)
    return out


def ratios(out: dict[str, Any]) -> dict[str, float | None]:
    """The issue's targets as ratios of one run's figures (targets in docs/operations.md, section 3)."""
    cap = out["capacity"]
    burst, crowd = out["open_loop"], out["closed_loop"]

    def div(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else round(a / b, 3)

    found = {
        "open_answered_p99_vs_capacity_p99": div(burst["answered_p99_ms"], cap["p99_ms"]),
        "open_answered_per_s_vs_capacity": div(burst["answered_per_s"], cap["throughput"]),
        "closed_answered_per_s_vs_capacity": div(crowd["answered_per_s"], cap["throughput"]),
        "after_open_vs_capacity": div(out["after_open_loop"]["throughput"], cap["throughput"]),
        "after_closed_vs_capacity": div(out["after_closed_loop"]["throughput"], cap["throughput"]),
    }
    if "sdk" in out:
        found["sdk_attempts_per_call"] = div(out["sdk"]["attempts"], out["sdk"]["calls"])
        found["sdk_attempts_per_s_vs_raw"] = div(
            out["sdk"]["attempts"] / out["sdk"]["seconds"], crowd["attempts"] / crowd["seconds"]
        )
        found["sdk_answered_per_s_vs_capacity"] = div(out["sdk"]["answered_per_s"], cap["throughput"])
    return found
