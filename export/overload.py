"""Queue policy for every served model: a bounded queue, a default timeout, reject on overflow.

Without one a burst beyond capacity queues without limit and every client's latency grows together. With
it, Triton refuses a request at once when the entry step's queue is full, and drops one that waited longer
than the timeout in any step's queue; the client SDK reports both as :class:`fitguard.client.Overloaded`,
which it retries with jittered back-off within its deadline. Set with ``fitguard export --max-queue-size N
--queue-timeout-ms T``.

Only the entry step (preprocess) has a bounded size: in Triton 2.51 an ensemble request whose later step
is refused for a full queue never gets an answer (fixed upstream in triton-inference-server/core#466,
after 2.51); refusing at the entry, before the ensemble fans out, answers every request. The later steps
are bounded by the timeout instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Chosen from the overload measurements in docs/operations.md.
DEFAULT_MAX_QUEUE_SIZE = 16
DEFAULT_QUEUE_TIMEOUT_MS = 1000


@dataclass(frozen=True)
class QueuePolicy:
    """``max_queue_size`` requests per model queue (0: unbounded); ``timeout_ms`` in the queue (0: none)."""

    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    timeout_ms: int = DEFAULT_QUEUE_TIMEOUT_MS

    def __post_init__(self) -> None:
        if self.max_queue_size < 0 or self.timeout_ms < 0:
            raise ValueError(f"queue size and timeout must be >= 0, got {self}")

    def to_dict(self) -> dict[str, int]:
        return {"max_queue_size": self.max_queue_size, "queue_timeout_ms": self.timeout_ms}


def apply_queue_policy(config: Any, policy: QueuePolicy, *, entry: bool) -> None:
    """Set the dynamic batcher's default queue policy of a ``ModelConfig`` (ensembles have no queue).

    ``entry``: the ensemble's first step, the only one whose queue size is bounded (see the module doc).
    """
    if not config.HasField("dynamic_batching"):
        return
    from tritonclient.grpc import model_config_pb2 as mc

    queue = config.dynamic_batching.default_queue_policy
    queue.max_queue_size = policy.max_queue_size if entry else 0
    queue.default_timeout_microseconds = policy.timeout_ms * 1000
    queue.timeout_action = mc.ModelQueuePolicy.REJECT if policy.timeout_ms else mc.ModelQueuePolicy.DELAY
    queue.allow_timeout_override = True
