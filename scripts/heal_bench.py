"""Measure healing: serve a repository supervised, kill each step's process under load, time the recovery.

For every step (its Python stub, SIGKILL; ``--stop`` adds a SIGSTOP of the quality step, ``--restart`` the
last step killed again at once) with four SDK clients sending images: seconds from the fault until the
server's readiness (its ``/health``) turns false, until the first answer to a
request sent after that, what healed it (the step reloaded alone, or the server restarted) and how long that
took, and what the clients saw. docs/operations.md, section 6 holds the figures.

    python scripts/heal_bench.py --model-repository build/repository
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import signal
import threading
import time
from pathlib import Path

from fitguard.client import FitClient
from fitguard.contract import CLASSIFIER, DETECTOR, MONITOR, PREPROCESS, QUALITY_MODEL
from fitguard.photos import sample_photos
from fitguard.preprocess import encode_image
from fitguard.serve import EmbeddedServer
from fitguard.serve.process import stub_processes
from fitguard.serve.supervisor import STEP_RELOAD_COOLDOWN_S, SupervisedServer


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--steps", nargs="+", default=[PREPROCESS, CLASSIFIER, QUALITY_MODEL, DETECTOR, MONITOR]
    )
    parser.add_argument("--stop", action="store_true", help="also SIGSTOP the quality step (a hang)")
    parser.add_argument(
        "--restart", action="store_true", help="then kill the last step again at once (a full restart)"
    )
    return parser


def load(url: str, payloads: list[bytes], clients: int, out, stop) -> None:
    """SDK clients on threads of a spawned process (the gRPC library must not share a process that forks
    ``tritonserver``); every outcome goes back on ``out`` as ``(start, end, answered)``, then ``None``."""

    def client(w: int) -> None:
        with FitClient(url) as c:  # default timeout and retries
            k = 0
            while not stop.is_set():
                t0, ok = time.monotonic(), True
                try:
                    c.classify(payloads[(w + k) % len(payloads)])
                except Exception:  # noqa: BLE001 - counted
                    ok = False
                out.put((t0, time.monotonic(), ok))
                k += 1

    threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(clients)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(60)
    out.put(sum(t.is_alive() for t in threads))


def fault(supervised: SupervisedServer, payloads: list[bytes], clients: int, step: str, sig: int) -> str:
    ctx = multiprocessing.get_context("spawn")
    out, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=load, args=(supervised.server.grpc_url, payloads, clients, out, stop))
    child.start()
    outcomes: list[tuple[float, float, bool]] = []  # start, end, answered

    def drain(seconds: float) -> int | None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                item = out.get(timeout=0.05)
            except queue.Empty:
                continue
            if not isinstance(item, tuple):
                return item
            outcomes.append(item)
        return None

    while sum(ok for _, _, ok in outcomes) < 20:
        drain(0.2)
    pid = next(p for name, p in stub_processes(supervised.server.pid).items() if name.startswith(f"{step}_"))
    killed, unready, resumed = time.monotonic(), None, None
    os.kill(pid, sig)
    while resumed is None and time.monotonic() - killed < 60:
        if unready is None and not supervised.ready:  # what /health serves: the canary, or a stub gone
            unready = time.monotonic()
        drain(0.05)
        if unready is not None:
            later = [end for start, end, ok in outcomes if ok and start > unready]
            resumed = min(later) if later else None
    drain(2)
    stop.set()
    hung = drain(90)
    child.join(10)
    errors = sum(1 for _, _, ok in outcomes if not ok)
    slowest = max(end - start for start, end, _ in outcomes)
    heal = f"{supervised.heals[-1]} {supervised.heal_seconds[-1]:.1f}" if supervised.heals else "none"

    def after(t: float | None) -> str:
        return f"{t - killed:.2f}" if t is not None else "never"

    name = "SIGSTOP" if sig == signal.SIGSTOP else "SIGKILL"
    return (
        f"| {step} ({name}) | {after(unready)} | {after(resumed)} | {heal} | {len(outcomes)} | "
        f"{errors} | {'?' if hung is None else hung} | {slowest:.1f} |"
    )


def main(args: argparse.Namespace) -> None:
    photos, _ = sample_photos(limit=8)
    payloads = [encode_image(rgb) for rgb in photos]
    server = EmbeddedServer(args.model_repository, http_port=0, grpc_port=0, metrics_port=0)
    rows = []
    with SupervisedServer(server) as supervised:
        print(f"server ready in {server.startup_seconds:.1f} s", flush=True)
        plan = [(step, signal.SIGKILL) for step in args.steps]
        plan += [(QUALITY_MODEL, signal.SIGSTOP)] if args.stop else []
        last: dict[str, float] = {}
        for step, sig in plan:
            # A step broken again within the cooldown gets the server restarted: wait, each row a reload.
            time.sleep(max(2.0, last.get(step, -1e9) + STEP_RELOAD_COOLDOWN_S - time.monotonic()))
            rows.append(fault(supervised, payloads, args.clients, step, sig))
            last[step] = time.monotonic()
            print(rows[-1], flush=True)
        if args.restart:  # the last step again at once: the fallback, a restart of the whole server
            time.sleep(2)
            rows.append(fault(supervised, payloads, args.clients, plan[-1][0], signal.SIGKILL))
            print(rows[-1], flush=True)
    columns = "unready | first answer | heal (s) | SDK calls | SDK errors | hung | slowest call (s)"
    print(f"| fault | {columns} |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
