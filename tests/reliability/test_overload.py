"""Overload with a latency promise, against the real server: 4x capacity, a crowd of clients, SDK clients.

Capacity is measured first (closed loop, 4 clients). Then, in turn: requests arriving open-loop at 4x that
rate, 96 closed-loop clients that send again the moment they are refused, and 96 SDK clients with their
jittered back-off; normal load after each. The promise (docs/operations.md, section 3): every request
gets an answer or a refusal, none is lost or fails otherwise; the answered ones stay fast (open loop: p99
within 3x the p99 at capacity and 1.5 s; the crowd: p99 within 1.5 s); refusals come at once (p99 within
100 ms); the server keeps answering 90% of its capacity while open-loop arrivals overload it; it stays
ready throughout and is back to full speed right after. The figures are asserted with the margins a loaded
machine needs (see GOODPUT); the script reports them.

The repository is the offline build (``FITGUARD_BUILD``) when there is one, for a realistic capacity,
else the tiny test repository, exported again with admission control when it was made without.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.reliability, pytest.mark.server, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "overload_bench.py"

# What holds on a loaded 2-core machine. The promise's own figures (answered throughput at least 0.9 of
# capacity, answered p99 within 3x capacity's and 1.5 s, refusals within 100 ms) are what
# scripts/overload_bench.py prints and docs/operations.md (section 3) reports from a quiet machine. Here the
# test shares the two cores with other test processes, so the capacity measured a minute earlier, the
# percentiles and the goodput move by a third or more between back-to-back runs, and a tight bound fails on
# a busy machine with nothing wrong. These bounds still fail on what the queue policy alone did: answers
# after a backlog of seconds, refusals only after a queue timeout (1 s), a server that stops answering
# under overload or stays slow after it, slots leaked by dropped requests.
P99_VS_CAPACITY = 5.0
ANSWERED_P99_MS = 3000.0
REFUSED_P99_MS = 500.0
GOODPUT = 0.5
AFTER = 0.5
# The back-off's point: SDK clients send far fewer attempts than careless ones. At most 4 attempts per
# call (retries=3) spread over about 1.4 s of waits; a client without back-off sends a new attempt every
# few milliseconds while refused.
SDK_ATTEMPTS_VS_RAW = 0.2
SDK_GOODPUT_VS_RAW = 2.0


def _bench_script():
    spec = importlib.util.spec_from_file_location("overload_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arguments(repository: Path) -> dict:
    return json.loads((repository / "manifest.json").read_text())["arguments"]


@pytest.fixture(scope="module")
def capacity_repository(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build's repository with admission control (the limit it was measured with), exported again
    from its trained files when it was made without (admission control is off by default)."""
    from fitguard.export import export_repository
    from fitguard.export.overload import DEFAULT_IN_FLIGHT_PER_INSTANCE, QueuePolicy

    served = Path(os.environ.get("FITGUARD_BUILD", "build")) / "model_repository"
    if not (served / "manifest.json").is_file():
        served = tiny_repository
    args = _arguments(served)
    if args.get("max_in_flight"):
        return served
    return export_repository(
        tmp_path_factory.mktemp("capacity") / "repository",
        backbone=args["backbone"],
        weights=args["weights"],
        head=served / "iqa_head.pt",
        detector=served / "detector.joblib",
        patches=args["patches"] or 4,
        quality_features=args.get("quality_features", "patches"),
        queue=QueuePolicy(max_in_flight=DEFAULT_IN_FLIGHT_PER_INSTANCE * args.get("instances", 1)),
        log=lambda _: None,
    )


@pytest.fixture(scope="module")
def figures(capacity_repository: Path, photos) -> dict:
    from fitguard.bench.overload import OverloadPlan, measure_overload
    from fitguard.preprocess import encode_image
    from fitguard.serve import EmbeddedServer

    images = [encode_image(rgb, "JPEG", quality=90) for rgb in photos.values()]
    plan = OverloadPlan(capacity_seconds=8, open_seconds=20, closed_seconds=10, sdk_seconds=10)
    sdk = _bench_script().sdk_caller  # the SDK with its back-off (the core's load generators import no SDK)
    with EmbeddedServer(capacity_repository, http_port=0, grpc_port=0, metrics_port=0) as server:
        out = measure_overload(server.grpc_url, server.http_url, images, plan, sdk_caller=sdk)
    print(f"\noverload on {capacity_repository}: {json.dumps(out)}")
    return out


def _served_everything(phase: dict) -> None:
    assert phase["error"] == 0, phase.get("first_error") or phase.get("message")
    assert phase["ready"] == phase["probes"] > 0, f"server not ready in some probes: {phase}"


def test_capacity_is_served_without_refusals(figures: dict) -> None:
    capacity = figures["capacity"]
    assert capacity["errors"] == 0, capacity["first_error"]  # admission control admits normal load untouched


def test_four_times_capacity_open_loop_keeps_the_promise(figures: dict) -> None:
    burst, capacity = figures["open_loop"], figures["capacity"]
    _served_everything(burst)
    assert burst["lost"] == 0, f"{burst['lost']} requests never got an answer"
    assert burst["answered"] and burst["overloaded"]  # it was overloaded, and still served
    assert burst["answered_p99_ms"] <= min(P99_VS_CAPACITY * capacity["p99_ms"], ANSWERED_P99_MS)
    assert burst["refused_p99_ms"] <= REFUSED_P99_MS  # refused at the entry, before any queue
    assert burst["answered_per_s"] >= GOODPUT * capacity["throughput"]
    assert figures["after_open_loop"]["errors"] == 0
    assert figures["after_open_loop"]["throughput"] >= AFTER * capacity["throughput"]


def test_a_crowd_without_back_off_gets_fast_answers(figures: dict) -> None:
    crowd = figures["closed_loop"]
    _served_everything(crowd)
    assert crowd["answered"] and crowd["overloaded"]
    assert crowd["answered_p99_ms"] <= ANSWERED_P99_MS
    assert figures["after_closed_loop"]["errors"] == 0
    assert figures["after_closed_loop"]["throughput"] >= AFTER * figures["capacity"]["throughput"]


def test_sdk_back_off_keeps_retries_from_becoming_a_storm(figures: dict) -> None:
    sdk, crowd = figures["sdk"], figures["closed_loop"]
    _served_everything(sdk)
    assert sdk["attempts"] <= 4 * sdk["calls"] + sdk["clients"]  # retries=3, and a call each in flight
    assert sdk["attempts"] / sdk["seconds"] <= SDK_ATTEMPTS_VS_RAW * crowd["attempts"] / crowd["seconds"]
    # Fewer attempts leave the cores to the admitted work: the server answers several times what it
    # answers the crowd (docs/operations.md); a back-off that did not wait would answer about the same.
    assert sdk["answered_per_s"] >= SDK_GOODPUT_VS_RAW * crowd["answered_per_s"]
