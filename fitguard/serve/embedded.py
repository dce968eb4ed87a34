"""Run the real ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships, on a model repository.

With the backend directory of :mod:`fitguard.serve.backend_folder`, a repository written for the NGC container
(``platform: "onnxruntime_onnx"``) is served unchanged.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from fitguard.serve.backend_folder import backend_directory, find_tritonserver, has_gpu, server_environment
from fitguard.serve.errors import (
    EmbeddedServerError,
    InvalidRepositoryError,
    ModelLoadError,
    PortInUseError,
    exit_error,
    log_failures,
    short_reason,
)
from fitguard.serve.process import (
    die_with_parent,
    free_port,
    kill_group,
    port_taken,
    shm_regions,
    wait_for_port,
)
from fitguard.serve.repository import RepositoryApi, http_status, index_failures, restriction_args

__all__ = [
    "EmbeddedServer",
    "InvalidRepositoryError",
    "ModelLoadError",
    "PortInUseError",
    "EmbeddedServerError",
    "backend_directory",
    "find_tritonserver",
]

_LOG_LINES_KEPT = 20_000


_LIVE: weakref.WeakSet[EmbeddedServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


class EmbeddedServer:
    """The real ``tritonserver`` from the ``nvidia-pytriton`` wheel, as a context manager.

    ``with EmbeddedServer("model_repository", http_port=0, grpc_port=0, metrics_port=0) as s:`` starts the
    server on free ports, waits until every model is ready, and stops it (and its Python stubs) on exit.
    Startup failures raise :class:`PortInUseError`, :class:`InvalidRepositoryError` or
    :class:`ModelLoadError` (which names each model and the reason Triton gave).
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        log_verbose: int = 0,
        host: str = "127.0.0.1",
        startup_timeout: float = 120.0,
        model_control_mode: Literal["none", "poll", "explicit"] = "none",
        extra_args: Sequence[str] = (),
        log_file: str | os.PathLike[str] | None = None,
        forward_log: bool = False,
        exit_timeout: int = 5,
        stop_timeout: float = 30.0,
        fail_on_model_error: bool = True,
        repository_key: str | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        self._requested_ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.ports: dict[str, int] = dict(self._requested_ports)
        self.log_verbose = log_verbose
        self.startup_timeout = startup_timeout
        self.model_control_mode = model_control_mode
        self.extra_args = tuple(extra_args)
        self.log_file = Path(log_file) if log_file is not None else None
        self.forward_log = forward_log
        self.exit_timeout = exit_timeout
        self.stop_timeout = stop_timeout
        self.fail_on_model_error = fail_on_model_error
        # When set, the repository API answers only requests that carry this key (fitguard.serve.repository).
        self.repository_key = repository_key
        self.startup_seconds: float | None = None

        self._process: subprocess.Popen[bytes] | None = None
        self._log: deque[str] = deque(maxlen=_LOG_LINES_KEPT)
        self._log_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop_lock = threading.Lock()

    # ------------------------------------------------------------------------------------- endpoints

    @property
    def http_port(self) -> int:
        return self.ports["http"]

    @property
    def grpc_port(self) -> int:
        return self.ports["grpc"]

    @property
    def metrics_port(self) -> int:
        return self.ports["metrics"]

    @property
    def http_url(self) -> str:
        """``host:port`` as tritonclient's HTTP client takes it."""
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """``host:port`` of the Prometheus endpoint (served at ``/metrics``)."""
        return f"{self._client_host}:{self.metrics_port}"

    @property
    def _client_host(self) -> str:
        # A wildcard bind address is reachable on loopback; it is not an address to connect to.
        return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self, tail: int | None = None) -> str:
        """The server's output so far (the last ``tail`` lines when given)."""
        with self._log_lock:
            lines = list(self._log)
        return "".join(lines[-tail:] if tail else lines)

    # ------------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def command(self) -> list[str]:
        """The command line ``start()`` runs (after ports are resolved)."""
        binary, _ = find_tritonserver()
        return [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_directory()}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            # Without a GPU, GPU metrics and pinned memory only add warnings and start-up time.
            *(() if has_gpu() else ("--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0")),
            f"--log-verbose={self.log_verbose}",
            f"--model-control-mode={self.model_control_mode}",
            "--strict-readiness=true",
            # Keep serving after a failed load so the repository index can tell us which model and why;
            # start() then stops the server itself unless fail_on_model_error is False.
            "--exit-on-error=false",
            # Triton spends this budget first waiting for idle keep-alive HTTP clients to hang up, then for
            # in-flight requests; a long one only makes Ctrl-C slow.
            f"--exit-timeout-secs={self.exit_timeout}",
            *(restriction_args(self.repository_key) if self.repository_key else ()),
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        return server_environment()

    def start(self) -> None:
        """Start the server and block until it is ready; raise an :class:`EmbeddedServerError` on failure."""
        if self.is_running():
            raise EmbeddedServerError(f"server already running (pid {self.pid})")
        repo = self.model_repository
        if not repo.is_dir():
            raise InvalidRepositoryError(f"model repository {repo} does not exist or is not a directory")
        self.ports = {
            name: port if port else free_port(self.host) for name, port in self._requested_ports.items()
        }
        if len(set(self.ports.values())) != len(self.ports):
            raise PortInUseError(f"the HTTP, gRPC and metrics ports must differ, got {self.ports}")
        for name, port in self.ports.items():
            if port_taken(self.host, port):
                raise PortInUseError(
                    f"{name} port {port} on {self.host} is already in use; choose another with "
                    f"--{name}-port (0 picks a free one)"
                )
        with self._log_lock:
            self._log.clear()
        cmd, env = self.command(), self.environment()

        started = time.monotonic()
        spawned = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(cmd, env, spawned, errors), name="tritonserver", daemon=True
        )
        self._thread.start()
        spawned.wait()
        if errors:
            raise EmbeddedServerError(f"could not run {cmd[0]}: {errors[0]}") from errors[0]
        _LIVE.add(self)
        try:
            self._wait_ready(started + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _run(self, cmd: list[str], env: dict[str, str], spawned: threading.Event, errors: list) -> None:
        sink: IO[str] | None = None
        try:
            if self.log_file is not None:
                self.log_file.parent.mkdir(parents=True, exist_ok=True)
                sink = open(self.log_file, "a", encoding="utf-8")  # noqa: SIM115 - closed below
            self._process = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() can reach the Python stubs too
                preexec_fn=die_with_parent,
            )
        except BaseException as e:
            errors.append(e)
            if sink is not None:
                sink.close()
            spawned.set()
            return
        spawned.set()
        assert self._process.stdout is not None
        try:
            for raw in self._process.stdout:
                line = raw.decode("utf-8", errors="replace")
                with self._log_lock:
                    self._log.append(line)
                if sink is not None:
                    sink.write(line)
                    sink.flush()
                if self.forward_log:
                    sys.stderr.write(line)
                    sys.stderr.flush()
        finally:
            self._process.wait()
            if sink is not None:
                sink.close()

    def _wait_ready(self, deadline: float) -> None:
        while True:
            if not self.is_running():
                self._raise_for_exit()
            ready = http_status(f"http://{self.http_url}/v2/health/ready") == 200
            # Endpoints come up only after the startup load has finished, so once the server is live the
            # repository index and the log already say which models failed.
            if ready or http_status(f"http://{self.http_url}/v2/health/live") == 200:
                failures = self._load_failures()
                if failures is not None:
                    if failures and self.fail_on_model_error:
                        raise ModelLoadError(failures, self.log())
                    if ready or not self.fail_on_model_error:
                        self._check_not_empty()
                        wait_for_port(
                            self._client_host, self.metrics_port, self.is_running
                        )  # metrics come up just after HTTP
                        return
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"server not ready after {self.startup_timeout:.0f}s; last log lines:\n{self.log(40)}",
                    self.log(),
                )
            time.sleep(0.05)

    def _check_not_empty(self) -> None:
        if self.model_control_mode != "poll" and not self.repository_index():
            raise InvalidRepositoryError(
                f"no models found in {self.model_repository}: expected <model>/config.pbtxt folders",
                self.log(),
            )

    def _wait_for_log(self, marker: str, timeout: float = 5.0) -> None:
        """Wait until the reader thread has consumed the log up to ``marker``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.is_running():
            with self._log_lock:
                if any(marker in line for line in reversed(self._log)):
                    return
            time.sleep(0.02)

    @property
    def repository(self) -> RepositoryApi:
        """Triton's model repository API (index, load, unload) with this server's key."""
        return RepositoryApi(self.http_url, self.repository_key)

    def repository_index(self) -> list[dict]:
        """Triton's repository index: per model its ``name``, ``version``, ``state`` and ``reason``."""
        return self.repository.index()

    def _load_failures(self) -> dict[str, str] | None:
        """Models that failed to load, with Triton's reason; None while some are still loading."""
        try:
            index = self.repository_index()
        except (OSError, ValueError):
            return None
        failures = index_failures(index, short_reason)
        if failures is None:
            return None
        # A model whose config cannot be read never reaches the index's states: only the log names it.
        self._wait_for_log("Started HTTPService")
        for name, reason in log_failures(self.log()).items():
            failures.setdefault(name, reason)
        return failures

    def _raise_for_exit(self) -> None:
        assert self._process is not None
        code = self._process.returncode
        kill_group(self._process.pid)  # stubs keep the log pipe open until they go
        if self._thread is not None:
            self._thread.join(timeout=5)
        raise exit_error(code, self.log(), self.model_repository)

    def keep_ports(self) -> None:
        """Let the next ``start()`` bind the ports this run resolved (a restart keeps its address)."""
        self._requested_ports = dict(self.ports)

    def stop(self, graceful: bool = True) -> None:
        """Stop gracefully (SIGTERM, wait ``stop_timeout``), then kill the whole process group.

        When Triton's exit timeout runs out it exits without unloading models, leaving the Python backend's
        shared-memory regions in /dev/shm; they are removed here once every process of the group is gone.
        """
        with self._stop_lock:
            process = self._process
            if process is None:
                return
            _LIVE.discard(self)
            regions = shm_regions(process.pid)
            if process.poll() is None and graceful:
                try:
                    process.terminate()
                    process.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    pass
            kill_group(process.pid)  # Python stubs and anything else left in the server's group
            process.wait()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(timeout=10)
            for region in regions:
                with contextlib.suppress(OSError):
                    (Path("/dev/shm") / region).unlink()
            self._process = None
            self._thread = None

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.is_running() else "stopped"
        return f"EmbeddedServer({str(self.model_repository)!r}, http={self.http_url}, {state})"
