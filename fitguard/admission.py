"""Admission control for the ensemble: at most ``limit`` images in flight between the entry and the last step.

Triton 2.51 can bound only the entry step's queue in size (a later step that refuses for a full queue
leaves the ensemble request unanswered), so a bottleneck behind the entry (the classifier or the quality
step) lets its queue grow until requests time out there, seconds after they arrived. Admission control
counts what the *whole* ensemble holds instead: the entry step admits an image only while fewer than ``limit``
are in flight and refuses the rest at once; the last step releases them. By Little's law the admitted
images then wait about ``limit / throughput``, whatever the demand.

The count lives in a small file shared by the steps' Python stubs (separate processes), under an
exclusive ``flock``. It holds one admission time per image in flight; a release removes the oldest ones
(the pipeline is first in, first out at the scale that matters here). An image that never reaches the
last step (a later queue's timeout, a crash) keeps its slot only for ``lease_s``: then it expires, so a
lost request never leaks capacity for good.

Standard library only: the preprocess and monitor backends import it in installs without torch.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from fitguard.contract import ADMISSION_REFUSED

# The marker every refusal carries; the client SDK and the load generators classify it as overload.
_STAMP = struct.Struct("d")
_PREFIX = "fitguard-admission-"


def counter_path(repository: str | os.PathLike[str], *, server_pid: int | None = None) -> Path:
    """The counter file of the server ``server_pid`` (default: this stub's parent, the tritonserver
    process) serving ``repository``: shared by that server's steps, distinct from any other server's."""
    pid = os.getppid() if server_pid is None else server_pid
    key = hashlib.sha256(str(Path(repository).resolve()).encode()).hexdigest()[:16]
    shm = Path("/dev/shm")  # memory-backed where there is one (containers have it, even read-only ones)
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return base / f"{_PREFIX}{pid}-{key}"


def sweep_stale(folder: Path) -> None:
    """Remove the counter files of servers that no longer run (the files outlive them; a model reload must
    not remove a live one, so nothing is removed at unload)."""
    for path in folder.glob(f"{_PREFIX}*"):
        pid = path.name.removeprefix(_PREFIX).partition("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:  # another user's live server
            continue


class AdmissionControl:
    """The shared in-flight count of one served ensemble.

    Args:
        path: the counter file (see :func:`counter_path`); created if missing.
        limit: images allowed in flight at once (at least 1).
        lease_s: seconds after which an admitted image that was never released stops counting.
        clock: a monotonic clock shared by the processes (``time.monotonic`` is system-wide on Linux).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        limit: int,
        lease_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or lease_s <= 0:
            raise ValueError(f"admission needs limit >= 1 and lease_s > 0, got {limit}, {lease_s}")
        self.path = Path(path)
        self.limit = limit
        self.lease_s = lease_s
        self._clock = clock
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _read(self, now: float) -> list[float]:
        data = os.pread(self._fd, 1 << 20, 0)
        data = data[: len(data) - len(data) % _STAMP.size]
        return [s for (s,) in _STAMP.iter_unpack(data) if now - s < self.lease_s]

    def _write(self, stamps: list[float]) -> None:
        data = b"".join(_STAMP.pack(s) for s in stamps)
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    @contextmanager
    def _locked(self, kind: int = fcntl.LOCK_EX) -> Iterator[float]:
        fcntl.flock(self._fd, kind)
        try:
            yield self._clock()
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def admit(self, images: int = 1) -> bool:
        """Take ``images`` slots if they fit; False (nothing taken) when the ensemble is full.

        A request larger than the limit is admitted alone, when nothing else is in flight, so a client's
        big batch is never refused for ever.
        """
        return self.admit_batch([images])[0]

    def admit_batch(self, sizes: Sequence[int]) -> list[bool]:
        """:meth:`admit` for each request of a batch in turn, under one lock (refusing stays cheap)."""
        with self._locked() as now:
            stamps = self._read(now)
            admitted = []
            for images in sizes:
                fits = not stamps or len(stamps) + images <= self.limit
                admitted.append(fits)
                if fits:
                    stamps.extend([now] * images)
            self._write(stamps)  # sorted still: the expired were the oldest, the new are the newest
            return admitted

    def release(self, images: int = 1) -> None:
        """Give back ``images`` slots, the oldest first."""
        with self._locked() as now:
            self._write(self._read(now)[images:])

    def in_flight(self) -> int:
        with self._locked(fcntl.LOCK_SH) as now:
            return len(self._read(now))

    def refusal(self) -> str:
        """The message a refused request gets (it carries :data:`fitguard.contract.ADMISSION_REFUSED`)."""
        return f"overloaded: {ADMISSION_REFUSED} ({self.limit} images in flight); retry with back-off"


def open_admission(
    model_directory: str | os.PathLike[str], *, limit: int, lease_ms: int
) -> AdmissionControl | None:
    """The admission control a served step opens (``model_directory``: the Python backend's
    ``args["model_repository"]``, one model's folder); None when admission is off (``limit`` 0)."""
    if limit <= 0:
        return None
    path = counter_path(Path(model_directory).parent)
    sweep_stale(path.parent)
    return AdmissionControl(path, limit=limit, lease_s=lease_ms / 1000)
