"""Soak: mixed good and bad images for a bounded time; memory and latency stay flat, every answer is right.

Good images are compared with the in-process ONNX Runtime reference (``fitguard.reference.OnnxPipeline``: the
same model files and preprocessing, no server); bad ones must be refused every time. After a warm-up, the
post-warm-up time is cut into windows: the server's resident memory (tritonserver and its Python stubs)
and the p50 latency of each window must stay within a band of the first window's. At the end ``/metrics``
must have counted exactly what was sent.

Bounded for CI (``SOAK_SECONDS``); ``FITGUARD_SOAK_SECONDS=3600`` runs an hour.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import Answer
from .corpus import bad_inputs

pytestmark = [pytest.mark.reliability, pytest.mark.server, pytest.mark.slow]

SOAK_SECONDS = float(os.environ.get("FITGUARD_SOAK_SECONDS", "60"))
WARMUP_SHARE = 0.2
WINDOWS = 4
CLIENTS = 2
BAD_EVERY = 4  # one bad image per this many requests
# Bands, relative to the first post-warm-up window.
RSS_GROWTH = 0.05  # plus RSS_SLACK: allocator arenas settle in steps of a few MB
RSS_SLACK_MB = 32.0
P50_BAND = (0.67, 1.5)  # a shared CI machine's noise; a leak or a growing queue leaves it for good
REFERENCE_TOL = 1e-5  # the same ONNX files in another process; batch composition differs


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in the server's process group (tritonserver + Python stubs)."""
    total_kb = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.getpgid(int(proc.name)) != pgid:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total_kb / 1024


@pytest.fixture(scope="module")
def soak_payloads(good_payloads, tiny_repository: Path):
    """Good images with their reference answers, and bad images the server must refuse."""
    from fitguard.reference import OnnxPipeline

    reference = OnnxPipeline.from_repository(tiny_repository, threads=1)
    answers = []
    for payload in good_payloads:
        out = reference.predict([payload])
        answers.append(
            Answer(
                class_id=int(out["CLASS_ID"][0][0]),
                top5_ids=tuple(int(i) for i in out["TOP5_IDS"][0]),
                top5_probs=np.asarray(out["TOP5_PROBS"][0], np.float64),
                quality=float(out["QUALITY"][0][0]),
                fit=bool(out["FIT"][0][0]),
                fit_score=float(out["FIT_SCORE"][0][0]),
            )
        )
    # Small refusals only: the soak is about the steady state, the bombs have their own test.
    bad = [b.payload for b in bad_inputs() if b.expect == "error" and len(b.payload) < 200_000][:8]
    assert len(bad) >= 4
    return list(zip(good_payloads, answers, strict=True)), bad


def test_soak_memory_and_latency_stay_flat_and_answers_match(tiny_repository: Path, soak_payloads) -> None:
    from scrape import scrape

    from fitguard.client import BadImage, FitClient
    from fitguard.monitoring import REASON_BAD_IMAGE, REFUSALS, VERDICTS
    from fitguard.serve import EmbeddedServer

    good, bad = soak_payloads
    records: list[tuple[float, float, str]] = []  # (time since start, latency s, outcome)
    rss: list[tuple[float, float]] = []
    lock = threading.Lock()

    with EmbeddedServer(tiny_repository, http_port=0, grpc_port=0, metrics_port=0) as server:
        before = scrape(server.metrics_url)
        start = time.monotonic()
        end = start + SOAK_SECONDS

        def client_loop(c: int) -> None:
            with FitClient(server.grpc_url, timeout=60, retries=0) as client:
                k = c
                while time.monotonic() < end:
                    t0 = time.perf_counter()
                    if k % BAD_EVERY == BAD_EVERY - 1:
                        payload = bad[k % len(bad)]
                        try:
                            client.classify(payload)
                            outcome = "wrong: a bad image got a verdict"
                        except BadImage:
                            outcome = "refused"
                    else:
                        payload, expected = good[k % len(good)]
                        why = expected.mismatch(Answer.from_verdict(client.classify(payload)), REFERENCE_TOL)
                        outcome = "answered" if why is None else f"wrong: {why}"
                    with lock:
                        records.append((time.monotonic() - start, time.perf_counter() - t0, outcome))
                    k += CLIENTS

        def sample_rss() -> None:
            while time.monotonic() < end:
                rss.append((time.monotonic() - start, group_rss_mb(server.pid)))
                time.sleep(1.0)

        threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(CLIENTS)]
        threads.append(threading.Thread(target=sample_rss))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=SOAK_SECONDS + 120)
        time.sleep(0.5)
        after = scrape(server.metrics_url)

    problems = [o for _, _, o in records if o.startswith("wrong")]
    assert not problems, f"{len(problems)} wrong answers, first: {problems[:3]}"
    warm = WARMUP_SHARE * SOAK_SECONDS
    width = (SOAK_SECONDS - warm) / WINDOWS
    windows = []
    for w in range(WINDOWS):
        lo, hi = warm + w * width, warm + (w + 1) * width
        lat = [dt for t, dt, o in records if lo <= t < hi and o == "answered"]
        mem = [mb for t, mb in rss if lo <= t < hi]
        assert lat and mem, f"window {w} has no samples"
        windows.append((float(np.median(lat)) * 1e3, float(np.mean(mem)), len(lat)))
    first_p50, first_rss, _ = windows[0]
    answered = sum(o == "answered" for _, _, o in records)
    refused = sum(o == "refused" for _, _, o in records)
    drift = windows[-1][1] - first_rss
    print(
        f"\nsoak {SOAK_SECONDS:.0f} s, {CLIENTS} clients: {answered} answered (all match the ONNX Runtime "
        f"reference within {REFERENCE_TOL:g}), {refused} refused; per window after {warm:.0f} s warm-up "
        "(p50 ms, RSS MB, answers): "
        + "; ".join(f"{p:.1f} / {m:.0f} / {n}" for p, m, n in windows)
        + f"; RSS drift {drift:+.1f} MB ({drift / first_rss:+.2%})"
    )
    for p50, mem, _ in windows[1:]:
        assert mem <= first_rss * (1 + RSS_GROWTH) + RSS_SLACK_MB, windows
        assert P50_BAND[0] * first_p50 <= p50 <= P50_BAND[1] * first_p50, windows

    def delta(sample: str, **labels: str) -> float:
        key = tuple(sorted({"version": "1", **labels}.items()))
        return after[sample][key] - before.get(sample, {}).get(key, 0.0)

    verdicts = delta(f"{VERDICTS}", verdict="fit") + delta(f"{VERDICTS}", verdict="unfit")
    assert verdicts == answered
    assert delta(REFUSALS, reason=REASON_BAD_IMAGE) == refused
