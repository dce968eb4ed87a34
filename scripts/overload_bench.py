"""Measure the overload promise on one repository and print every figure and ratio of one run (JSON).

    python scripts/overload_bench.py --model-repository build/model_repository --json overload.json

Starts the embedded server on free ports, then: capacity (4 closed-loop clients), open-loop arrivals at
4x capacity for 20 s, 96 closed-loop clients without back-off for 20 s, optionally SDK clients with their
back-off (--sdk-seconds), and the speed right after each phase. Not a test: it asserts nothing; the
targets are in docs/operations.md, section 3, and tests/reliability/test_overload.py checks them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class _Counted:
    """A transport that counts the requests it sends (the SDK's retries included)."""

    def __init__(self, inner: Any, sent: list[int]) -> None:
        self._inner, self._sent = inner, sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def infer(self, model: str, payloads: list[bytes], **options: Any) -> Any:
        self._sent[0] += 1
        return self._inner.infer(model, payloads, **options)


def sdk_caller(url: str, payloads: Sequence[bytes], timeout_s: float, sent: list[int]) -> tuple[Any, Any]:
    """A :class:`fitguard.client.FitClient` with its default retries and jittered back-off, as a closed-loop
    client (:data:`fitguard.bench.closedloop.Caller`)."""
    from fitguard.client import FitClient, FitguardError, Overloaded
    from fitguard.client.transport import open_transport

    client = FitClient(
        url, timeout=timeout_s, transport_factory=lambda conn: _Counted(open_transport(conn), sent)
    )

    def call(k: int) -> str:
        try:
            client.classify(payloads[k % len(payloads)])
            return "answered"
        except Overloaded:  # refused on every attempt the back-off allowed
            return "overloaded"
        except FitguardError as exc:
            return f"error:{exc}"

    return client, call


def get_args_parser() -> argparse.ArgumentParser:
    from fitguard.bench.overload import OverloadPlan

    plan = OverloadPlan()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", required=True, help="an exported repository")
    parser.add_argument("--factor", type=float, default=plan.factor, help="open-loop rate / capacity")
    parser.add_argument("--open-seconds", type=float, default=plan.open_seconds)
    parser.add_argument("--closed-clients", type=int, default=plan.closed_clients)
    parser.add_argument("--closed-seconds", type=float, default=plan.closed_seconds)
    parser.add_argument("--sdk-clients", type=int, default=plan.sdk_clients)
    parser.add_argument("--sdk-seconds", type=float, default=0.0, help="SDK clients' phase (0: none)")
    parser.add_argument("--capacity-seconds", type=float, default=plan.capacity_seconds)
    parser.add_argument("--json", default=None, help="also write the figures here")
    return parser


def main(args: argparse.Namespace) -> int:
    from skimage import data

    from fitguard.bench.overload import OverloadPlan, measure_overload
    from fitguard.manifest import read_manifest
    from fitguard.preprocess import encode_image
    from fitguard.serve import EmbeddedServer

    images = [
        encode_image(getattr(data, name)(), "JPEG", quality=90)
        for name in ("chelsea", "astronaut", "coffee", "rocket")
    ]
    plan = OverloadPlan(
        capacity_seconds=args.capacity_seconds,
        factor=args.factor,
        open_seconds=args.open_seconds,
        closed_clients=args.closed_clients,
        closed_seconds=args.closed_seconds,
        sdk_clients=args.sdk_clients,
        sdk_seconds=args.sdk_seconds,
    )
    repository = Path(args.model_repository)
    policy = {
        k: v
        for k, v in read_manifest(repository)["arguments"].items()
        if k in ("quality_features", "patches", "max_queue_size", "queue_timeout_ms", "max_in_flight")
        or k.startswith(("admission", "latency"))
    }
    with EmbeddedServer(repository, http_port=0, grpc_port=0, metrics_port=0) as server:
        figures = measure_overload(server.grpc_url, server.http_url, images, plan, sdk_caller=sdk_caller)
    report = {"repository": str(repository), "policy": policy, **figures}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
