"""Retry with jittered exponential back-off, for unavailable or overloaded servers and timeouts only, within
a total budget."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from .errors import RETRYABLE, ServerUnavailable

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before giving up.

    Attributes:
        retries: retries after the first attempt (0 disables retrying).
        backoff: first wait in seconds; each next wait doubles, up to ``max_backoff``.
        max_backoff: longest single wait.
        deadline: total seconds spent retrying (waits plus attempts) after which the last error is
            raised even if retries remain, so a dead server fails within a known time.
        jitter: waits are drawn from [(1 - jitter) * w, w] so many clients do not retry in lock-step.
        unavailable_retries: retries of a request the server was unavailable for (nothing listening, a
            step's process down), when more than ``retries``: a server that restarts itself to heal refuses
            connections for a few seconds, and the deadline still bounds the whole.
    """

    retries: int = 3
    backoff: float = 0.2
    max_backoff: float = 2.0
    deadline: float = 10.0
    jitter: float = 0.5
    unavailable_retries: int = 0

    def __post_init__(self) -> None:
        if (
            min(self.retries, self.unavailable_retries) < 0
            or self.backoff < 0
            or self.deadline < 0
            or not 0 <= self.jitter <= 1
        ):
            raise ValueError(f"invalid retry policy: {self}")

    def waits(self) -> Iterator[float]:
        """The nominal wait before each retry (without jitter)."""
        for i in range(self.retries):
            yield min(self.backoff * 2**i, self.max_backoff)

    def _plan(self, start: float, now: float, nominal: float) -> float | None:
        wait = nominal * (1 - self.jitter * random.random())
        return None if now - start + wait > self.deadline else wait

    def wait_before(self, retry: int, error: BaseException, start: float, now: float) -> float | None:
        """The jittered wait before retry number ``retry`` (1-based) after ``error``; None gives up."""
        allowed = max(self.retries, self.unavailable_retries if isinstance(error, ServerUnavailable) else 0)
        if retry > allowed:
            return None
        return self._plan(start, now, min(self.backoff * 2 ** (retry - 1), self.max_backoff))


def call(fn: Callable[[], T], policy: RetryPolicy, sleep: Callable[[float], None] | None = None) -> T:
    """Call ``fn``, retrying on :data:`RETRYABLE` errors per ``policy``."""
    start, retry = time.monotonic(), 0
    while True:
        try:
            return fn()
        except RETRYABLE as exc:
            retry += 1
            wait = policy.wait_before(retry, exc, start, time.monotonic())
            if wait is None:
                raise
            (sleep or time.sleep)(wait)


async def acall(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> T:
    """Async twin of :func:`call`."""
    start, retry = time.monotonic(), 0
    while True:
        try:
            return await fn()
        except RETRYABLE as exc:
            retry += 1
            wait = policy.wait_before(retry, exc, start, time.monotonic())
            if wait is None:
                raise
            await (sleep or asyncio.sleep)(wait)
