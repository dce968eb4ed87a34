"""A bounded load run: 8 concurrent clients, a fixed number of requests, zero errors, nothing lost.

Each request's answer is compared with the answer its image got alone (the sequential reference pass),
so a lost, duplicated or crossed response fails the test; the server's own statistics must count exactly
the requests sent.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import Answer, ensemble_counts, percentile_ms

pytestmark = [pytest.mark.reliability, pytest.mark.server]

CLIENTS = 8
REQUESTS_PER_CLIENT = 50  # 400 in all


@pytest.mark.slow
def test_load_eight_clients_no_errors_every_response_matched(tiny_server, good_payloads, reference_answers):
    from fitguard.client import FitClient

    success_before, fail_before = ensemble_counts(tiny_server.http_url)
    start_line = threading.Barrier(CLIENTS)

    def run_client(c: int) -> list[tuple[int, float, Answer | BaseException]]:
        # Half the clients speak gRPC, half HTTP: both transports under the same load.
        protocol = "grpc" if c % 2 == 0 else "http"
        url = tiny_server.grpc_url if protocol == "grpc" else tiny_server.http_url
        records: list[tuple[int, float, Answer | BaseException]] = []
        with FitClient(url, protocol=protocol, timeout=60, retries=0) as client:
            start_line.wait(timeout=60)
            for k in range(REQUESTS_PER_CLIENT):
                idx = (c * 13 + k * 7) % len(good_payloads)
                t0 = time.perf_counter()
                try:
                    outcome: Answer | BaseException = Answer.from_verdict(client.classify(good_payloads[idx]))
                except Exception as exc:  # noqa: BLE001 - counted and reported below
                    outcome = exc
                records.append((idx, time.perf_counter() - t0, outcome))
        return records

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        per_client = list(pool.map(run_client, range(CLIENTS)))
    wall = time.perf_counter() - t0

    records = [r for client in per_client for r in client]
    errors = [(idx, o) for idx, _, o in records if isinstance(o, BaseException)]
    wrong = [(idx, reference_answers[idx].mismatch(o)) for idx, _, o in records if isinstance(o, Answer)]
    wrong = [(idx, why) for idx, why in wrong if why is not None]
    latencies = [dt for _, dt, o in records if isinstance(o, Answer)]
    success_after, fail_after = ensemble_counts(tiny_server.http_url)
    served = success_after - success_before

    print(
        f"\nload: {CLIENTS} clients x {REQUESTS_PER_CLIENT} = {len(records)} requests in {wall:.1f} s "
        f"({len(records) / wall:.0f} req/s); errors {len(errors)}, wrong answers {len(wrong)}, "
        f"server counted {served} ok / {fail_after - fail_before} failed; latency p50 "
        f"{percentile_ms(latencies, 50):.1f} ms, p95 {percentile_ms(latencies, 95):.1f} ms, "
        f"p99 {percentile_ms(latencies, 99):.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )
    assert len(records) == CLIENTS * REQUESTS_PER_CLIENT
    assert not errors, f"{len(errors)} errors, first: {errors[:3]}"
    assert not wrong, f"{len(wrong)} responses do not match their request, first: {wrong[:3]}"
    # Nothing lost or duplicated on the server side either: it answered exactly what was sent.
    assert served == CLIENTS * REQUESTS_PER_CLIENT and fail_after == fail_before
