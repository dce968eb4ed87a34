"""``fitguard serve``: run the embedded Triton server on a model repository until SIGINT or SIGTERM.

A supervisor sends a canary image through the whole ensemble every second and, when a step died or hung,
reloads that step or else restarts the server on the same ports (:mod:`fitguard.serve.supervisor`);
``--no-supervise`` turns it off.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fitguard.serve.supervisor import SupervisedServer


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", required=True, type=Path, help="Triton model repository")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (0 picks a free one)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (0 picks a free one)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="metrics port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--log-verbose", type=int, default=0, help="Triton's verbose log level")
    parser.add_argument("--forward-log", action="store_true", help="copy the server's log to stderr")
    parser.add_argument("--log-file", type=Path, help="also append the server's log to this file")
    parser.add_argument(
        "--startup-timeout", type=float, default=300.0, help="seconds to wait for all models to be ready"
    )
    parser.add_argument(
        "--no-supervise",
        dest="supervise",
        action="store_false",
        help="no canary, no restart of a broken step",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        help="port of /health (the canary's verdict) and /metrics (canaries, restarts); default: the metrics "
        "port + 1 (a free one when that is 0); -1 turns it off",
    )
    parser.add_argument("--canary-interval", type=float, default=1.0, help="seconds between canaries")
    parser.add_argument(
        "--canary-timeout",
        type=float,
        default=3.0,
        help="seconds a canary may take before the step counts as hung",
    )


def _health_port(args: argparse.Namespace) -> int | None:
    if args.health_port is not None:
        return None if args.health_port < 0 else args.health_port
    return args.metrics_port + 1 if args.metrics_port else 0


def run(args: argparse.Namespace) -> int:
    from fitguard.serve.embedded import EmbeddedServer, EmbeddedServerError
    from fitguard.serve.supervisor import SupervisedServer

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if not stop.is_set() and not serving.is_set():
            stop.set()
            raise KeyboardInterrupt  # abort start(), which stops what it started
        stop.set()

    serving = threading.Event()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = EmbeddedServer(
        args.model_repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        host=args.host,
        log_verbose=args.log_verbose,
        forward_log=args.forward_log,
        log_file=args.log_file,
        startup_timeout=args.startup_timeout,
    )
    supervised = SupervisedServer(
        server,
        interval=args.canary_interval,
        canary_timeout=args.canary_timeout,
        health_port=_health_port(args),
    )
    try:
        try:
            supervised.start() if args.supervise else server.start()
        except EmbeddedServerError as e:
            print(f"fitguard serve: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("fitguard serve: interrupted while starting", file=sys.stderr)
            return 130
        serving.set()
        print(
            f"fitguard serve: Triton {server.model_repository} ready in {server.startup_seconds:.1f}s\n"
            f"  HTTP     http://{server.http_url}   (curl {server.http_url}/v2/health/ready)\n"
            f"  gRPC     {server.grpc_url}\n"
            f"  metrics  http://{server.metrics_url}/metrics\n"
            f"  models   {', '.join(sorted(m['name'] for m in server.repository_index()))}\n"
            f"{_supervision_line(supervised) if args.supervise else ''}"
            "Ctrl-C stops the server.",
            flush=True,
        )
        while not stop.wait(0.5):
            alive = supervised.poll() if args.supervise else server.is_running()
            if not alive:
                why = supervised.failed or f"the server exited unexpectedly:\n{server.log(30)}"
                print(f"fitguard serve: {why}", file=sys.stderr)
                return 1
        print("fitguard serve: stopping", flush=True)
        return 0
    finally:
        supervised.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervision_line(supervised: SupervisedServer) -> str:
    endpoint, host = supervised.endpoint, supervised.server.http_url.rpartition(":")[0]
    where = f"http://{host}:{endpoint.port}/health and /metrics" if endpoint is not None else "no endpoint"
    return f"  canary   every {supervised.supervisor.interval:g} s, heals a dead or hung step ({where})\n"
