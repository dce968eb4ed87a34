"""The deep check's verdicts without a server: a step that never answers, nothing listening, the words."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from fitguard import health

pytestmark = [pytest.mark.reliability]


def test_canary_image_decodes_like_any_photo():
    from fitguard.preprocess import decode_image

    rgb = decode_image(health.canary_image())
    assert rgb.shape[:2] == (health.CANARY_SIDE, health.CANARY_SIDE)


def test_a_step_that_never_answers_is_hung_and_handed_to_the_healer():
    from fitguard.serve.supervisor import Supervisor

    with socket.socket() as listener:  # accepts (the kernel's backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"127.0.0.1:{listener.getsockname()[1]}"
        seen: list[health.Probe] = []
        started = time.monotonic()
        probe = Supervisor(url, timeout=0.5, on_failure=seen.append).check()
    assert probe.kind == health.HUNG and not probe.healthy
    assert seen == [probe]
    assert time.monotonic() - started < 2.0  # bounded by the canary's timeout


def test_nothing_listening_is_unreachable_and_the_command_says_so_in_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert health.canary(f"127.0.0.1:{port}", timeout=1).kind == health.UNREACHABLE
    out = subprocess.run(
        [sys.executable, "-m", "fitguard.cli", "health", "--url", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stdout.startswith("unhealthy (unreachable") and len(out.stdout.strip().splitlines()) == 1


def test_failure_words():
    stub = "in ensemble 'fitguard', Stub process 'preprocess_0_0' is not healthy."
    assert health.classify_failure(500, stub) == health.STEP_DOWN
    assert health.classify_failure(503, "Exceeds maximum queue size") == health.BUSY
    assert health.classify_failure(400, "model 'fitguard' is not ready") == health.ERROR


def test_the_broken_step_is_named_and_its_reload_is_retried():
    from tritonclient.utils import InferenceServerException

    from fitguard.client import ServerUnavailable
    from fitguard.client.errors import ModelNotReady
    from fitguard.client.transport import Connection, map_error
    from fitguard.serve.supervisor import broken_instance, step_of

    gone = health.Probe(health.STEP_DOWN, "stub process 'detector_0_0' (pid 12) is gone", 0.0)
    said = health.Probe(
        health.STEP_DOWN, "[500] in ensemble 'fitguard', Stub process 'my_step_0_1' is not", 0.0
    )
    assert [step_of(broken_instance(p)) for p in (gone, said)] == ["detector", "my_step"]
    assert broken_instance(health.Probe(health.HUNG, "no answer within 3 s", 3.0)) is None
    conn = Connection("127.0.0.1:1")
    # Triton's answer while a served step is unloaded and loaded again, and for a model it never had.
    reloading = "Request for unknown model: 'fitguard' has no available versions"
    assert isinstance(
        map_error(InferenceServerException(reloading, "StatusCode.NOT_FOUND"), conn, "infer"),
        ServerUnavailable,
    )
    unknown = "Request for unknown model: 'nope' is not found"
    assert isinstance(
        map_error(InferenceServerException(unknown, "StatusCode.NOT_FOUND"), conn, "infer"), ModelNotReady
    )
