"""Overload policy for every served model: admission control, a bounded queue, a timeout, reject on overflow.

Without one a burst beyond capacity queues without limit and every client's latency grows together. With
it, Triton refuses a request at once when the entry step's queue is full, and drops one that waited longer
than the timeout in any step's queue; the client SDK reports both as :class:`fitguard.client.Overloaded`,
which it retries with jittered back-off within its deadline. Set with ``fitguard export --max-queue-size N
--queue-timeout-ms T --max-in-flight M`` (or ``--latency-budget-ms B --bench bench.json``).

Only the entry step (preprocess) has a bounded size: in Triton 2.51 an ensemble request whose later step
is refused for a full queue never gets an answer (fixed upstream in triton-inference-server/core#466,
after 2.51); refusing at the entry, before the ensemble fans out, answers every request. The later steps
are bounded by the timeout instead.

That alone lets a bottleneck behind the entry (the classifier or quality step) hold seconds of work, and
its refusals come after a timeout. So the entry step also admits at most ``max_in_flight`` images into the
whole ensemble (:mod:`fitguard.admission`; the monitor step releases them) and refuses the rest at once:
the admitted images wait about ``max_in_flight / throughput`` whatever the demand. ``fitguard export
--latency-budget-ms B --bench bench.json`` picks that limit from a bench run (:func:`policy_from_bench`).
Admission control needs the Python preprocess step and the monitor step; without either it is left off.

Admission control refuses what does not fit at once, also a burst of concurrent requests on an idle server
(the SDK retries them with back-off; raw clients at a concurrency above the limit, such as
``fitguard bench``'s concurrency 8 with a limit of 4, see refusals). That is why it is off by default:
waiting for a slot instead would let the waiting room's latency add to the admitted images'
(docs/operations.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from fitguard.parameters import ADMISSION_LEASE_MS, DEFAULT_ADMISSION_LEASE_MS, MAX_IN_FLIGHT

# Chosen from the overload measurements in docs/operations.md.
DEFAULT_MAX_QUEUE_SIZE = 16
DEFAULT_QUEUE_TIMEOUT_MS = 1000
# The limit per model instance the CPU builds were measured with (docs/operations.md, section 3): the
# concurrency at which they reach their capacity. Admission control is off unless asked for: it refuses
# concurrent requests beyond the limit even on an idle server (see the module doc).
DEFAULT_IN_FLIGHT_PER_INSTANCE = 4
# Queue timeouts after which an admitted image that was never released stops counting. An image still
# in flight then makes admission control admit one more than the limit for a while (harmless); one dropped
# on the way (a later queue's timeout on a starved machine) would otherwise keep its slot, and normal load
# right after an overload would be refused.
LEASE_TIMEOUTS = 2


@dataclass(frozen=True)
class QueuePolicy:
    """How the server sheds load.

    Attributes:
        max_queue_size: requests the entry step queues (0: unbounded).
        timeout_ms: longest wait in any model's queue (0: none).
        max_in_flight: images admitted into the ensemble at once (0 or None: no admission control).
        latency_budget_ms: the answered p99 the limit was chosen for (0: none given).
        basis: where the limit came from (the bench level it was read from), for the manifest.
    """

    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    timeout_ms: int = DEFAULT_QUEUE_TIMEOUT_MS
    max_in_flight: int | None = None
    latency_budget_ms: int = 0
    basis: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.max_queue_size < 0 or self.timeout_ms < 0 or self.latency_budget_ms < 0:
            raise ValueError(f"queue size, timeout and budget must be >= 0, got {self}")
        if self.max_in_flight is not None and self.max_in_flight < 0:
            raise ValueError(f"max_in_flight must be >= 0, got {self.max_in_flight}")

    @property
    def lease_ms(self) -> int:
        """How long an admitted image that was never released keeps its slot (:data:`LEASE_TIMEOUTS`; the
        parameters' default where no queue timeout bounds a wait)."""
        return LEASE_TIMEOUTS * self.timeout_ms if self.timeout_ms else DEFAULT_ADMISSION_LEASE_MS

    def in_flight_limit(self, *, instances: int, gated: bool) -> int:
        """The admission limit served: 0 where the repository has no admission control (``gated`` False).

        Raises:
            ValueError: an explicit limit on a repository without admission control.
        """
        if not gated:
            if self.max_in_flight:
                raise ValueError(
                    "admission control (--max-in-flight, --latency-budget-ms) needs the python preprocess "
                    "step and the monitor step (--monitoring on)"
                )
            return 0
        return self.max_in_flight or 0

    def to_dict(self, *, in_flight: int | None = None) -> dict[str, Any]:
        """The manifest's record; ``in_flight``: the limit served (from :meth:`in_flight_limit`)."""
        limit = self.max_in_flight if in_flight is None else in_flight
        record: dict[str, Any] = {"max_queue_size": self.max_queue_size, "queue_timeout_ms": self.timeout_ms}
        record |= {MAX_IN_FLIGHT: limit or 0, ADMISSION_LEASE_MS: self.lease_ms if limit else 0}
        record |= {"latency_budget_ms": self.latency_budget_ms, "admission_basis": dict(self.basis)}
        return record


def policy_from_bench(bench: dict[str, Any], *, budget_ms: int, base: QueuePolicy) -> QueuePolicy:
    """``base`` with the admission limit a ``fitguard bench`` run supports within ``budget_ms``.

    Of the served concurrency levels whose p99 met the budget (and that had no errors), the one with the
    highest throughput: its images in flight become the limit, so under any overload the server keeps
    about the load it answered within the budget in the bench.

    Raises:
        ValueError: no level met the budget (the message gives the best p99 measured).
    """
    levels = [lv for lv in (bench.get("served") or {}).get("levels", []) if not lv.get("errors")]
    if not levels:
        raise ValueError("the bench file has no served levels without errors (run `fitguard bench` first)")
    fits = [lv for lv in levels if lv["latency_ms"]["p99"] <= budget_ms]
    if not fits:
        best = min(lv["latency_ms"]["p99"] for lv in levels)
        raise ValueError(f"no bench level met a {budget_ms} ms budget (best p99 {best:.0f} ms); raise it")
    level = max(fits, key=lambda lv: (lv["throughput"], -lv["concurrency"]))
    basis = {
        "bench_date": bench.get("date"),
        "concurrency": level["concurrency"],
        "batch": level.get("batch", 1),
        "throughput": level["throughput"],
        "p99_ms": level["latency_ms"]["p99"],
    }
    limit = int(level["concurrency"] * level.get("batch", 1))
    return replace(base, max_in_flight=limit, latency_budget_ms=budget_ms, basis=basis)


def apply_admission(config: Any, policy: QueuePolicy, *, limit: int) -> None:
    """Write the admission limit and lease into a gating step's ``parameters`` (preprocess, monitor)."""
    config.parameters[MAX_IN_FLIGHT].string_value = str(limit)
    config.parameters[ADMISSION_LEASE_MS].string_value = str(policy.lease_ms)


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
