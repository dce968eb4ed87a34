"""A step's process killed (SIGKILL) or stopped (SIGSTOP) under load: the server tells and heals itself.

Triton 2.51 neither restarts a dead Python stub nor reports it: without supervision every request fails
with ``Stub process '...' is not healthy`` while ``/v2/health/ready`` answers true. Here the supervised
embedded server (:class:`fitguard.serve.supervisor.SupervisedServer`) serves a tiny repository to four SDK
clients with their default retries and one raw gRPC client without any (in a child process:
:mod:`.healing_load`), and one step's stub is killed. The
deep check must turn false within 5 s, answers resume within 15 s, no request hangs, the raw client's
failures are all retryable refusals and the SDK clients see no error at all.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from fitguard.contract import CLASSIFIER, DETECTOR, MONITOR, PREPROCESS, QUALITY_MODEL

from .conftest import Answer

pytestmark = [pytest.mark.reliability, pytest.mark.server, pytest.mark.slow]

SDK_WORKERS = 4
UNREADY_WITHIN_S = 5.0
ANSWERS_WITHIN_S = 15.0
RUN_AFTER_RESUME_S = 2.0
HANG_BOUND_S = 55.0  # the SDK's 30 s timeout plus its retry deadline, and some: nothing may take longer


@dataclass
class Run:
    """What one fault run saw, in seconds after the fault."""

    killed_at: float = 0.0
    unready_at: float | None = None
    resumed_at: float | None = None
    # who, start, end, outcome, image
    records: list[tuple[str, float, float, object, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answers(self) -> int:
        with self.lock:
            return sum(1 for r in self.records if isinstance(r[3], Answer))


def run_fault(supervised, payloads: list[bytes], fault: Callable[[], None], **sdk_options: float) -> Run:
    """Load, ``fault()``, then watch the deep check and the answers until they resume; the load ends."""
    import multiprocessing

    from .healing_load import run_load

    ctx = multiprocessing.get_context("spawn")
    run, out, stop = Run(), ctx.Queue(), ctx.Event()
    restarts, hung = supervised.restarts, None
    args = (supervised.server.grpc_url, payloads, SDK_WORKERS, sdk_options, out, stop)
    load = ctx.Process(target=run_load, args=args, daemon=True)
    load.start()

    def drain(until: float) -> None:
        nonlocal hung
        while hung is None and time.monotonic() < until:
            try:
                item = out.get(timeout=max(0.01, min(0.1, until - time.monotonic())))
            except queue.Empty:
                continue
            if item[0] == "done":
                hung = item[1]
            else:
                with run.lock:
                    run.records.append(item)

    try:
        deadline = time.monotonic() + 90
        while run.answers() < 20:
            assert time.monotonic() < deadline, "no answers before the fault"
            drain(time.monotonic() + 0.1)
        run.killed_at = time.monotonic()
        fault()
        deadline = run.killed_at + 30
        while time.monotonic() < deadline and (run.unready_at is None or run.resumed_at is None):
            now = time.monotonic()
            if run.unready_at is None and not _ready(supervised):
                run.unready_at = now
            # A heal can open and close between two polls on a busy machine; the supervisor's own record
            # of when readiness went false (what /health serves) counts as well, the earlier of the two.
            healing = [t for t in supervised.unready_since if t >= run.killed_at]
            if healing and (run.unready_at is None or healing[0] < run.unready_at):
                run.unready_at = healing[0]
            drain(time.monotonic() + 0.1)
            if run.unready_at is not None:
                with run.lock:
                    later = [r[2] for r in run.records if isinstance(r[3], Answer) and r[1] > run.unready_at]
                run.resumed_at = min(later) if later else None
        drain(time.monotonic() + RUN_AFTER_RESUME_S)
    finally:
        stop.set()
        drain(time.monotonic() + HANG_BOUND_S + 5)
        load.join(timeout=10)
        if load.is_alive():
            load.kill()
    assert hung == 0, f"{hung} request(s) hung" if hung else "the load never ended"
    assert supervised.restarts == restarts + 1, f"{supervised.restarts - restarts} heals, expected one"
    return run


def _ready(supervised) -> bool:
    """The embedded server's readiness (its /health), and the deep check itself."""
    from fitguard.health import canary

    return supervised.ready and canary(supervised.server.http_url, timeout=2).healthy


def check(run: Run, what: str) -> None:
    from fitguard.client import ServerUnavailable
    from fitguard.client.errors import RETRYABLE

    assert run.unready_at is not None, f"{what}: the deep check never failed"
    assert run.resumed_at is not None, f"{what}: answers never resumed"
    unready, resumed = run.unready_at - run.killed_at, run.resumed_at - run.killed_at
    sdk = [r for r in run.records if r[0] == "sdk"]
    raw = [r for r in run.records if r[0] == "raw"]
    sdk_errors = [r[3] for r in sdk if not isinstance(r[3], Answer)]
    raw_errors = [r[3] for r in raw if not isinstance(r[3], Answer)]
    slowest = max(r[2] - r[1] for r in run.records)
    print(
        f"\n{what}: deep check false {unready:.2f} s after the fault, answers again after {resumed:.2f} s; "
        f"SDK {len(sdk)} calls, {len(sdk_errors)} errors; raw {len(raw)} requests, {len(raw_errors)} refused "
        f"({sorted({type(e).__name__ for e in raw_errors})}); slowest call {slowest:.1f} s"
    )
    assert unready <= UNREADY_WITHIN_S, f"{what}: readiness false only after {unready:.1f} s"
    assert resumed <= ANSWERS_WITHIN_S, f"{what}: first answer {resumed:.1f} s after the fault"
    assert not sdk_errors, f"{what}: SDK clients saw {sdk_errors[:3]}"
    assert all(isinstance(e, RETRYABLE) for e in raw_errors), f"{what}: {raw_errors[:3]}"
    # The raw client met the broken server (else the fault was never seen by a request).
    assert any(isinstance(e, ServerUnavailable) for e in raw_errors), f"{what}: no request met the fault"
    # Every image got its own answer back, the same before and after the restart.
    first: dict[int, Answer] = {}
    for _, _, _, outcome, image in run.records:
        if isinstance(outcome, Answer):
            wrong = first.setdefault(image, outcome).mismatch(outcome)
            assert wrong is None, f"{what}: image {image}: {wrong}"


@pytest.fixture(scope="module")
def supervised(tiny_repository):
    from fitguard.serve import EmbeddedServer
    from fitguard.serve.supervisor import SupervisedServer

    server = EmbeddedServer(tiny_repository, http_port=0, grpc_port=0, metrics_port=0)
    with SupervisedServer(server, health_port=0) as s:
        yield s


def _signal_stub(supervised, instance: str, sig: signal.Signals) -> Callable[[], None]:
    from fitguard.serve.process import stub_processes

    pid = stub_processes(supervised.server.pid)[instance]
    return lambda: os.kill(pid, sig)


@pytest.mark.parametrize("step", [PREPROCESS, CLASSIFIER, MONITOR])
def test_killed_step_heals(supervised, good_payloads, step):
    run = run_fault(supervised, good_payloads, _signal_stub(supervised, f"{step}_0_0", signal.SIGKILL))
    check(run, f"SIGKILL {step}")
    assert supervised.heals[-1] == f"reload {step}", "the step alone was not reloaded"


def test_stopped_step_heals(supervised, good_payloads):
    run = run_fault(
        supervised, good_payloads, _signal_stub(supervised, f"{QUALITY_MODEL}_0_0", signal.SIGSTOP)
    )
    check(run, f"SIGSTOP {QUALITY_MODEL}")
    assert supervised.heals[-1] == f"reload {QUALITY_MODEL}", "the step alone was not reloaded"


def test_step_broken_again_at_once_restarts_the_server(supervised, good_payloads):
    """A step that breaks again soon after its reload is not reloaded again: the whole server restarts."""
    from fitguard.serve.supervisor import STEP_RELOAD_COOLDOWN_S

    step = DETECTOR
    supervised._reloaded[step] = time.monotonic() - STEP_RELOAD_COOLDOWN_S / 2
    run = run_fault(supervised, good_payloads, _signal_stub(supervised, f"{step}_0_0", signal.SIGKILL))
    check(run, f"SIGKILL {step} again")
    assert supervised.heals[-1] == "restart"


def test_restarts_and_canaries_on_metrics(supervised):
    import urllib.request

    from fitguard.health import CANARIES, RESTARTS

    with urllib.request.urlopen(f"http://127.0.0.1:{supervised.endpoint.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[0] != "#"
    }
    assert values[RESTARTS] == supervised.restarts
    assert values[f'{CANARIES}{{result="ok"}}'] > 0
    assert values[f'{CANARIES}{{result="step_down"}}'] >= supervised.restarts
    with urllib.request.urlopen(f"http://127.0.0.1:{supervised.endpoint.port}/health", timeout=5) as r:
        assert r.status == 200


def test_dali_validating_step_heals(tiny_dali_repository, good_payloads):
    from fitguard.serve import EmbeddedServer
    from fitguard.serve.supervisor import SupervisedServer

    server = EmbeddedServer(tiny_dali_repository, http_port=0, grpc_port=0, metrics_port=0)
    with SupervisedServer(server) as supervised:
        fault = _signal_stub(supervised, f"{PREPROCESS}_0_0", signal.SIGKILL)
        run = run_fault(supervised, good_payloads, fault)
        assert supervised.heals[-1] == f"reload {PREPROCESS}", "the step alone was not reloaded"
    check(run, "SIGKILL the DALI repository's validating step")


def test_repository_api_answers_only_the_servers_key(supervised):
    """Explicit model control could load code through the repository API: only the supervisor may use it."""
    import urllib.error
    import urllib.request

    from fitguard.contract import ENSEMBLE
    from fitguard.serve.repository import KEY_HEADER

    url = f"http://{supervised.server.http_url}/v2/repository"
    for path, headers in (("/index", {}), (f"/models/{ENSEMBLE}/unload", {KEY_HEADER: "guess"})):
        request = urllib.request.Request(url + path, data=b"{}", method="POST", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 403
    assert {m["name"] for m in supervised.server.repository_index()} >= {ENSEMBLE, PREPROCESS}
