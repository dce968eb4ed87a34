"""Ports and process groups of the embedded server: free ports, a child that dies with its parent, and a
clean kill of everything the server started."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option Triton's servers use, so a port in TIME_WAIT is not reported as taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_port(host: str, port: int, alive: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``port`` accepts a connection, for at most ``timeout`` s and while ``alive()``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and alive():
        try:
            socket.create_connection((host.strip("[]"), port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    # Runs in the child between fork and exec. The kernel sends SIGTERM when the *thread* that forked us
    # exits, which is why the server is spawned from a thread that lives exactly as long as the server.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _group_commands(pgid: int) -> Iterator[tuple[int, list[bytes]]]:
    """(pid, command-line arguments) of every process of the group that can still be read."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.getpgid(int(proc.name)) != pgid:
                continue
            yield int(proc.name), (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue


def shm_regions(pgid: int) -> set[str]:
    """Shared-memory region names the group's Python backend stubs were started with."""
    regions: set[str] = set()
    for _, args in _group_commands(pgid):
        regions |= {a.decode() for a in args if b"_shm_region_" in a and b"/" not in a}
    return regions


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


STUB = b"triton_python_backend_stub"


def stub_processes(pgid: int) -> dict[str, int]:
    """The group's Python backend stubs: model instance name (``preprocess_0_0``) -> pid."""
    stubs: dict[str, int] = {}
    for pid, args in _group_commands(pgid):
        if args and args[0].endswith(STUB) and len(args) > 8:
            stubs[args[8].decode()] = pid
    return stubs


def process_state(pid: int) -> str | None:
    """The kernel's state letter of ``pid`` (R, S, D, T for stopped, Z for a zombie), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]
