"""The deep health check: one canary image through the whole ensemble, every step included.

Triton's ``/v2/health/ready`` and a model's ready status stay true when a Python step's stub process has
died (Triton 2.51 neither restarts nor reports it): every request then fails with ``Stub process '...' is
not healthy``. The canary asks the question that matters instead: does an image get its verdict?

It sends a tiny built-in PNG over HTTP with the binary tensor extension (standard library only, so the check
runs in the serving image, which has no client libraries) under the request id
:data:`fitguard.contract.CANARY_REQUEST_ID`; Triton hands that id to every step, and the monitor step does not
count such requests in the verdict metrics.
"""

from __future__ import annotations

import http.client
import json
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from functools import cache

from fitguard import contract

# What a failed canary says about the server (Probe.kind).
OK = "ok"
BUSY = "busy"  # refused as overload: the server answers, it is only full
STEP_DOWN = "step_down"  # a step's process died: Triton answers "Stub process ... is not healthy"
HUNG = "hung"  # no answer within the canary's timeout: a step stopped answering
UNREACHABLE = "unreachable"  # nothing listens (the server is down or restarting)
ERROR = "error"  # any other refusal (a model not loaded, a wrong repository)
KINDS: tuple[str, ...] = (OK, BUSY, STEP_DOWN, HUNG, UNREACHABLE, ERROR)
# The failures a restart of the broken server heals.
HEALABLE: tuple[str, ...] = (STEP_DOWN, HUNG)

CANARY_SIDE = 32


def _png(width: int, height: int, rows: list[bytes]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    raw = b"".join(b"\x00" + row for row in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@cache
def canary_image() -> bytes:
    """A 32x32 RGB gradient as PNG bytes: decodes everywhere, costs the least a step can do."""
    side = CANARY_SIDE
    rows = [bytes(v for x in range(side) for v in (8 * x, 8 * y, 128)) for y in range(side)]
    return _png(side, side, rows)


@dataclass(frozen=True)
class Probe:
    """One canary's outcome: ``kind`` (one of :data:`KINDS`), the server's words, the seconds it took."""

    kind: str
    detail: str
    seconds: float

    @property
    def healthy(self) -> bool:
        """The server answers: a verdict, or a refusal for overload (busy is not broken)."""
        return self.kind in (OK, BUSY)

    def line(self, url: str) -> str:
        state = "healthy" if self.healthy else "unhealthy"
        return f"{state} ({self.kind}, {self.seconds * 1000:.0f} ms) {url}: {self.detail}"


def classify_failure(status: int, message: str) -> str:
    """The kind of a refused canary, from the HTTP status and the server's message."""
    if contract.is_overload(message):
        return BUSY
    if contract.is_step_down(message):
        return STEP_DOWN
    return ERROR


def _request_body(image: bytes) -> tuple[bytes, int]:
    header = {
        "id": contract.CANARY_REQUEST_ID,
        "inputs": [
            {
                "name": contract.IMAGE,
                "shape": [1, 1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(image) + 4},
            }
        ],
        "outputs": [
            {"name": t.name, "parameters": {"binary_data": False}} for t in contract.ENSEMBLE_OUTPUTS
        ],
    }
    head = json.dumps(header).encode()
    return head + struct.pack("<I", len(image)) + image, len(head)


def _host_port(url: str) -> tuple[str, int]:
    url = url.removeprefix("http://").rstrip("/")
    host, _, port = url.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {url!r}")
    return host.strip("[]"), int(port)


def canary(url: str, *, timeout: float = 3.0, model: str = contract.ENSEMBLE) -> Probe:
    """Send the canary to ``model`` at ``url`` (``host:port`` of Triton's HTTP endpoint); never raises for a
    server's failure, only for a malformed ``url``."""
    host, port = _host_port(url)
    body, head_len = _request_body(canary_image())
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(
            "POST",
            f"/v2/models/{model}/infer",
            body=body,
            headers={
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(head_len),
            },
        )
        response = conn.getresponse()
        payload = response.read()
    except TimeoutError:
        return Probe(HUNG, f"no answer within {timeout:g} s", time.monotonic() - started)
    except (OSError, http.client.HTTPException) as exc:
        return Probe(UNREACHABLE, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
    finally:
        conn.close()
    seconds = time.monotonic() - started
    try:
        answer = json.loads(payload)
    except ValueError:
        answer = {"error": payload[:200].decode("utf-8", "replace")}
    if response.status != 200:
        message = str(answer.get("error", answer))
        return Probe(classify_failure(response.status, message), f"[{response.status}] {message}", seconds)
    names = {o.get("name") for o in answer.get("outputs", [])}
    missing = [t.name for t in contract.ENSEMBLE_OUTPUTS if t.name not in names]
    if missing:
        return Probe(ERROR, f"answer lacks {', '.join(missing)}", seconds)
    return Probe(OK, "verdict returned", seconds)


CANARIES = "fitguard_canary_total"
RESTARTS = "fitguard_restarts_total"
HEALTHY = "fitguard_healthy"
CANARY_SECONDS = "fitguard_canary_seconds"


class HealthMetrics:
    """Canary outcomes and restarts, in Prometheus' text format (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.canaries = dict.fromkeys(KINDS, 0)
        self.restarts = 0
        self.last: Probe | None = None

    def observe(self, probe: Probe) -> None:
        with self._lock:
            self.canaries[probe.kind] += 1
            self.last = probe

    def restarted(self) -> None:
        with self._lock:
            self.restarts += 1

    def failures(self) -> int:
        with self._lock:
            return sum(n for kind, n in self.canaries.items() if kind not in (OK, BUSY))

    def render(self) -> str:
        with self._lock:
            last, counts, restarts = self.last, dict(self.canaries), self.restarts
        lines = [
            f"# HELP {CANARIES} Canary requests through the whole ensemble, by outcome.",
            f"# TYPE {CANARIES} counter",
            *(f'{CANARIES}{{result="{kind}"}} {n}' for kind, n in counts.items()),
            f"# HELP {RESTARTS} Restarts of the server after a failed canary (a step died or hung).",
            f"# TYPE {RESTARTS} counter",
            f"{RESTARTS} {restarts}",
            f"# HELP {HEALTHY} 1 when the last canary got its verdict (or an overload refusal), else 0.",
            f"# TYPE {HEALTHY} gauge",
            f"{HEALTHY} {int(last is not None and last.healthy)}",
            f"# HELP {CANARY_SECONDS} Duration of the last canary.",
            f"# TYPE {CANARY_SECONDS} gauge",
            f"{CANARY_SECONDS} {last.seconds if last else 0.0:.6f}",
        ]
        return "\n".join(lines) + "\n"
