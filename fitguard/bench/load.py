"""A bounded closed-loop load generator for the served ensemble (perf_analyzer's concurrency mode).

``concurrency`` workers each keep one request in flight; a level ends after a fixed number of
requests or a fixed time, and always by a hard deadline, so a run stops by itself even if the server
stalls. Every request carries ``batch`` encoded images in the ensemble's BYTES ``IMAGE`` input.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fitguard import contract


@dataclass
class LevelResult:
    concurrency: int
    batch: int
    requests: int
    errors: int
    wall_s: float
    latencies_ms: list[float] = field(repr=False)
    first_error: str | None = None

    @property
    def images(self) -> int:
        return self.requests * self.batch

    @property
    def throughput(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "batch": self.batch,
            "requests": self.requests,
            "images": self.images,
            "errors": self.errors,
            "first_error": self.first_error,
            "wall_s": round(self.wall_s, 3),
            "throughput": round(self.throughput, 3),
            "latency_ms": latency_summary(self.latencies_ms),
        }


def latency_summary(latencies_ms: list[float]) -> dict[str, float | None]:
    if not latencies_ms:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "min": None, "max": None}
    a = np.asarray(latencies_ms)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "p50": round(float(p50), 3),
        "p90": round(float(p90), 3),
        "p99": round(float(p99), 3),
        "mean": round(float(a.mean()), 3),
        "min": round(float(a.min()), 3),
        "max": round(float(a.max()), 3),
    }


def client_module(protocol: str) -> Any:
    if protocol == "grpc":
        import tritonclient.grpc as mod
    elif protocol == "http":
        import tritonclient.http as mod
    else:
        raise ValueError(f"protocol must be grpc or http, not {protocol!r}")
    return mod


def strip_scheme(url: str) -> str:
    """tritonclient wants host:port; accept http://, grpc:// and friends too."""
    return url.split("://", 1)[1] if "://" in url else url


def make_client(protocol: str, url: str, concurrency: int = 1) -> Any:
    mod = client_module(protocol)
    if protocol == "http":
        return mod.InferenceServerClient(
            strip_scheme(url), concurrency=max(concurrency, 1), network_timeout=600.0
        )
    return mod.InferenceServerClient(strip_scheme(url))


def build_inputs(protocol: str, images: list[bytes], batch: int) -> list[list[Any]]:
    """One ready-made input list per request shape: images cycled in groups of ``batch``."""
    mod = client_module(protocol)
    inputs = []
    for start in range(len(images)):
        group = [images[(start + j) % len(images)] for j in range(batch)]
        arr = np.array(group, dtype=object).reshape(batch, 1)
        inp = mod.InferInput(contract.IMAGE, list(arr.shape), "BYTES")
        inp.set_data_from_numpy(arr)
        inputs.append([inp])
    return inputs


def run_level(
    protocol: str,
    url: str,
    images: list[bytes],
    concurrency: int,
    batch: int = 1,
    requests: int | None = None,
    duration_s: float | None = None,
    deadline_s: float = 600.0,
    warmup: int = 1,
    model: str = contract.ENSEMBLE,
) -> LevelResult:
    """Drive ``model`` with ``concurrency`` in-flight requests until the request count or time is spent.

    Args:
        requests: total requests to measure (across workers); exclusive with ``duration_s``.
        duration_s: measure for this many seconds instead.
        deadline_s: hard stop for the level, whatever happens.
        warmup: unmeasured requests per worker before the clock starts.
    """
    if (requests is None) == (duration_s is None):
        raise ValueError("give exactly one of requests or duration_s")
    if requests is not None:
        requests = max(requests, concurrency)  # every worker measures at least one request
    lock = threading.Lock()
    counter = itertools.count()
    latencies: list[float] = []
    errors: list[str] = []
    start_barrier = threading.Barrier(concurrency + 1)
    hard_stop = time.monotonic() + deadline_s
    stop_at: list[float] = [float("inf")]

    def worker(wid: int) -> None:
        own: list[float] = []
        k = wid
        try:
            client = make_client(protocol, url)
            inputs = build_inputs(protocol, images, batch)
            for _ in range(warmup):
                _infer(client, model, inputs[k % len(inputs)], errors, lock)
                k += concurrency
        finally:
            start_barrier.wait(timeout=deadline_s)
        while time.monotonic() < min(hard_stop, stop_at[0]):
            if requests is not None and next(counter) >= requests:
                break
            t0 = time.perf_counter()
            ok = _infer(client, model, inputs[k % len(inputs)], errors, lock)
            if ok:
                own.append((time.perf_counter() - t0) * 1e3)
            k += concurrency
        with lock:
            latencies.extend(own)
        client.close()

    wall = _run_workers(worker, concurrency, start_barrier, deadline_s, hard_stop, duration_s, stop_at)
    return LevelResult(
        concurrency, batch, len(latencies), len(errors), wall, latencies, errors[0] if errors else None
    )


def _run_workers(
    worker: Callable[[int], None],
    concurrency: int,
    start_barrier: threading.Barrier,
    deadline_s: float,
    hard_stop: float,
    duration_s: float | None,
    stop_at: list[float],
) -> float:
    """Start the workers, open the window once all are warm, and join them; returns the window's seconds.

    With ``duration_s`` the window closes by setting ``stop_at[0]``, which the workers read.
    """
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    start_barrier.wait(timeout=deadline_s)
    t_start = time.perf_counter()
    if duration_s is not None:
        stop_at[0] = time.monotonic() + duration_s
    for t in threads:
        t.join(timeout=max(hard_stop - time.monotonic(), 0) + 30)
    return time.perf_counter() - t_start


def _infer(client: Any, model: str, inputs: list[Any], errors: list[str], lock: threading.Lock) -> bool:
    try:
        client.infer(model, inputs)
        return True
    except Exception as exc:  # counted and reported, never hidden: the level's "errors" field
        with lock:
            errors.append(f"{exc.__class__.__name__}: {exc}")
        return False


def server_statistics(protocol: str, url: str) -> dict[str, Any]:
    client = make_client(protocol, url)
    try:
        return (
            client.get_inference_statistics(as_json=True)
            if protocol == "grpc"
            else (client.get_inference_statistics())
        )
    finally:
        client.close()


def wait_ready(protocol: str, url: str, models: tuple[str, ...], timeout_s: float = 120.0) -> None:
    client = make_client(protocol, url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                if client.is_server_ready() and all(client.is_model_ready(m) for m in models):
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server at {url} not ready with models {models} after {timeout_s:.0f} s")
            time.sleep(0.5)
    finally:
        client.close()


def time_calls(
    fn: Callable[[], object],
    *,
    batch: int,
    seconds: float,
    sync: Callable[[], None] | None = None,
    warmup: int = 1,
    min_calls: int = 3,
) -> dict[str, Any]:
    """Images/s and per-call latency of ``fn`` (``batch`` images a call) over about ``seconds``.

    ``sync`` waits for queued device work (a CUDA stream) so that each call is timed to its end; a
    pathologically slow ``fn`` stops after ``10 * seconds`` once ``min_calls`` have run.
    """
    done = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    done()
    latencies: list[float] = []
    start = time.perf_counter()
    while len(latencies) < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        done()
        latencies.append((time.perf_counter() - t0) * 1e3)
        if len(latencies) >= min_calls and time.perf_counter() - start > 10 * seconds:
            break
    wall = time.perf_counter() - start
    return {
        "batch": batch,
        "calls": len(latencies),
        "throughput": round(len(latencies) * batch / wall, 3),
        "latency_ms": latency_summary(latencies),
    }
