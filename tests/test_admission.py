"""Admission control without a server: the shared in-flight count, its lease, and the export policy.

The served behaviour (refusals at once, the answered p99 under 4x overload) is checked against the real
server in tests/reliability/test_overload.py.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from pathlib import Path

import pytest

from fitguard import contract as c
from fitguard.admission import AdmissionControl, counter_path, open_admission, sweep_stale
from fitguard.contract import ADMISSION_REFUSED
from fitguard.export.configs import Serving, render_config
from fitguard.export.overload import QueuePolicy, policy_from_bench
from fitguard.export.repository import SOURCE
from fitguard.parameters import DEFAULT_ADMISSION_LEASE_MS, Parameters
from fitguard.preprocess import PreprocessSettings
from fitguard.presets import preset_for


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_admission_admits_up_to_the_limit_and_releases(tmp_path: Path) -> None:
    admission = AdmissionControl(tmp_path / "counter", limit=3, lease_s=5.0, clock=Clock())
    assert [admission.admit() for _ in range(4)] == [True, True, True, False]
    assert admission.in_flight() == 3
    assert not admission.admit(1)  # a refusal takes nothing
    admission.release(2)
    assert admission.admit(2) and not admission.admit(1)
    assert ADMISSION_REFUSED in admission.refusal()


def test_a_batch_larger_than_the_limit_is_admitted_alone(tmp_path: Path) -> None:
    admission = AdmissionControl(tmp_path / "counter", limit=4, lease_s=5.0, clock=Clock())
    assert admission.admit(16)  # nothing else in flight: never refused for ever
    assert not admission.admit(1)
    admission.release(16)
    assert admission.admit(1) and not admission.admit(16)


def test_a_lost_request_keeps_its_slot_for_the_lease_only(tmp_path: Path) -> None:
    clock = Clock()
    admission = AdmissionControl(tmp_path / "counter", limit=2, lease_s=5.0, clock=clock)
    assert admission.admit(2)  # never released: dropped on the way
    clock.now += 4.9
    assert not admission.admit()
    clock.now += 0.2
    assert admission.in_flight() == 0 and admission.admit()


def test_steps_in_other_processes_share_one_count(tmp_path: Path) -> None:
    """Preprocess instances and the monitor step are separate stub processes: the file is the count."""
    path = tmp_path / "counter"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        admitted = pool.starmap(_admit_many, [(str(path), 50)] * 4)
    assert sum(admitted) == 10  # the limit, however the four processes raced
    admission = AdmissionControl(path, limit=10, lease_s=60.0)
    assert admission.in_flight() == 10
    admission.release(10)
    assert admission.in_flight() == 0


def _admit_many(path: str, tries: int) -> int:
    admission = AdmissionControl(path, limit=10, lease_s=60.0)
    return sum(admission.admit() for _ in range(tries))


def test_each_server_and_repository_gets_its_own_count(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert counter_path(a, server_pid=1) != counter_path(a, server_pid=2)
    assert counter_path(a, server_pid=1) != counter_path(b, server_pid=1)
    assert counter_path(a / "x" / "..", server_pid=1) == counter_path(a, server_pid=1)
    assert open_admission(a / c.PREPROCESS, limit=0, lease_ms=1000) is None


def test_files_of_servers_that_no_longer_run_are_swept(tmp_path: Path) -> None:
    import subprocess
    import sys

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = counter_path(tmp_path, server_pid=int(gone.stdout))
    live = counter_path(tmp_path, server_pid=os.getpid())
    for path in (dead, live):
        AdmissionControl(path.parent / path.name, limit=1, lease_s=1.0).close()
    sweep_stale(dead.parent)
    assert not dead.exists() and live.exists()
    live.unlink()


# ------------------------------------------------------------------------------------------- export


def _bench(*levels: tuple[int, float, float]) -> dict:
    return {
        "date": "2026-12-05",
        "served": {
            "levels": [
                {"concurrency": n, "batch": 1, "throughput": x, "errors": 0, "latency_ms": {"p99": p99}}
                for n, x, p99 in levels
            ]
        },
    }


def test_the_budget_picks_the_fastest_bench_level_within_it() -> None:
    bench = _bench((1, 35.0, 37.0), (2, 44.0, 56.0), (4, 60.0, 79.0), (8, 46.0, 304.0))
    policy = policy_from_bench(bench, budget_ms=200, base=QueuePolicy())
    assert (policy.max_in_flight, policy.latency_budget_ms) == (4, 200)
    assert policy.basis["p99_ms"] == 79.0 and policy.basis["bench_date"] == "2026-12-05"
    assert policy_from_bench(bench, budget_ms=50, base=QueuePolicy()).max_in_flight == 1
    with pytest.raises(ValueError, match="best p99 37 ms"):
        policy_from_bench(bench, budget_ms=30, base=QueuePolicy())


def test_the_cli_reads_the_bench_file(tmp_path: Path) -> None:
    from fitguard.export.cli import configure, queue_policy

    (tmp_path / "bench.json").write_text(json.dumps(_bench((1, 30.0, 40.0), (4, 50.0, 90.0))))
    parser = argparse.ArgumentParser()
    configure(parser)
    required = ["--backbone", "tiny", "--iqa-head", "h", "--detector", "d", "--out", "o"]
    args = parser.parse_args(
        [*required, "--latency-budget-ms", "100", "--bench", str(tmp_path / "bench.json")]
    )
    assert queue_policy(args).max_in_flight == 4
    assert queue_policy(parser.parse_args([*required, "--max-in-flight", "6"])).max_in_flight == 6
    for alone in (["--latency-budget-ms", "100"], ["--bench", str(tmp_path / "bench.json")]):
        with pytest.raises(ValueError, match="go together"):
            queue_policy(parser.parse_args([*required, *alone]))


def _parameters(name: str, serving: Serving) -> Parameters:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2 as mc

    settings = PreprocessSettings(preset_for("efficientnet_lite0"), 4, backbone="efficientnet_lite0")
    text = render_config(SOURCE, name, settings, threshold=0.0, serving=serving, extra={})
    return Parameters.from_config(
        json_format.MessageToDict(text_format.Parse(text, mc.ModelConfig()), preserving_proto_field_name=True)
    )


def test_the_admitting_and_the_releasing_step_get_the_same_limit() -> None:
    serving = Serving(instances=2, queue=QueuePolicy(timeout_ms=500, max_in_flight=8))
    assert serving.in_flight == 8
    assert Serving().in_flight == 0 and Serving().to_dict()["max_in_flight"] == 0  # off unless asked for
    for name in (c.PREPROCESS, c.MONITOR):
        params = _parameters(name, serving)
        assert params.int("max_in_flight") == 8, name
        assert params.int("admission_lease_ms") == QueuePolicy(timeout_ms=500).lease_ms == 1000, name
    assert serving.to_dict()["max_in_flight"] == 8 and serving.to_dict()["admission_lease_ms"] == 1000
    off = Serving(queue=QueuePolicy(max_in_flight=0))
    assert off.to_dict()["max_in_flight"] == 0
    assert _parameters(c.PREPROCESS, off).int("max_in_flight", 0) == 0


def test_the_served_steps_open_the_admission_control_the_export_wrote(tmp_path: Path) -> None:
    from fitguard.steps import admission_control

    args = {"model_repository": str(tmp_path / c.PREPROCESS)}
    serving = Serving(queue=QueuePolicy(timeout_ms=500, max_in_flight=8))
    for name in (c.PREPROCESS, c.MONITOR):
        admission = admission_control(args, _parameters(name, serving))
        assert admission is not None and (admission.limit, admission.lease_s) == (8, 1.0), name
        admission.close()
    assert admission_control(args, _parameters(c.PREPROCESS, Serving())) is None
    # One lease where nothing sets it: a policy without a queue timeout, a config without the key.
    assert QueuePolicy(timeout_ms=0).lease_ms == QueuePolicy().lease_ms == DEFAULT_ADMISSION_LEASE_MS
    admission = admission_control(args, Parameters({"max_in_flight": "2"}))
    assert admission is not None and admission.lease_s * 1000 == DEFAULT_ADMISSION_LEASE_MS
    admission.close()


def test_admission_needs_the_python_entry_and_the_monitor_step() -> None:
    assert Serving(monitoring=False).in_flight == 0
    assert Serving(preprocess="dali", accelerator="cuda").in_flight == 0
    with pytest.raises(ValueError, match="monitor step"):
        Serving(monitoring=False, queue=QueuePolicy(max_in_flight=4))
