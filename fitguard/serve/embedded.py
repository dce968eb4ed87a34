"""Run the real ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships, on a model repository.

The wheel carries Triton 2.51 with the Python backend and one Python backend stub per Python version, but no
ONNX Runtime backend. We assemble a backend directory (cached) holding the wheel's backends, the stub for the
running interpreter and our Python-based ``onnxruntime`` backend, so a repository written for the NGC
container (``platform: "onnxruntime_onnx"``) is served unchanged.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import deque
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

__all__ = [
    "EmbeddedServer",
    "InvalidRepositoryError",
    "ModelLoadError",
    "PortInUseError",
    "ServerError",
    "backend_directory",
    "find_tritonserver",
]

_BACKEND_MODEL_PY = Path(__file__).with_name("backends") / "onnxruntime" / "model.py"
_LOG_LINES_KEPT = 20_000


class ServerError(RuntimeError):
    """The embedded server could not start or stopped unexpectedly. ``log`` holds the server's output."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class PortInUseError(ServerError):
    """A port the server needs is taken."""


class InvalidRepositoryError(ServerError):
    """The model repository is missing or Triton rejected it."""


class ModelLoadError(ServerError):
    """One or more models failed to load; ``failures`` maps model name to the reason Triton gave."""

    def __init__(self, failures: dict[str, str], log: str = "") -> None:
        lines = "\n".join(f"  {name}: {reason}" for name, reason in failures.items())
        super().__init__(f"model(s) failed to load:\n{lines}", log)
        self.failures = failures


# --------------------------------------------------------------------------------------------- wheel layout


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ServerError("the embedded server needs nvidia-pytriton: pip install 'fitguard[serve]'") from e
    return Path(pytriton.__file__).resolve().parent


def find_tritonserver() -> tuple[Path, Path]:
    """Return (tritonserver binary, folder of the shared libraries it needs) from the installed wheel."""
    root = _pytriton_root()
    binary = root / "tritonserver" / "bin" / "tritonserver"
    libs = root.parent / "nvidia_pytriton.libs"
    if not binary.is_file():
        raise ServerError(f"tritonserver not found in the nvidia-pytriton wheel (looked for {binary})")
    return binary, libs


def _cache_root() -> Path:
    explicit = os.environ.get("FITGUARD_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fitguard"


def backend_directory() -> Path:
    """Build (once, then reuse) the backend directory for this wheel, Python version and backend code.

    Layout: ``python/`` (the wheel's Python backend plus the stub for this interpreter) and
    ``onnxruntime/model.py`` (our Python-based backend). The folder name hashes everything that goes in, so
    an upgrade of any part gets a fresh folder and concurrent builders never see a half-written one.
    """
    root = _pytriton_root() / "tritonserver"
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / pyver / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(
            f"nvidia-pytriton ships no Python backend stub for Python {pyver} (looked for {stub})"
        )
    digest = hashlib.sha256()
    digest.update(metadata.version("nvidia-pytriton").encode())
    digest.update(pyver.encode())
    digest.update(_BACKEND_MODEL_PY.read_bytes())
    for part in (stub, root / "backends" / "python" / "libtriton_python.so"):
        st = part.stat()
        digest.update(f"{part}:{st.st_size}:{st.st_mtime_ns}".encode())
    key = f"triton-backends-{metadata.version('nvidia-pytriton')}-py{pyver}-{digest.hexdigest()[:12]}"

    for base in (_cache_root(), Path(tempfile.gettempdir()) / f"fitguard-{os.getuid()}"):
        target = base / key
        if (target / ".complete").is_file():
            return target
        try:
            base.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".building-", dir=base))
        except OSError:
            continue  # read-only cache: fall back to the temp folder
        try:
            shutil.copytree(
                root / "backends", staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
            )
            shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
            (staging / "onnxruntime").mkdir()
            shutil.copy2(_BACKEND_MODEL_PY, staging / "onnxruntime" / "model.py")
            (staging / ".complete").write_text(key + "\n")
            try:
                staging.rename(target)
            except OSError:
                if not (target / ".complete").is_file():  # not a lost race: a real failure
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target
    raise ServerError("could not create a backend directory in the cache or the temp folder")


# --------------------------------------------------------------------------------------------- ports


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option Triton's servers use, so a port in TIME_WAIT is not reported as taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


# --------------------------------------------------------------------------------------------- process


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. The kernel sends SIGTERM when the *thread* that forked us
    # exits, which is why the server is spawned from a thread that lives exactly as long as the server.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_LIVE: weakref.WeakSet[EmbeddedServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


_FAILED_LOAD = re.compile(r"failed to load '(?P<name>[^']+)'(?: version \d+)?: (?P<reason>.*?)\"?$")
_POLL_FAILED = re.compile(r"Poll failed for model directory '(?P<name>[^']+)': (?P<reason>.*?)\"?$")
_TABLE_ROW = re.compile(r"^\|\s*(?P<name>[^|]+?)\s*\|\s*\d+\s*\|\s*UNAVAILABLE: (?P<reason>.*?)\s*\|$")
_PORT_IN_USE = re.compile(r"Socket '([^']*)' already in use|address already in use", re.IGNORECASE)


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
            *(() if _has_gpu() else ("--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0")),
            f"--log-verbose={self.log_verbose}",
            f"--model-control-mode={self.model_control_mode}",
            "--strict-readiness=true",
            # Keep serving after a failed load so the repository index can tell us which model and why;
            # start() then stops the server itself unless fail_on_model_error is False.
            "--exit-on-error=false",
            # Triton spends this budget first waiting for idle keep-alive HTTP clients to hang up, then for
            # in-flight requests; a long one only makes Ctrl-C slow.
            f"--exit-timeout-secs={self.exit_timeout}",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        _, libs = find_tritonserver()
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH")) if p)
        # The stub embeds Python and finds its prefix through `python3` on PATH: putting this interpreter's
        # bin/ first makes the stub see the same site-packages (numpy, onnxruntime, fitguard).
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join(p for p in (bindir, env.get("PATH")) if p)
        return env

    def start(self) -> None:
        """Start the server and block until it is ready; raise a :class:`ServerError` subclass on failure."""
        if self.is_running():
            raise ServerError(f"server already running (pid {self.pid})")
        repo = self.model_repository
        if not repo.is_dir():
            raise InvalidRepositoryError(f"model repository {repo} does not exist or is not a directory")
        self.ports = {
            name: port if port else _free_port(self.host) for name, port in self._requested_ports.items()
        }
        if len(set(self.ports.values())) != len(self.ports):
            raise PortInUseError(f"the HTTP, gRPC and metrics ports must differ, got {self.ports}")
        for name, port in self.ports.items():
            if _port_taken(self.host, port):
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
            raise ServerError(f"could not run {cmd[0]}: {errors[0]}") from errors[0]
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
                preexec_fn=_die_with_parent,
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
            ready = self._get("/v2/health/ready") == 200
            # Endpoints come up only after the startup load has finished, so once the server is live the
            # repository index and the log already say which models failed.
            if ready or self._get("/v2/health/live") == 200:
                failures = self._load_failures()
                if failures is not None:
                    if failures and self.fail_on_model_error:
                        raise ModelLoadError(failures, self.log())
                    if ready or not self.fail_on_model_error:
                        self._check_not_empty()
                        self._wait_for_port(self.metrics_port)  # metrics come up just after HTTP
                        return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"server not ready after {self.startup_timeout:.0f}s; last log lines:\n{self.log(40)}",
                    self.log(),
                )
            time.sleep(0.05)

    def _check_not_empty(self) -> None:
        if self.model_control_mode == "none" and not self.repository_index():
            raise InvalidRepositoryError(
                f"no models found in {self.model_repository}: expected <model>/config.pbtxt folders",
                self.log(),
            )

    def _wait_for_port(self, port: int, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.is_running():
            try:
                socket.create_connection((self._client_host.strip("[]"), port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)

    def _wait_for_log(self, marker: str, timeout: float = 5.0) -> None:
        """Wait until the reader thread has consumed the log up to ``marker``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.is_running():
            with self._log_lock:
                if any(marker in line for line in reversed(self._log)):
                    return
            time.sleep(0.02)

    def _get(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except (OSError, ValueError):
            return None

    def repository_index(self) -> list[dict]:
        """Triton's repository index: per model its ``name``, ``version``, ``state`` and ``reason``."""
        req = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return list(json.loads(r.read()))

    def _load_failures(self) -> dict[str, str] | None:
        """Models that failed to load, with Triton's reason; None while some are still loading."""
        try:
            index = self.repository_index()
        except (OSError, ValueError):
            return None
        if any(entry.get("state") in ("LOADING", "UNLOADING") for entry in index):
            return None
        failures = {
            entry["name"]: _short_reason(entry["reason"])
            for entry in index
            if entry.get("state") == "UNAVAILABLE" and entry.get("reason")
        }
        # A model whose config cannot be read never reaches the index's states: only the log names it.
        self._wait_for_log("Started HTTPService")
        for name, reason in _log_failures(self.log()).items():
            failures.setdefault(name, reason)
        return failures

    def _raise_for_exit(self) -> None:
        assert self._process is not None
        code = self._process.returncode
        _kill_group(self._process.pid)  # stubs keep the log pipe open until they go
        if self._thread is not None:
            self._thread.join(timeout=5)
        log = self.log()
        in_use = _PORT_IN_USE.search(log)
        if in_use:
            raise PortInUseError(
                f"tritonserver could not bind {in_use.group(1) or 'a port'}: already in use", log
            )
        failures = _log_failures(log)
        if failures:
            raise ModelLoadError(failures, log)
        tail = "\n".join(log.splitlines()[-30:])
        if re.search(r"model[ _]repository", log, re.IGNORECASE) and "failed" in log:
            raise InvalidRepositoryError(
                f"tritonserver rejected model repository {self.model_repository}; last log lines:\n{tail}",
                log,
            )
        raise ServerError(
            f"tritonserver exited with code {code} during startup; last log lines:\n{tail}", log
        )

    def stop(self) -> None:
        """Stop gracefully (SIGTERM, wait ``stop_timeout``), then kill the whole process group.

        When Triton's exit timeout runs out it exits without unloading models, leaving the Python backend's
        shared-memory regions in /dev/shm; they are removed here once every process of the group is gone.
        """
        with self._stop_lock:
            process = self._process
            if process is None:
                return
            _LIVE.discard(self)
            regions = _shm_regions(process.pid)
            if process.poll() is None:
                try:
                    process.terminate()
                    process.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(process.pid)  # Python stubs and anything else left in the server's group
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


def _shm_regions(pgid: int) -> set[str]:
    """Shared-memory region names the group's Python backend stubs were started with."""
    regions: set[str] = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.getpgid(int(proc.name)) != pgid:
                continue
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        regions |= {a.decode() for a in args if b"_shm_region_" in a and b"/" not in a}
    return regions


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _short_reason(reason: str) -> str:
    """Triton's reason without the Python traceback the stub appends ("\n\nAt:\n  file(line): ...")."""
    return reason.split("\n\nAt:")[0].strip()


def _log_failures(log: str) -> dict[str, str]:
    failures: dict[str, str] = {}
    parse_error = ""
    for line in log.splitlines():
        if line.startswith("[libprotobuf ERROR") and "] " in line:
            parse_error = line.split("] ", 1)[1].strip()  # says where a config.pbtxt is malformed
        m = _FAILED_LOAD.search(line) or _POLL_FAILED.search(line) or _TABLE_ROW.search(line.strip())
        if m:
            reason = _short_reason(m.group("reason"))
            if "text proto" in reason and parse_error:
                reason, parse_error = f"{reason}: {parse_error}", ""
            failures.setdefault(m.group("name").strip(), reason)
    return failures


def _has_gpu() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))
