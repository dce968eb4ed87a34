"""The load of the healing tests, in a child process of its own: four SDK clients and one raw gRPC client.

The gRPC library keeps polling threads per process; the test process also forks (``tritonserver`` when a
heal falls back to a full restart), and gRPC clients busy in a process that forks have aborted it
(``ev_epoll1_linux.cc: Check failed``). The child is spawned, never forks, and owns every channel: one
client per thread. Each outcome goes back on a queue as ``(who, start, end, outcome, image)`` with
``time.monotonic()`` times, which are the same clock in both processes on Linux.
"""

from __future__ import annotations

import threading
import time


def _portable(exc: BaseException) -> BaseException:
    from fitguard.client.errors import FitguardError

    return exc if isinstance(exc, FitguardError) else RuntimeError(f"{type(exc).__name__}: {exc}")


def run_load(url: str, payloads: list[bytes], sdk_workers: int, sdk_options: dict, out, stop) -> None:
    """Send until ``stop`` is set, put every outcome on ``out``, then ``("done", alive threads)``."""
    import tritonclient.grpc as grpcclient

    from fitguard.client import FitClient
    from fitguard.client.transport import Connection, map_error

    from .conftest import Answer, grpc_infer

    def sdk(w: int) -> None:
        with FitClient(url, **sdk_options) as client:  # default timeout and retries unless given
            for k in range(10_000):
                if stop.is_set():
                    return
                t0, i = time.monotonic(), (w * 7 + k) % len(payloads)
                try:
                    outcome: object = Answer.from_verdict(client.classify(payloads[i]))
                except Exception as exc:  # noqa: BLE001 - every outcome is checked
                    outcome = _portable(exc)
                out.put(("sdk", t0, time.monotonic(), outcome, i))

    def raw() -> None:
        client, conn = grpcclient.InferenceServerClient(url), Connection(url)
        try:
            for k in range(10_000):
                if stop.is_set():
                    return
                t0, i = time.monotonic(), k % len(payloads)
                try:
                    outcome: object = Answer.from_result(grpc_infer(client, [payloads[i]], timeout=30))
                except Exception as exc:  # noqa: BLE001 - classified as the SDK would
                    outcome = _portable(map_error(exc, conn, "infer"))
                out.put(("raw", t0, time.monotonic(), outcome, i))
                if not isinstance(outcome, Answer):
                    time.sleep(0.05)
        finally:
            client.close()

    threads = [threading.Thread(target=sdk, args=(w,), daemon=True) for w in range(sdk_workers)]
    threads.append(threading.Thread(target=raw, daemon=True))
    for t in threads:
        t.start()
    stop.wait()
    end = time.monotonic() + 55.0  # the SDK's 30 s timeout plus its retry deadline, and some
    for t in threads:
        t.join(timeout=max(0.0, end - time.monotonic()))
    out.put(("done", sum(t.is_alive() for t in threads)))
