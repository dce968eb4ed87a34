"""Open-loop load: requests arrive at a fixed rate whatever the server does (what overload looks like).

A closed loop (:mod:`fitguard.bench.load`) slows down with the server and can never overload it; real
clients keep arriving. Here one thread sends asynchronous gRPC requests on a fixed schedule and every
answer, refusal or error is recorded with its latency, so a test can check that each request got an answer
or a fast refusal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fitguard import contract

OUTCOMES = ("answered", "overloaded", "error", "lost")


@dataclass
class Outcome:
    index: int
    sent: float
    latency_s: float | None = None
    kind: str = "lost"  # until the callback says otherwise
    message: str = ""
    answer: Any = None


@dataclass
class OpenLoopResult:
    rate: float
    seconds: float
    outcomes: list[Outcome] = field(repr=False)
    send_lag_s: float = 0.0  # how far the sender fell behind its schedule at worst

    def of(self, kind: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == kind]

    def counts(self) -> dict[str, int]:
        return {kind: len(self.of(kind)) for kind in OUTCOMES}

    def share(self, kind: str) -> float:
        return len(self.of(kind)) / max(len(self.outcomes), 1)

    def latency_ms(self, kind: str, q: float) -> float | None:
        values = [o.latency_s for o in self.of(kind) if o.latency_s is not None]
        return float(np.percentile(np.asarray(values) * 1e3, q)) if values else None

    def answered_per_s(self) -> float:
        return len(self.of("answered")) / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "rate": round(self.rate, 2),
            "seconds": round(self.seconds, 2),
            "sent": len(self.outcomes),
            **self.counts(),
            "refused_share": round(self.share("overloaded"), 4),
            "answered_per_s": round(self.answered_per_s(), 2),
            "answered_p50_ms": _round(self.latency_ms("answered", 50)),
            "answered_p99_ms": _round(self.latency_ms("answered", 99)),
            "refused_p50_ms": _round(self.latency_ms("overloaded", 50)),
            "refused_p99_ms": _round(self.latency_ms("overloaded", 99)),
            "send_lag_ms": round(self.send_lag_s * 1e3, 1),
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def classify_error(message: str) -> str:
    """``overloaded`` for Triton's queue-policy refusals and admission control's, ``error`` for anything
    else."""
    return "overloaded" if contract.is_overload(message) else "error"


def _single_image_inputs(grpcclient: Any, payloads: Sequence[bytes]) -> list[list[Any]]:
    """One ready-made input list per payload, each a batch of one image."""
    inputs = []
    for payload in payloads:
        inp = grpcclient.InferInput(contract.IMAGE, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[payload]], dtype=object))
        inputs.append([inp])
    return inputs


def _recorder(
    pending: threading.Semaphore, on_answer: Callable[[int, Any], Any] | None
) -> Callable[[Outcome, Any, Any], None]:
    """The completion callback: records latency and kind on the outcome, then releases ``pending``."""

    def callback(outcome: Outcome, result: Any, error: Any) -> None:
        outcome.latency_s = time.perf_counter() - outcome.sent
        if error is None:
            outcome.kind = "answered"
            if on_answer is not None:
                outcome.answer = on_answer(outcome.index, result)
        else:
            outcome.message = str(error.message() if hasattr(error, "message") else error)
            outcome.kind = classify_error(outcome.message)
        pending.release()

    return callback


def run_open_loop(
    grpc_url: str,
    payloads: Sequence[bytes],
    *,
    rate: float,
    seconds: float,
    timeout_s: float = 30.0,
    drain_s: float = 30.0,
    on_answer: Callable[[int, Any], Any] | None = None,
) -> OpenLoopResult:
    """Send ``rate`` requests per second for ``seconds`` (payloads in turn), then wait for the stragglers.

    Args:
        timeout_s: client-side deadline per request; a request that hits it counts as an ``error``.
        drain_s: how long to wait for outstanding answers after the last send (then they are ``lost``).
        on_answer: ``(index, InferResult) -> value`` kept as the outcome's ``answer`` (called in the
            callback thread; keep it cheap).
    """
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    outputs = [grpcclient.InferRequestedOutput(t.name) for t in contract.ENSEMBLE_OUTPUTS]
    inputs = _single_image_inputs(grpcclient, payloads)
    outcomes: list[Outcome] = []
    pending = threading.Semaphore(0)
    callback = _recorder(pending, on_answer)
    interval = 1.0 / rate
    start = time.perf_counter()
    lag = 0.0
    try:
        i = 0
        while (due := start + i * interval) < start + seconds:
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            else:
                lag = max(lag, now - due)
            outcome = Outcome(index=i % len(payloads), sent=time.perf_counter())
            outcomes.append(outcome)
            client.async_infer(
                contract.ENSEMBLE,
                inputs[i % len(payloads)],
                callback=lambda result, error, o=outcome: callback(o, result, error),
                outputs=outputs,
                client_timeout=timeout_s,
            )
            i += 1
        elapsed = time.perf_counter() - start
        deadline = time.monotonic() + drain_s
        for _ in outcomes:
            if not pending.acquire(timeout=max(deadline - time.monotonic(), 0)):
                break
    finally:
        client.close()
    return OpenLoopResult(rate=rate, seconds=elapsed, outcomes=outcomes, send_lag_s=lag)
