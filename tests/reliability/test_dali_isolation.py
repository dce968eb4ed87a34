"""The DALI repository under hostile input: a bad image fails only its own request.

The DALI step runs behind the validating step (fitguard.dali_check) in the embedded server, where the DALI
stand-in backend runs the exported ``model.dali`` with DALI's CPU operators and keeps the real backend's
batch semantics: one bad sample fails every request of its batch. The bad-input corpus and corrupt bodies
behind valid headers (what only the decoder finds) go out among good requests, 8 in flight: every good
request must come back with the Python repository's answer, every bad one with its own reason.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fitguard.contract import DALI_PREPROCESS, DALI_PREPROCESS_SINGLE, ENSEMBLE, IMAGE
from fitguard.dali_check import check_header

from .conftest import Answer, grpc_infer
from .corpus import bad_inputs

pytestmark = [pytest.mark.reliability, pytest.mark.server, pytest.mark.slow]

# GIF is not among DALI's decoders: the validating step refuses it (docs/deployment.md).
DALI_REFUSES = {"animated_gif"}
# The DALI crop is within 1 of 255 of the Python step's per pixel (another resampling filter); through the
# tiny random backbone that moves an output far less than this (the test prints the largest delta), while
# an answer that belongs to another image moves top-5 and quality by 1e-3 or more.
CROP_TOL = 1e-4


def corrupt_bodies(payloads: list[bytes], count: int = 8) -> list[bytes]:
    """PNGs whose header is valid and whose pixel data is not: cut short or overwritten mid-stream, so
    only the decoder (inside DALI) can find out."""
    pngs = [p for p in payloads if p.startswith(b"\x89PNG")]
    out = []
    for i, png in enumerate(pngs[:count]):
        middle = len(png) // 2
        broken = png[:middle] if i % 2 else png[:middle] + bytes(64) + png[middle + 64 :]
        check_header(broken)  # the header still passes: this reaches DALI
        out.append(broken)
    assert len(out) == count
    return out


@pytest.fixture(scope="module")
def dali_reference(tiny_dali_server, good_payloads) -> list[Answer]:
    """Each good image sent alone through the DALI repository: what it must answer under load, exactly."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(tiny_dali_server.grpc_url) as client:
        return [Answer.from_result(grpc_infer(client, [p])) for p in good_payloads]


def python_parity(python: Answer, dali: Answer) -> str | None:
    """Why a DALI answer is not the Python repository's within the crop difference, or None.

    Scores and quality within :data:`CROP_TOL`; the class where the Python answer's top-1 leads by more
    than that (the tiny random backbone's probabilities are near ties, which a crop delta can reorder).
    """
    delta = float(np.abs(np.sort(dali.top5_probs) - np.sort(python.top5_probs)).max())
    delta = max(delta, abs(dali.quality - python.quality), abs(dali.fit_score - python.fit_score))
    if delta > CROP_TOL:
        return f"outputs differ by {delta:.3g} (> {CROP_TOL})"
    if python.top5_probs[0] - python.top5_probs[1] > CROP_TOL and dali.class_id != python.class_id:
        return f"class {dali.class_id} != {python.class_id}"
    return None


def _statistics(client, model: str) -> dict[str, int]:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return {
        "requests": int(stats.get("inference_count", 0)),
        "executions": int(stats.get("execution_count", 0)),
        "failed": int(stats["inference_stats"].get("fail", {}).get("count", 0)),
        "answered": int(stats["inference_stats"].get("success", {}).get("count", 0)),
    }


def _bad_image_count(server) -> float:
    """The validating step's refusals on /metrics (fitguard_refusals_total, reason bad_image)."""
    from scrape import scrape

    from fitguard.monitoring import REASON_BAD_IMAGE, REFUSALS

    samples = scrape(server.metrics_url).get(REFUSALS, {})
    return sum(v for labels, v in samples.items() if ("reason", REASON_BAD_IMAGE) in labels)


def _send(client, payload: bytes) -> Answer | str:
    from tritonclient.utils import InferenceServerException

    try:
        return Answer.from_result(grpc_infer(client, [payload]))
    except InferenceServerException as exc:  # a refusal; anything else (a lost request) fails the test
        return str(exc.message() or exc)


def _check_bad(name: str, expect: str, outcome: Answer | str) -> str:
    """What happened to a bad input ("refused" or "answered"), after checking it is allowed."""
    if isinstance(outcome, str):
        assert outcome.startswith("in ensemble") and "bad image: " in outcome, f"{name}: {outcome}"
        assert expect != "verdict" or name in DALI_REFUSES, f"{name} should be answered: {outcome}"
        return "refused"
    assert expect != "error" and name not in DALI_REFUSES, f"{name} should be refused"
    return "answered"


def test_bad_images_fail_only_their_own_requests(
    tiny_dali_server, good_payloads, reference_answers, dali_reference
) -> None:
    import tritonclient.grpc as grpcclient

    corpus = [(case.name, case.payload, case.expect) for case in bad_inputs(seed=0)]
    corpus += [(f"corrupt_body_{i}", p, "error") for i, p in enumerate(corrupt_bodies(good_payloads))]
    jobs = [("bad", i) for i in range(len(corpus))] + [("good", i) for i in range(len(good_payloads))] * 2
    random.Random(0).shuffle(jobs)
    client = grpcclient.InferenceServerClient(tiny_dali_server.grpc_url)
    counted = _bad_image_count(tiny_dali_server)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            outcomes = list(
                pool.map(
                    lambda j: _send(client, (corpus[j[1]][1] if j[0] == "bad" else good_payloads[j[1]])), jobs
                )
            )
        tally = {"good answered": 0, "refused": 0, "answered": 0, "refused by DALI": 0}
        worst = 0.0
        for (kind, i), outcome in zip(jobs, outcomes, strict=True):
            if kind == "bad":
                tally[_check_bad(corpus[i][0], corpus[i][2], outcome)] += 1
                tally["refused by DALI"] += isinstance(outcome, str) and "could not decode" in outcome
                continue
            assert not isinstance(outcome, str), f"good image {i} failed next to bad input: {outcome}"
            assert dali_reference[i].mismatch(outcome) is None, f"good image {i} got another's answer"
            assert python_parity(reference_answers[i], outcome) is None, (i, outcome)
            worst = max(worst, float(np.abs(outcome.vector() - reference_answers[i].vector()).max()))
            tally["good answered"] += 1
        batched = _statistics(client, DALI_PREPROCESS)
        single = _statistics(client, DALI_PREPROCESS_SINGLE)
        print(
            f"\nDALI isolation: {len(jobs)} requests, {tally}, 0 lost; largest delta to the Python "
            f"repository {worst:.2e}; batched DALI model {batched}; non-batching twin {single}; "
            f"good images rescued from failed batches {single['requests'] - tally['refused by DALI']}"
        )
        assert tally["good answered"] == 2 * len(good_payloads)
        assert _bad_image_count(tiny_dali_server) - counted == tally["refused"]  # each counted once
        # Batches did form, every corrupt body was found by DALI, and good images that shared a batch with
        # one were answered alone by the twin (which sees the DALI refusals plus those good images).
        assert batched["executions"] < batched["requests"]
        assert tally["refused by DALI"] >= 8
        assert single["requests"] - tally["refused by DALI"] >= 1
        assert client.is_server_ready() and client.is_model_ready(ENSEMBLE)
    finally:
        client.close()


def test_the_dali_step_alone_fails_the_whole_batch(tiny_dali_server, good_payloads) -> None:
    """Why the validating step retries: the batching DALI model (the stand-in, like dali_backend) answers
    a batch with one bad sample with the same error for every sample, the good one included."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    good = next(p for p in good_payloads if p.startswith(b"\x89PNG"))
    bad = corrupt_bodies([good], count=1)[0]
    bad = bad + bytes(len(good) - len(bad))  # rows of one request share a length
    client = grpcclient.InferenceServerClient(tiny_dali_server.grpc_url)
    try:
        for rows, fails in (([good, good], False), ([good, bad], True)):
            image = grpcclient.InferInput(IMAGE, [len(rows), len(good)], "UINT8")
            image.set_data_from_numpy(np.stack([np.frombuffer(r, np.uint8) for r in rows]))
            if not fails:
                assert client.infer(DALI_PREPROCESS, [image]).as_numpy("CLASSIFIER_INPUT").shape[0] == 2
                continue
            with pytest.raises(InferenceServerException, match="DALI Backend error: .*decod"):
                client.infer(DALI_PREPROCESS, [image])
    finally:
        client.close()


def test_an_old_dali_client_gets_a_clear_error(tiny_dali_server, good_payloads) -> None:
    """A client written for the earlier DALI repositories (IMAGE as UINT8 [1, n]) is refused by Triton
    with the datatype it should send, never answered from misread bytes."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    data = np.frombuffer(good_payloads[0], np.uint8)[None]
    client = grpcclient.InferenceServerClient(tiny_dali_server.grpc_url)
    try:
        image = grpcclient.InferInput(IMAGE, list(data.shape), "UINT8")
        image.set_data_from_numpy(data)
        with pytest.raises(
            InferenceServerException, match=f"data-type is 'UINT8', but model '{ENSEMBLE}' expects 'BYTES'"
        ):
            client.infer(ENSEMBLE, [image])
    finally:
        client.close()


def test_the_dali_repository_is_checked_where_it_is_served(tiny_dali_server) -> None:
    from fitguard.manifest import verify_repository

    manifest = verify_repository(Path(tiny_dali_server.model_repository))
    assert manifest["arguments"]["preprocess"] == "dali"
