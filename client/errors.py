"""Typed exceptions of the client SDK: one base class, one subclass per way a request can fail.

Only :class:`ServerUnavailable`, :class:`Timeout` and :class:`Overloaded` are retried; bad input is never
retried.
"""

from __future__ import annotations


class FitguardError(Exception):
    """Base class of every error the client raises."""


class ServerUnavailable(FitguardError):
    """Nothing answers at the URL, or the connection dropped (retried with back-off)."""


class Timeout(FitguardError):
    """The server did not answer within the client's timeout (retried with back-off)."""


class Overloaded(FitguardError):
    """The server refused the request to protect its latency: a model's queue was full, or the request
    waited in it longer than the queue timeout. Retried with jittered back-off within the deadline."""


class ModelNotReady(FitguardError):
    """The server answers but the model is unknown, still loading or failed to load."""


class ContractMismatch(FitguardError):
    """The served model's inputs/outputs differ from the fitguard tensor contract."""


class ServerError(FitguardError):
    """The server failed the request for a reason that is neither the input nor availability."""


class BadImage(FitguardError):
    """The image cannot be judged: unreadable locally, or refused by the server.

    Attributes:
        reason: why, in the words of the server (or of the client for local read errors).
        source: the file name or other label of the input, when known.
    """

    def __init__(self, reason: str, source: str | None = None) -> None:
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)

    def __reduce__(self):  # keep pickling (multiprocessing, concurrent.futures) working
        return (type(self), (self.reason, self.source))


RETRYABLE: tuple[type[FitguardError], ...] = (ServerUnavailable, Timeout, Overloaded)
