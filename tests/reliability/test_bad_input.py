"""Hostile and unusual input against the real server, with good requests in flight at the same time.

Every bad request must get a clear error (or, for valid odd images, a verdict); the server must stay up
and ready; every good request sent alongside must get its own, correct answer.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fitguard.contract import ENSEMBLE, IMAGE, MODELS, NUM_CLASSES
from fitguard.preprocess import BadImageError, decode_image

from .conftest import Answer, grpc_infer
from .corpus import BadInput, bad_inputs, tensor_abuse_cases

pytestmark = [pytest.mark.reliability, pytest.mark.server]


def _server_error(exc: BaseException) -> str:
    """The server's message for a failed request (tritonclient's exception), else re-raise."""
    from tritonclient.utils import InferenceServerException

    if not isinstance(exc, InferenceServerException):
        raise exc
    return str(exc.message() or exc)


def _check_bad_outcome(case: BadInput, outcome: Answer | str) -> None:
    # What the in-process decoder says about the same bytes: the server must agree, and say the same why.
    try:
        decode_image(case.payload)
        local: str | None = None
    except BadImageError as exc:
        local = str(exc)
    if case.expect == "error":
        assert local is not None, f"{case.name}: the corpus expects a refusal but the decoder accepts it"
    if case.expect == "verdict":
        assert local is None, f"{case.name}: the corpus expects a verdict but the decoder refuses: {local}"
    if isinstance(outcome, str):
        assert local is not None, f"{case.name}: server refused an image the decoder accepts: {outcome}"
        assert "bad image" in outcome and local in outcome, f"{case.name}: unclear error: {outcome}"
        assert "Traceback" not in outcome
    else:
        assert local is None, f"{case.name}: server answered an image the decoder refuses ({local})"
        assert 0 <= outcome.class_id < NUM_CLASSES
        assert 0.0 <= outcome.quality <= 1.0 and np.isfinite(outcome.fit_score)
        assert np.all(np.diff(outcome.top5_probs) <= 0) and outcome.top5_probs.sum() <= 1 + 1e-5


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # the corpus's broken APP1, on purpose
def test_bad_inputs_with_good_requests_in_flight(tiny_server, good_payloads, reference_answers):
    import tritonclient.grpc as grpcclient

    corpus = bad_inputs(seed=0)
    assert len(corpus) >= 30
    # Each good image twice, shuffled between the bad ones, 8 requests in flight at a time.
    jobs: list[tuple[str, int]] = [("bad", i) for i in range(len(corpus))]
    jobs += [("good", i) for i in range(len(good_payloads))] * 2
    random.Random(0).shuffle(jobs)
    client = grpcclient.InferenceServerClient(tiny_server.grpc_url)

    def send(job: tuple[str, int]) -> Answer | str:
        kind, i = job
        payload = corpus[i].payload if kind == "bad" else good_payloads[i]
        try:
            return Answer.from_result(grpc_infer(client, [payload]))
        except Exception as exc:  # noqa: BLE001 - classified below: only server errors are acceptable
            return _server_error(exc)

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            outcomes = list(pool.map(send, jobs))
        errors = verdicts = 0
        for (kind, i), outcome in zip(jobs, outcomes, strict=True):
            if kind == "good":
                assert not isinstance(outcome, str), f"good image {i} failed next to bad input: {outcome}"
                problem = reference_answers[i].mismatch(outcome)
                assert problem is None, f"good image {i} got a wrong answer under hostile load: {problem}"
            else:
                _check_bad_outcome(corpus[i], outcome)
                errors += isinstance(outcome, str)
                verdicts += not isinstance(outcome, str)
        print(
            f"\nbad-input corpus: {len(corpus)} kinds -> {errors} clear errors, {verdicts} verdicts; "
            f"{2 * len(good_payloads)} good requests in flight alongside, all answered correctly"
        )
        # Still up, every model still ready, and still right.
        assert client.is_server_ready() and client.is_server_live()
        assert all(client.is_model_ready(m) for m in (ENSEMBLE, *MODELS))
        assert (
            reference_answers[0].mismatch(Answer.from_result(grpc_infer(client, [good_payloads[0]]))) is None
        )
    finally:
        client.close()


def _abuse_inputs(name: str, good: bytes, max_batch: int, grpc: bool):
    """(model, inputs, outputs) for a tensor-contract violation, built with the real tritonclient types."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    mod = grpcclient if grpc else httpclient
    model, outputs = ENSEMBLE, None

    def tensor(tensor_name: str, array: np.ndarray, datatype: str):
        inp = mod.InferInput(tensor_name, list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        return inp

    good_batch = lambda n: np.array([[good]] * n, dtype=object)  # noqa: E731
    if name == "fp32_to_image":
        inputs = [tensor(IMAGE, np.zeros((1, 1), np.float32), "FP32")]
    elif name == "uint8_to_image":
        inputs = [tensor(IMAGE, np.zeros((1, 224, 224, 3), np.uint8), "UINT8")]
    elif name == "wrong_shape":
        inputs = [tensor(IMAGE, np.array([[good, good]], dtype=object), "BYTES")]
    elif name == "oversized_batch":
        inputs = [tensor(IMAGE, good_batch(max_batch + 1), "BYTES")]
    elif name == "empty_batch":
        inputs = [tensor(IMAGE, np.zeros((0, 1), dtype=object), "BYTES")]
    elif name == "missing_input":
        inputs = []
    elif name == "unknown_input":
        inputs = [
            tensor(IMAGE, good_batch(1), "BYTES"),
            tensor("PIXELS", np.zeros((1, 1), np.float32), "FP32"),
        ]
    elif name == "unknown_output":
        inputs = [tensor(IMAGE, good_batch(1), "BYTES")]
        outputs = [mod.InferRequestedOutput("LOGITS")]
    elif name == "unknown_model":
        inputs, model = [tensor(IMAGE, good_batch(1), "BYTES")], "fitguard_v2"
    else:  # pragma: no cover - keeps the corpus and this table in step
        raise AssertionError(f"no request built for {name}")
    return model, inputs, outputs


# A word the server's message must contain for each violation, so the error tells the caller what is wrong.
ABUSE_WORDS = {
    "fp32_to_image": "data-type is 'fp32'",
    "uint8_to_image": "data-type is 'uint8'",
    "wrong_shape": "unexpected shape",
    "oversized_batch": "batch-size must be <=",
    "empty_batch": "got 0",
    "missing_input": "missing required input",
    "unknown_input": "'pixels'",
    "unknown_output": "'logits'",
    "unknown_model": "'fitguard_v2' is not found",
}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tensor_contract_violations_are_refused(tiny_server, good_payloads, reference_answers, protocol):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    grpc = protocol == "grpc"
    client = (grpcclient if grpc else httpclient).InferenceServerClient(
        tiny_server.grpc_url if grpc else tiny_server.http_url
    )
    try:
        config = client.get_model_config(ENSEMBLE)
        max_batch = int(config.config.max_batch_size if grpc else config["max_batch_size"])
        cases = tensor_abuse_cases()
        assert set(ABUSE_WORDS) == {c.name for c in cases}
        seen: dict[str, str] = {}
        for case in cases:
            model, inputs, outputs = _abuse_inputs(case.name, good_payloads[0], max_batch, grpc)
            with pytest.raises(InferenceServerException) as info:
                client.infer(model, inputs, outputs=outputs)
            message = str(info.value.message() or info.value)
            assert message and "Traceback" not in message, f"{case.name}: {message}"
            assert ABUSE_WORDS[case.name] in message.lower(), (
                f"{case.name} ({case.why}): the error does not say what is wrong: {message}"
            )
            seen[case.name] = message
        assert client.is_server_ready()
        if grpc:
            after = Answer.from_result(grpc_infer(client, [good_payloads[1]]))
            assert reference_answers[1].mismatch(after) is None
        print(
            f"\n{protocol}: {len(seen)} tensor-contract violations refused: "
            + "; ".join(f"{k}: {v[:80]}" for k, v in seen.items())
        )
    finally:
        client.close()


def test_batch_with_one_bad_image_fails_alone(tiny_server, good_payloads, reference_answers):
    """A request carrying a bad image among good ones fails as a whole, with the reason; the next is fine."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(tiny_server.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="bad image: empty input"):
            grpc_infer(client, [good_payloads[0], b"", good_payloads[1]])
        result = grpc_infer(client, good_payloads[:3])
        for k in range(3):
            assert reference_answers[k].mismatch(Answer.from_result(result, k)) is None
    finally:
        client.close()
