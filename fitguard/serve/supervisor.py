"""Keep a served ensemble honest: run the canary (:mod:`fitguard.health`) every second or so, and heal.

:class:`Supervisor` runs the canary on a thread and hands every failure that a restart heals (a step's process
died, a step stopped answering) to a callback. :class:`SupervisedServer` is the embedded server with such a
supervisor (Triton 2.51 neither restarts a dead Python stub nor reports it): it reloads the broken step
alone (explicit model control: an unload and a load start a new stub), and restarts the whole
``tritonserver`` on the same ports and repository when the step is unknown or its reload did not heal.
:class:`HealthEndpoint` serves the canary's counters on ``/metrics`` and its verdict on ``/health`` (200 or
503) beside Triton's own endpoints.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from fitguard.health import HEALABLE, STEP_DOWN, UNREACHABLE, HealthMetrics, Probe, canary
from fitguard.serve.embedded import EmbeddedServer, EmbeddedServerError
from fitguard.serve.process import process_state, stub_processes
from fitguard.serve.repository import RepositoryError, new_key

DEFAULT_INTERVAL = 1.0
DEFAULT_CANARY_TIMEOUT = 3.0
# A step that breaks again this soon after its reload gets the whole server restarted instead.
STEP_RELOAD_COOLDOWN_S = 30.0
STEP_LOAD_TIMEOUT_S = 30.0
_STUB_NAME = re.compile(r"stub process '([^']+)'", re.IGNORECASE)


def step_of(instance: str) -> str:
    """The model of a Python stub's instance name (``preprocess_0_0`` -> ``preprocess``)."""
    return instance.rsplit("_", 2)[0]


def broken_instance(probe: Probe) -> str | None:
    """The stub instance a failed canary names (the /proc look and Triton's stub-unhealthy words do)."""
    match = _STUB_NAME.search(probe.detail) if probe.kind == STEP_DOWN else None
    return match.group(1) if match else None


class Supervisor:
    """Run the canary against ``url`` every ``interval`` seconds until :meth:`stop`.

    ``on_failure(probe)`` is called, on the supervisor's thread, for each failed canary whose kind a restart
    heals (:data:`fitguard.health.HEALABLE`); what it does is up to the owner (restart, exit).
    """

    def __init__(
        self,
        url: str,
        *,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = DEFAULT_CANARY_TIMEOUT,
        on_failure: Callable[[Probe], None] | None = None,
        metrics: HealthMetrics | None = None,
        precheck: Callable[[], Probe | None] | None = None,
    ) -> None:
        self.url = url
        self.precheck = precheck
        self.interval = interval
        self.timeout = timeout
        self.on_failure = on_failure
        self.metrics = metrics or HealthMetrics()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def last(self) -> Probe | None:
        return self.metrics.last

    def check(self) -> Probe:
        """One canary, counted; calls ``on_failure`` when the failure is one a restart heals.

        A ``precheck`` that finds a failure without a request (a step's process gone) stands for the canary.
        """
        probe = self.precheck() if self.precheck is not None else None
        probe = probe or canary(self.url, timeout=self.timeout)
        self.metrics.observe(probe)
        if probe.kind in HEALABLE and self.on_failure is not None:
            self.on_failure(probe)
        return probe

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - the supervisor must outlive one bad round
                print(f"fitguard supervisor: health round failed: {exc}", file=sys.stderr, flush=True)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="fitguard-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None


class HealthEndpoint:
    """``/metrics`` (the canary's counters) and ``/health`` (200 when the last canary passed, else 503)."""

    def __init__(self, metrics: HealthMetrics, healthy: Callable[[], bool], host: str, port: int) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.startswith("/metrics"):
                    self._send(200, owner.metrics.render(), "text/plain; version=0.0.4")
                elif self.path.startswith("/health"):
                    ok = owner.healthy()
                    last = owner.metrics.last
                    self._send(
                        200 if ok else 503, last.line("canary") if last else "no canary yet", "text/plain"
                    )
                else:
                    self._send(404, "not found", "text/plain")

            def _send(self, status: int, text: str, kind: str) -> None:
                body = (text if text.endswith("\n") else text + "\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.metrics, self.healthy = metrics, healthy
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fitguard-health", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class SupervisedServer:
    """An :class:`EmbeddedServer` that heals itself when the canary shows a dead or hung step.

    A server in the default model control mode (``none``) is switched to ``explicit`` with every model loaded
    at start, as before, so that one step can be unloaded and loaded again; its repository API answers only
    this process (:mod:`fitguard.serve.repository`). ``ready`` is the truth a load balancer needs: the last
    canary got its verdict and no healing is under way. While a step reloads, requests for the ensemble are
    refused at once (Triton: the model has no available versions); while the whole server restarts, its
    ports refuse connections. Clients retry both as unavailable.
    """

    def __init__(
        self,
        server: EmbeddedServer,
        *,
        interval: float = DEFAULT_INTERVAL,
        canary_timeout: float = DEFAULT_CANARY_TIMEOUT,
        health_port: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if server.model_control_mode == "none":
            server.model_control_mode = "explicit"
            server.extra_args = (*server.extra_args, "--load-model=*")
            server.repository_key = server.repository_key or new_key()
        self.server = server
        self.metrics = HealthMetrics()
        self.supervisor = Supervisor(
            server.http_url,
            interval=interval,
            timeout=canary_timeout,
            on_failure=self._heal,
            metrics=self.metrics,
            precheck=self._stubs_gone,
        )
        self.health_port = health_port
        self.endpoint: HealthEndpoint | None = None
        self.healing = threading.Event()
        self.failed: BaseException | None = None
        self.heal_seconds: list[float] = []
        self.heals: list[str] = []  # what each heal did: "reload <step>" or "restart"
        self.unready_since: list[float] = []  # when each heal took readiness away (monotonic clock)
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._closing = threading.Event()
        self._heal_lock = threading.Lock()
        self._stubs: dict[str, int] = {}
        self._reloaded: dict[str, float] = {}  # step -> when it was last reloaded

    @property
    def ready(self) -> bool:
        last = self.metrics.last
        return not self.healing.is_set() and last is not None and last.healthy and self.server.is_running()

    @property
    def restarts(self) -> int:
        """Heals so far: step reloads and server restarts (``fitguard_restarts_total``)."""
        return self.metrics.restarts

    def _stubs_gone(self) -> Probe | None:
        """A step whose Python stub process died or stopped, seen in /proc before any request fails on it."""
        for name, pid in self._stubs.items():
            state = process_state(pid)
            if state is None or state in "TtZX":
                return Probe(STEP_DOWN, f"stub process '{name}' (pid {pid}) is {state or 'gone'}", 0.0)
        return None

    def _record_stubs(self) -> None:
        pid = self.server.pid
        self._stubs = stub_processes(pid) if pid is not None else {}

    def start(self) -> None:
        self.server.start()
        self._record_stubs()
        self.supervisor.url = self.server.http_url  # ports are resolved now
        # Ready once a verdict came back; a cold first canary is not a reason to restart.
        self.metrics.observe(canary(self.server.http_url, timeout=self.supervisor.timeout))
        if self.health_port is not None:
            self.endpoint = HealthEndpoint(
                self.metrics, lambda: self.ready, self.server.host, self.health_port
            )
        self.supervisor.start()

    def _heal(self, probe: Probe) -> None:
        with self._heal_lock:
            if self._closing.is_set() or self.failed is not None:
                return
            self.healing.set()
            started = time.monotonic()
            self.unready_since.append(started)
            self._log(f"fitguard serve: canary failed ({probe.kind}: {probe.detail}); healing")
            try:
                step = self._reloadable_step(probe)
                how = f"reload {step}" if step is not None and self._reload_step(step) else "restart"
                if how == "restart":
                    self._restart_server()
            except EmbeddedServerError as exc:
                self.failed = exc
                self._log(f"fitguard serve: restart failed: {exc}")
                return
            finally:
                self.metrics.restarted()
            self.heals.append(how)
            self.heal_seconds.append(time.monotonic() - started)
            self._log(f"fitguard serve: healed ({how}) in {self.heal_seconds[-1]:.1f} s")
            # Ready again once the supervisor's next canary (at once: the round overran) gets its verdict.
            self.healing.clear()

    def _reloadable_step(self, probe: Probe) -> str | None:
        """The step to reload alone, or None (unknown step, no model control, or it broke again soon)."""
        instance = broken_instance(probe)
        if instance is None or self.server.model_control_mode != "explicit":
            return None
        step = step_of(instance)
        last = self._reloaded.get(step)
        return None if last is not None and time.monotonic() - last < STEP_RELOAD_COOLDOWN_S else step

    def _reload_step(self, step: str) -> bool:
        """Kill the step's stubs, unload and load it (Triton starts new stubs); True when a canary passes.

        A plain load is not enough: Triton skips loading a model whose files did not change.
        """
        self._reloaded[step] = time.monotonic()
        for name, pid in self._stubs.items():
            if step_of(name) == step:  # a stopped or hung stub would hold up its own unload
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        api = self.server.repository
        try:
            api.unload(step)
            api.load(step, timeout=STEP_LOAD_TIMEOUT_S)
        except RepositoryError as exc:
            self._log(f"fitguard serve: reloading {step} failed ({exc}); restarting the server")
            return False
        self._record_stubs()
        probe = canary(self.server.http_url, timeout=self.supervisor.timeout)
        if not probe.healthy:
            self._log(f"fitguard serve: {step} reloaded but the canary failed ({probe.detail}); restarting")
        return probe.healthy

    def _restart_server(self) -> None:
        """Kill the server and its stubs at once, then start it again on the same ports and repository."""
        self._stubs = {}
        self.server.keep_ports()
        self.server.stop(graceful=False)
        self.server.start()
        self._record_stubs()

    def poll(self) -> bool:
        """Whether it still serves or heals (False once a restart failed or the server died unhealed)."""
        if self.failed is not None:
            return False
        if self.healing.is_set() or self.server.is_running() or self._closing.is_set():
            return True
        self._heal(Probe(UNREACHABLE, "the server process exited", 0.0))
        return self.failed is None

    def stop(self) -> None:
        self._closing.set()
        self.supervisor.stop()
        if self.endpoint is not None:
            with contextlib.suppress(OSError):
                self.endpoint.close()
        self.server.stop()

    def __enter__(self) -> SupervisedServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
