"""What :class:`~fitguard.client.FitClient` and :class:`~fitguard.client.AsyncFitClient` share: where and how
to connect, which model, how to retry. Each client adds only how it holds its transports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from fitguard import contract

from .retry import RetryPolicy
from .transport import Connection, Protocol_

T = TypeVar("T")
# Retries of an unavailable server, at most HEALING_BACKOFF apart: they span a restart that heals it
# (docs/operations.md, section 6) until retry_deadline, and find the server back within a second.
HEALING_RETRIES = 20
DEFAULT_RETRIES = 3
HEALING_BACKOFF = 1.0


class ClientBase(Generic[T]):
    """Connection settings, the model's name and the retry policy, from the clients' common arguments.

    Args:
        url: ``host:port`` of the server (gRPC port 8001 or HTTP port 8000 by default).
        protocol: ``"grpc"`` (default) or ``"http"`` (binary tensor extension).
        model: the ensemble's name in the model repository.
        timeout: seconds one request may take (connection and answer).
        retries: retries after a failed attempt, for unavailable or overloaded servers and timeouts only.
            ``None`` (the default) is :data:`DEFAULT_RETRIES`, and an unavailable server (one healing a
            step) is retried until the deadline, at most 1 s apart; a number given is the most retries of
            any failure, so a caller who asks for 2 fails fast.
        retry_deadline: total seconds spent retrying one request before giving up.
        ssl, root_certificates, private_key, certificate_chain: TLS, as tritonclient takes them
            (certificate file paths); ``ssl_context`` (HTTP only) and ``insecure`` (HTTP: skip
            hostname verification).
        headers: extra headers (HTTP) or metadata (gRPC) on every request, e.g. authorisation.
        retry_policy: full control over back-off (overrides ``retries`` / ``retry_deadline``).
        transport_factory: replaces the tritonclient transport (tests, custom transports).
    """

    def __init__(
        self,
        url: str = "localhost:8001",
        protocol: Protocol_ = "grpc",
        model: str = contract.ENSEMBLE,
        *,
        timeout: float = 30.0,
        retries: int | None = None,
        retry_deadline: float = 10.0,
        ssl: bool = False,
        root_certificates: str | None = None,
        private_key: str | None = None,
        certificate_chain: str | None = None,
        ssl_context: Any = None,
        insecure: bool = False,
        headers: dict[str, str] | None = None,
        retry_policy: RetryPolicy | None = None,
        transport_factory: Callable[[Connection], T] | None = None,
    ) -> None:
        self.connection = Connection(
            url=url,
            protocol=protocol,
            timeout=timeout,
            ssl=ssl,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            ssl_context=ssl_context,
            insecure=insecure,
            headers=dict(headers or {}),
        )
        self.model = model
        self.retry_policy = retry_policy or RetryPolicy(
            retries=DEFAULT_RETRIES if retries is None else retries,
            deadline=retry_deadline,
            max_backoff=HEALING_BACKOFF,
            unavailable_retries=HEALING_RETRIES if retries is None else 0,
        )
        self._open_transports(transport_factory)

    def __repr__(self) -> str:
        c = self.connection
        return f"{type(self).__name__}({c.url!r}, protocol={c.protocol!r}, model={self.model!r})"

    def _open_transports(self, factory: Callable[[Connection], T] | None) -> None:
        """Set up how this client holds its transports (``factory`` None: tritonclient's)."""
        raise NotImplementedError
