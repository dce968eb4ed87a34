"""Closed-loop clients that keep asking under overload: raw gRPC without back-off, or any other client.

:func:`fitguard.bench.load.run_level` measures capacity (every call must succeed). Here every call's
outcome is kept: an answer, a refusal (overload) or an error, each with its latency. Raw clients send
again the moment they are refused, the worst a careless client does. Other clients come in as a
:data:`Caller` (the SDK with its jittered back-off is scripts/overload_bench.py's: the core imports no
product), with a count of the attempts they sent per call they made.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fitguard.bench.openloop import classify_error

# ``call(k)`` sends payload k (modulo their count) once, as a client would, and names the outcome:
# ``answered``, ``overloaded`` or ``error:<message>``.
Call = Callable[[int], str]
# ``(grpc_url, payloads, timeout_s, sent) -> (client with close(), call)``: one closed-loop client. ``sent``
# is a one-element counter of the requests it put on the wire (the SDK's retries included).
Caller = Callable[[str, Sequence[bytes], float, list[int]], tuple[Any, Call]]


@dataclass
class ClosedLoopResult:
    """Per-outcome latencies (seconds) of ``clients`` closed-loop clients over ``seconds``."""

    kind: str
    clients: int
    seconds: float
    latencies: dict[str, list[float]] = field(repr=False)
    attempts: int = 0  # requests sent, retries included
    first_error: str | None = None

    def count(self, outcome: str) -> int:
        return len(self.latencies.get(outcome, []))

    def latency_ms(self, outcome: str, q: float) -> float | None:
        values = self.latencies.get(outcome, [])
        return float(np.percentile(np.asarray(values) * 1e3, q)) if values else None

    def summary(self) -> dict[str, Any]:
        p99 = self.latency_ms("answered", 99)
        return {
            "kind": self.kind,
            "clients": self.clients,
            "seconds": round(self.seconds, 2),
            **{k: self.count(k) for k in ("answered", "overloaded", "error")},
            "attempts": self.attempts,
            "answered_per_s": round(self.count("answered") / self.seconds, 2) if self.seconds else 0.0,
            "answered_p50_ms": _round(self.latency_ms("answered", 50)),
            "answered_p99_ms": _round(p99),
            "refused_p99_ms": _round(self.latency_ms("overloaded", 99)),
            "first_error": self.first_error,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def raw_caller(url: str, payloads: Sequence[bytes], timeout_s: float, sent: list[int]) -> tuple[Any, Call]:
    """A gRPC client that reports each attempt's outcome as it is, with no retry (:data:`Caller`)."""
    from fitguard import contract
    from fitguard.bench.load import build_inputs, make_client

    client = make_client("grpc", url)
    inputs = build_inputs("grpc", list(payloads), 1)

    def call(k: int) -> str:
        sent[0] += 1
        try:
            client.infer(contract.ENSEMBLE, inputs[k % len(inputs)], client_timeout=timeout_s)
            return "answered"
        except Exception as exc:  # noqa: BLE001 - every outcome is recorded by kind
            message = str(exc.message() if hasattr(exc, "message") else exc)
            kind = classify_error(message)
            return kind if kind == "overloaded" else f"error:{message}"

    return client, call


def run_closed_loop(
    grpc_url: str,
    payloads: Sequence[bytes],
    *,
    clients: int,
    seconds: float,
    caller: Caller = raw_caller,
    kind: str = "raw",
    timeout_s: float = 30.0,
) -> ClosedLoopResult:
    """``clients`` threads, each calling one after another for ``seconds``; ``caller`` makes each client
    (:func:`raw_caller`, or an SDK client: scripts/overload_bench.py's ``sdk_caller``), ``kind`` labels
    the result."""
    make = caller
    lock = threading.Lock()
    latencies: dict[str, list[float]] = {"answered": [], "overloaded": [], "error": []}
    errors: list[str] = []
    ready = threading.Barrier(clients + 1)
    stop_at = [float("inf")]

    sent = [[0] for _ in range(clients)]

    def worker(wid: int) -> None:
        client, call = make(grpc_url, payloads, timeout_s, sent[wid])
        own: dict[str, list[float]] = {k: [] for k in latencies}
        ready.wait()
        k = wid
        while time.monotonic() < stop_at[0]:
            t0 = time.perf_counter()
            outcome = call(k)
            if outcome.startswith("error:"):
                errors.append(outcome.removeprefix("error:"))
                outcome = "error"
            own[outcome].append(time.perf_counter() - t0)
            k += 1
        client.close()
        with lock:
            for key, values in own.items():
                latencies[key].extend(values)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    stop_at[0] = time.monotonic() + seconds
    for t in threads:
        t.join(timeout=seconds + timeout_s + 30)
    wall = time.perf_counter() - start
    attempts = sum(s[0] for s in sent)
    return ClosedLoopResult(kind, clients, wall, latencies, attempts, errors[0] if errors else None)
