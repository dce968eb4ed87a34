"""``fitguard health``: the deep health check (:mod:`fitguard.health`) as a command.

``fitguard health --url HOST:PORT`` sends one canary through the whole ensemble and prints one line; exit 0
when a verdict (or an overload refusal) came back, 1 otherwise: a readiness or liveness probe. ``--watch``
keeps checking (the container's watchdog): it serves ``/health`` and ``/metrics`` on ``--port`` and exits 1
once a step has been dead or hung for ``--fail-after`` seconds, so the orchestrator restarts the container
after the readiness probe has taken it out of rotation.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

EXIT_UNHEALTHY = 1


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="127.0.0.1:8000", help="Triton's HTTP endpoint, host:port")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds the canary may take")
    parser.add_argument("--watch", action="store_true", help="keep checking; exit 1 once a step stays down")
    parser.add_argument("--interval", type=float, default=2.0, help="--watch: seconds between canaries")
    parser.add_argument(
        "--fail-after",
        type=float,
        default=15.0,
        help="--watch: seconds a step may stay dead or hung before the watchdog exits (default %(default)s)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="--watch: address of the /health endpoint")
    parser.add_argument("--port", type=int, help="--watch: port of /health and /metrics (default: none)")


def run(args: argparse.Namespace) -> int:
    from fitguard.health import canary

    if args.watch:
        return watch(args)
    probe = canary(args.url, timeout=args.timeout)
    print(probe.line(args.url), flush=True)
    return 0 if probe.healthy else EXIT_UNHEALTHY


def watch(args: argparse.Namespace) -> int:
    """Check every ``interval`` seconds until a step has stayed down ``fail_after`` seconds (exit 1) or a
    signal stops the watch (exit 0)."""
    from fitguard.serve.supervisor import HealthEndpoint, Supervisor

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    down_since: list[float] = []

    def on_failure(probe) -> None:  # noqa: ANN001 - a fitguard.health.Probe
        if not down_since:
            down_since.append(time.monotonic())
            print(f"fitguard health: {probe.line(args.url)}", file=sys.stderr, flush=True)

    supervisor = Supervisor(args.url, interval=args.interval, timeout=args.timeout, on_failure=on_failure)
    endpoint = None
    if args.port is not None:
        try:
            endpoint = HealthEndpoint(
                supervisor.metrics,
                lambda: bool(supervisor.last and supervisor.last.healthy),
                args.host,
                args.port,
            )
        except OSError as exc:  # the watch matters more than its endpoint
            print(
                f"fitguard health: no /health endpoint on port {args.port}: {exc}",
                file=sys.stderr,
                flush=True,
            )
    try:
        while not stop.is_set():
            started = time.monotonic()
            probe = supervisor.check()
            if probe.healthy:
                down_since.clear()
            elif down_since and time.monotonic() - down_since[0] >= args.fail_after:
                print(
                    f"fitguard health: a step has been down for {args.fail_after:g} s: exiting so the server "
                    f"is restarted ({probe.line(args.url)})",
                    file=sys.stderr,
                    flush=True,
                )
                return EXIT_UNHEALTHY
            stop.wait(max(0.0, args.interval - (time.monotonic() - started)))
        return 0
    finally:
        if endpoint is not None:
            endpoint.close()
