"""Faults: the server killed under load and restarted; a model file changed on disk after export.

The kill is SIGKILL of the whole server process group (tritonserver and its Python stubs), the way a crash
or an OOM kill looks to clients. The same client object must report typed errors within its retry budget
while the server is gone, and answer correctly again once a new server listens on the same ports.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port

from .conftest import Answer

pytestmark = [pytest.mark.reliability, pytest.mark.server]

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4
MAX_PER_WORKER = 200  # bounds the run even if the stop signal were missed
TIMEOUT_S = 5.0  # per attempt
RETRY_DEADLINE_S = 2.0  # total retrying per request


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_killed_mid_load_then_restarted(tiny_repository, good_payloads, reference_answers, protocol):
    from fitguard.client import FitClient, ServerUnavailable, Timeout
    from fitguard.serve import EmbeddedServer

    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    server = EmbeddedServer(tiny_repository, **ports)
    server.start()
    url = server.grpc_url if protocol == "grpc" else server.http_url
    client = FitClient(url, protocol=protocol, timeout=TIMEOUT_S, retries=3, retry_deadline=RETRY_DEADLINE_S)
    records: list[tuple[float, float, int, Answer | BaseException]] = []  # start, end, image, outcome
    lock = threading.Lock()
    stop = threading.Event()

    def worker(w: int) -> None:
        for k in range(MAX_PER_WORKER):
            if stop.is_set():
                return
            idx = (w * 5 + k) % len(good_payloads)
            t0 = time.monotonic()
            try:
                outcome: Answer | BaseException = Answer.from_verdict(client.classify(good_payloads[idx]))
            except Exception as exc:  # noqa: BLE001 - every outcome is checked below
                outcome = exc
            with lock:
                records.append((t0, time.monotonic(), idx, outcome))

    def count(predicate) -> int:
        with lock:
            return sum(1 for r in records if predicate(r))

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(WORKERS)]
    try:
        client.connect()
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while count(lambda r: isinstance(r[3], Answer)) < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        killed_at = time.monotonic()
        os.killpg(server.pid, signal.SIGKILL)  # tritonserver and its stubs, mid-load
        # Let every worker run into the dead server at least once (bounded wait).
        deadline = time.monotonic() + 4 * (TIMEOUT_S + RETRY_DEADLINE_S)
        while count(lambda r: r[0] > killed_at and isinstance(r[3], BaseException)) < WORKERS:
            assert time.monotonic() < deadline, "requests to a dead server did not fail in time"
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(timeout=2 * (TIMEOUT_S + RETRY_DEADLINE_S) + 5)
            assert not t.is_alive(), "a request hung on the dead server"
        server.stop()  # reap the killed process

        with lock:
            done = list(records)
        ok = [r for r in done if isinstance(r[3], Answer)]
        failed = [r for r in done if isinstance(r[3], BaseException)]
        for _, _, idx, answer in ok:
            assert reference_answers[idx].mismatch(answer) is None, (
                f"image {idx}: wrong answer around the kill"
            )
        budget = RETRY_DEADLINE_S + TIMEOUT_S + 1.0  # last attempt may start just before the deadline
        for start, end, _, exc in failed:
            assert isinstance(exc, ServerUnavailable | Timeout), f"unclear error: {type(exc).__name__}: {exc}"
            assert url in str(exc), f"the error does not say which server: {exc}"
            assert end - start <= budget, f"gave up after {end - start:.1f} s, over the {budget:.1f} s budget"
            assert start > killed_at - TIMEOUT_S, f"a request failed before the kill: {exc}"
        slowest = max(end - start for start, end, _, _ in failed)

        # Restart on the same ports; the very same client object must recover.
        restarted_at = time.monotonic()
        server = EmbeddedServer(tiny_repository, **ports)
        server.start()
        up_at = time.monotonic()
        recovered = None
        while recovered is None:
            try:
                recovered = Answer.from_verdict(client.classify(good_payloads[0]))
            except (ServerUnavailable, Timeout):
                assert time.monotonic() - up_at < 30, "the client did not recover after the restart"
        recovery = time.monotonic() - up_at
        assert reference_answers[0].mismatch(recovered) is None
        for idx, payload in enumerate(good_payloads):
            assert reference_answers[idx].mismatch(Answer.from_verdict(client.classify(payload))) is None
        print(
            f"\nkill ({protocol}): {len(done)} requests sent under load, {len(ok)} answered correctly, "
            f"{len(failed)} failed with typed errors ({sorted({type(r[3]).__name__ for r in failed})}), "
            f"0 lost; slowest failure {slowest:.2f} s (budget {budget:.1f} s); server back in "
            f"{up_at - restarted_at:.1f} s, same client answering {recovery:.2f} s later; "
            f"{len(good_payloads)} checks after recovery all correct"
        )
    finally:
        stop.set()
        client.close()
        server.stop()


def _tamper_classifier(repository: Path) -> str:
    """Swap in a *valid* but different classifier graph: it would load fine, only the manifest knows."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    rel = "classifier/1/model.onnx"
    path = repository / rel
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(init).copy()
    weights.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return rel


@pytest.fixture
def repository_copy(tiny_repository, tmp_path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(tiny_repository, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


@pytest.mark.slow
def test_changed_model_file_is_caught_at_load(repository_copy):
    from fitguard.serve import EmbeddedServer, ModelLoadError

    rel = _tamper_classifier(repository_copy)
    with pytest.raises(ModelLoadError) as info:
        EmbeddedServer(repository_copy, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=120).start()
    message = str(info.value)
    print(f"\nserver refused the changed repository: {message[:300]}")
    assert "preprocess" in message and rel in message and "manifest" in message


def _entrypoint(repository: Path, tritonserver: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MODEL_REPOSITORY=str(repository), TRITONSERVER=tritonserver, PYTHON=sys.executable)
    return subprocess.run(
        ["bash", str(ROOT / "docker" / "entrypoint.sh")], env=env, capture_output=True, text=True, timeout=60
    )


def test_container_entry_refuses_changed_or_missing_files(repository_copy):
    # Untouched: verification passes and the server command runs (`true` stands in for tritonserver).
    clean = _entrypoint(repository_copy, "true")
    assert clean.returncode == 0, clean.stderr
    assert "match the manifest" in clean.stderr

    rel = _tamper_classifier(repository_copy)
    (repository_copy / "classifier" / "labels.txt").unlink()
    # `false` would exit 1: exit 65 proves the server was never started.
    refused = _entrypoint(repository_copy, "false")
    assert refused.returncode == 65, refused.stderr
    assert f"{rel}: changed since export" in refused.stderr
    assert "classifier/labels.txt: missing" in refused.stderr
    assert "refusing to start" in refused.stderr
