"""``fitguard serve``: run the embedded Triton server on a model repository until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path


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


def run(args: argparse.Namespace) -> int:
    from fitguard.serve.embedded import EmbeddedServer, EmbeddedServerError

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
    try:
        try:
            server.start()
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
            "Ctrl-C stops the server.",
            flush=True,
        )
        while not stop.wait(0.5):
            if not server.is_running():
                print(f"fitguard serve: the server exited unexpectedly:\n{server.log(30)}", file=sys.stderr)
                return 1
        print("fitguard serve: stopping", flush=True)
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
