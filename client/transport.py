"""Transports: the thin layer over ``tritonclient`` (gRPC or HTTP) that speaks the fitguard contract.

A transport sends one batch of encoded images as a ``[B, 1]`` BYTES tensor and returns the output
tensors; it maps every ``tritonclient`` / socket failure onto the typed errors of :mod:`.errors`.
Retries, batching and concurrency live in the client, so a mock transport exercises all of them.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl as _ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from fitguard import contract

from .errors import (
    BadImage,
    FitguardError,
    ModelNotReady,
    Overloaded,
    ServerError,
    ServerUnavailable,
    Timeout,
)

Protocol_ = Literal["grpc", "http"]
OUTPUT_NAMES: tuple[str, ...] = tuple(t.name for t in contract.ENSEMBLE_OUTPUTS)


def output_names(class_count: int) -> tuple[str, ...]:
    """The verdict's outputs, and PROBS as the top ``class_count`` "score:index:label" strings when asked
    (Triton's classification extension, with the server's labels file)."""
    return (*OUTPUT_NAMES, contract.PROBS) if class_count > 0 else OUTPUT_NAMES


def labelled(name: str, class_count: int) -> dict[str, int]:
    """The requested-output options of ``name``: ``class_count`` for PROBS."""
    return {"class_count": class_count} if name == contract.PROBS and class_count > 0 else {}


_ENSEMBLE_PREFIX = re.compile(r"^in ensemble '[^']*', ")  # Triton's wrapping; the reason follows
# Triton's words for a model it knows but has no loaded version of: one a client connected to (so it was
# served) is being unloaded and loaded again, which a server healing a step does (fitguard.serve.supervisor).
_RELOADING = "has no available versions"


@dataclass(frozen=True)
class Connection:
    """Everything needed to open a transport; shared by the sync and asyncio clients."""

    url: str
    protocol: Protocol_ = "grpc"
    timeout: float = 30.0
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    ssl_context: _ssl.SSLContext | None = None
    insecure: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {self.protocol!r}")
        for prefix in ("http://", "https://", "grpc://"):
            if self.url.startswith(prefix):  # tritonclient wants host:port
                object.__setattr__(self, "url", self.url[len(prefix) :].rstrip("/"))
                if prefix == "https://":
                    object.__setattr__(self, "ssl", True)
        if self.ssl_context is not None and self.protocol == "grpc":
            raise ValueError("ssl_context applies to HTTP; for gRPC pass root_certificates/private_key/...")

    def http_ssl_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.root_certificates:
            options["ca_certs"] = self.root_certificates
        if self.certificate_chain:
            options["certfile"] = self.certificate_chain
        if self.private_key:
            options["keyfile"] = self.private_key
        return options

    def http_ssl_context(self) -> _ssl.SSLContext | None:
        """The context for aiohttp: the caller's, or one built from the certificate files."""
        if not self.ssl:
            return None
        if self.ssl_context is not None:
            return self.ssl_context
        ctx = _ssl.create_default_context(cafile=self.root_certificates)
        if self.certificate_chain:
            ctx.load_cert_chain(self.certificate_chain, self.private_key)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = _ssl.CERT_NONE
        return ctx


class Transport(Protocol):
    """What the synchronous client needs from a transport (see :class:`GrpcTransport`)."""

    thread_safe: bool

    def model_ready(self, model: str) -> bool: ...
    def model_metadata(self, model: str) -> dict[str, Any]: ...
    def model_config(self, model: str) -> dict[str, Any]: ...
    def models(self) -> list[str]: ...
    def infer(
        self, model: str, payloads: list[bytes], class_count: int = 0
    ) -> tuple[dict[str, np.ndarray], str]: ...
    def close(self) -> None: ...


def image_tensor(payloads: list[bytes]) -> np.ndarray:
    """The ``[B, 1]`` BYTES tensor of a batch."""
    arr = np.empty((len(payloads), 1), dtype=object)
    arr[:, 0] = payloads
    return arr


def map_error(exc: BaseException, conn: Connection, what: str) -> FitguardError:
    """Map a tritonclient / socket / aiohttp error onto the typed errors."""
    if isinstance(exc, FitguardError):
        return exc
    where = f"{conn.protocol} {conn.url}"
    if (
        isinstance(exc, TimeoutError | socket.timeout | asyncio.TimeoutError)
        or type(exc).__name__ == "Timeout"
    ):
        return Timeout(f"{what}: no answer from {where} within {conn.timeout:g} s")
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        message = str(exc.message() or exc)
        code = status.removeprefix("StatusCode.")
        lowered = message.lower()
        if contract.is_overload(message):
            return Overloaded(
                f"{what}: server at {where} is overloaded ({_ENSEMBLE_PREFIX.sub('', message)})"
            )
        if contract.is_step_down(message):  # the server heals itself (fitguard.health): retry
            return ServerUnavailable(f"{what}: a step of the server at {where} is down ({message})")
        if code in ("UNAVAILABLE", "503", "502", "504") or "failed to connect" in lowered:
            return ServerUnavailable(f"{what}: server at {where} is unavailable ({message})")
        if code == "DEADLINE_EXCEEDED" or "deadline exceeded" in lowered or "timed out" in lowered:
            return Timeout(f"{what}: no answer from {where} within {conn.timeout:g} s ({message})")
        if _RELOADING in lowered:  # a model that was served is being loaded again (a step healing)
            return ServerUnavailable(f"{what}: the model at {where} is reloading ({message})")
        if "unknown model" in lowered or "is not ready" in lowered or code == "NOT_FOUND":
            return ModelNotReady(f"{what}: {message} (server {where})")
        if code in ("INVALID_ARGUMENT", "400"):
            return BadImage(_ENSEMBLE_PREFIX.sub("", message))
        return ServerError(f"{what}: server {where} failed the request: [{status}] {message}")
    if isinstance(exc, ConnectionError | OSError) or _is_aiohttp_connection_error(exc):
        return ServerUnavailable(f"{what}: cannot reach {where} ({type(exc).__name__}: {exc})")
    if type(exc).__module__.startswith(("geventhttpclient", "http.client")):
        return ServerUnavailable(f"{what}: connection to {where} failed ({type(exc).__name__}: {exc})")
    return ServerError(f"{what}: unexpected {type(exc).__name__} from {where}: {exc}")


def _is_aiohttp_connection_error(exc: BaseException) -> bool:
    try:
        import aiohttp
    except ImportError:
        return False
    return isinstance(exc, aiohttp.ClientConnectionError)


def metadata_from_grpc(meta: Mapping[str, Any]) -> dict[str, Any]:
    """gRPC's JSON form writes int64 as strings; normalise to the HTTP form."""
    out = dict(meta)
    for key in ("inputs", "outputs"):
        out[key] = [{**t, "shape": [int(d) for d in t.get("shape", [])]} for t in meta.get(key, [])]
    return out


def config_from_grpc(config: Mapping[str, Any]) -> dict[str, Any]:
    cfg = dict(config.get("config", config))
    cfg["max_batch_size"] = int(cfg.get("max_batch_size", 0) or 0)
    return cfg


def _model_version(response: Any) -> str:
    version = response.get("model_version") if isinstance(response, dict) else response.model_version
    return str(version or "")


_MAX_GRPC_MESSAGE = 2**31 - 1


def grpc_channel_args() -> list[tuple[str, int]]:
    """tritonclient's default channel options plus a short reconnect back-off.

    gRPC's default back-off grows to seconds: after a server restart the same client then kept failing
    for seconds although the server was up (docs/client.md has the figures).
    """
    from tritonclient.grpc import KeepAliveOptions

    ka = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", _MAX_GRPC_MESSAGE),
        ("grpc.max_receive_message_length", _MAX_GRPC_MESSAGE),
        ("grpc.keepalive_time_ms", ka.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", ka.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", ka.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", ka.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def grpc_client_options(conn: Connection) -> dict[str, Any]:
    """Keyword arguments of tritonclient's gRPC clients (sync and asyncio take the same)."""
    return {
        "ssl": conn.ssl,
        "root_certificates": conn.root_certificates,
        "private_key": conn.private_key,
        "certificate_chain": conn.certificate_chain,
        "channel_args": grpc_channel_args(),
    }


class GrpcTransport:
    """Synchronous gRPC transport (one channel, shared by all threads: tritonclient's is thread-safe)."""

    thread_safe = True

    def __init__(self, conn: Connection) -> None:
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.conn = conn
        try:
            self._client = grpcclient.InferenceServerClient(conn.url, **grpc_client_options(conn))
        except Exception as exc:
            raise map_error(exc, conn, "connect") from exc
        self._headers = dict(conn.headers) or None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, headers=self._headers, client_timeout=self.conn.timeout, **kwargs)
        except Exception as exc:
            raise map_error(exc, self.conn, what) from exc

    def model_ready(self, model: str) -> bool:
        return bool(self._call("model ready", self._client.is_model_ready, model))

    def model_metadata(self, model: str) -> dict[str, Any]:
        return metadata_from_grpc(
            self._call("model metadata", self._client.get_model_metadata, model, as_json=True)
        )

    def model_config(self, model: str) -> dict[str, Any]:
        return config_from_grpc(
            self._call("model config", self._client.get_model_config, model, as_json=True)
        )

    def models(self) -> list[str]:
        index = self._call("repository index", self._client.get_model_repository_index, as_json=True)
        return sorted(m["name"] for m in index.get("models", []) if m.get("state") == "READY")

    def infer(
        self, model: str, payloads: list[bytes], class_count: int = 0
    ) -> tuple[dict[str, np.ndarray], str]:
        inp = self._grpc.InferInput(contract.IMAGE, [len(payloads), 1], "BYTES")
        inp.set_data_from_numpy(image_tensor(payloads))
        names = output_names(class_count)
        outputs = [self._grpc.InferRequestedOutput(n, **labelled(n, class_count)) for n in names]
        result = self._call("infer", self._client.infer, model, [inp], outputs=outputs)
        return {n: result.as_numpy(n) for n in names}, _model_version(result.get_response())

    def close(self) -> None:
        self._client.close()


class HttpTransport:
    """Synchronous HTTP transport with the binary tensor extension for inputs and outputs.

    tritonclient's HTTP client (geventhttpclient) is not thread-safe, so the client keeps one per
    worker thread.
    """

    thread_safe = False

    def __init__(self, conn: Connection) -> None:
        import tritonclient.http as httpclient

        self._http = httpclient
        self.conn = conn
        factory = None
        if conn.ssl_context is not None:
            context = conn.ssl_context
            factory = lambda *_a, **_k: context  # noqa: E731
        try:
            self._client = httpclient.InferenceServerClient(
                conn.url,
                concurrency=1,
                connection_timeout=conn.timeout,
                network_timeout=conn.timeout,
                ssl=conn.ssl,
                ssl_options=conn.http_ssl_options() or None,
                ssl_context_factory=factory,
                insecure=conn.insecure,
            )
        except Exception as exc:
            raise map_error(exc, conn, "connect") from exc
        self._headers = dict(conn.headers) or None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, headers=self._headers, **kwargs)
        except Exception as exc:
            raise map_error(exc, self.conn, what) from exc

    def model_ready(self, model: str) -> bool:
        return bool(self._call("model ready", self._client.is_model_ready, model))

    def model_metadata(self, model: str) -> dict[str, Any]:
        return self._call("model metadata", self._client.get_model_metadata, model)

    def model_config(self, model: str) -> dict[str, Any]:
        return self._call("model config", self._client.get_model_config, model)

    def models(self) -> list[str]:
        index = self._call("repository index", self._client.get_model_repository_index)
        return sorted(m["name"] for m in index if m.get("state") == "READY")

    def infer(
        self, model: str, payloads: list[bytes], class_count: int = 0
    ) -> tuple[dict[str, np.ndarray], str]:
        inp = self._http.InferInput(contract.IMAGE, [len(payloads), 1], "BYTES")
        inp.set_data_from_numpy(image_tensor(payloads), binary_data=True)
        names = output_names(class_count)
        outputs = [
            self._http.InferRequestedOutput(n, binary_data=True, **labelled(n, class_count)) for n in names
        ]
        result = self._call("infer", self._client.infer, model, [inp], outputs=outputs)
        return {n: result.as_numpy(n) for n in names}, _model_version(result.get_response())

    def close(self) -> None:
        self._client.close()


def open_transport(conn: Connection) -> Transport:
    return GrpcTransport(conn) if conn.protocol == "grpc" else HttpTransport(conn)
