"""Client SDK: unit tests over a scripted transport, then integration against the real embedded server."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fitguard import contract
from fitguard.client import (
    AsyncFitClient,
    BadImage,
    ContractMismatch,
    Failure,
    FitClient,
    ModelNotReady,
    Overloaded,
    RetryPolicy,
    ServerError,
    ServerUnavailable,
    Timeout,
    Verdict,
    expand_paths,
)
from fitguard.client import retry as retry_mod
from fitguard.client.images import to_bytes
from fitguard.client.transport import Connection, map_error
from fitguard.contract import ADMISSION_REFUSED
from fitguard.labels import imagenet_classes

# ---------------------------------------------------------------------------------------------------
# A scripted transport: payload b"cls:<id>" answers class <id>; b"bad..." is refused like Triton refuses a
# batch holding one undecodable image; failures can be queued to exercise the retry policy.


def contract_metadata(name: str = "fitguard") -> dict[str, Any]:
    def tensors(ts: tuple[contract.Tensor, ...]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": [-1, *t.shape]} for t in ts]

    return {
        "name": name,
        "versions": ["1"],
        "platform": "ensemble",
        "inputs": tensors(contract.ENSEMBLE_INPUTS),
        "outputs": tensors(contract.ENSEMBLE_OUTPUTS),
    }


class FakeServer:
    def __init__(self, *, max_batch_size: int = 16, delay: float = 0.0, seed: int = 0) -> None:
        self.metadata = contract_metadata()
        self.config: dict[str, Any] = {"max_batch_size": max_batch_size}
        self.ready = True
        self.delay = delay
        self.rng = random.Random(seed)
        self.failures: list[Exception] = []  # raised by the next infer calls, in order
        self.batches: list[int] = []
        self.connects = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.transports = 0
        self.lock = threading.Lock()

    def _enter(self) -> float:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.rng.uniform(0, self.delay)

    def _leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def answer(self, payloads: list[bytes]) -> tuple[dict[str, np.ndarray], str]:
        with self.lock:
            self.batches.append(len(payloads))
            if self.failures:
                raise self.failures.pop(0)
        if any(p.startswith(b"bad") for p in payloads):
            raise BadImage("corrupt or truncated image: cannot identify image file")
        ids = np.array([int(p.split(b":")[1]) for p in payloads], dtype=np.int64)
        top = np.stack([(ids + k) % contract.NUM_CLASSES for k in range(contract.TOP_K)], axis=1)
        probs = np.tile(np.array([0.6, 0.2, 0.1, 0.06, 0.04], dtype=np.float32), (len(ids), 1))
        # Each output is its own function of the image's id, FIT (even ids) and FIT_SCORE (ids of 100 and
        # more) disagreeing on purpose: a client that derived one field from another, or mixed up the rows
        # of a batch, gives itself away.
        outputs = {
            contract.CLASS_ID: ids[:, None],
            contract.TOP5_IDS: top,
            contract.TOP5_PROBS: probs,
            contract.QUALITY_SCORE: (ids[:, None] / 1000).astype(np.float32),
            contract.FIT: (ids[:, None] % 2 == 0),
            contract.FIT_SCORE: (ids[:, None] / 100 - 1).astype(np.float32),
        }
        return outputs, "1"


class FakeTransport:
    thread_safe = False

    def __init__(self, server: FakeServer, conn: Connection) -> None:
        self.server, self.conn = server, conn
        server.transports += 1

    def model_ready(self, model: str) -> bool:
        self.server.connects += 1
        return self.server.ready and model == "fitguard"

    def model_metadata(self, model: str) -> dict[str, Any]:
        return self.server.metadata

    def model_config(self, model: str) -> dict[str, Any]:
        return self.server.config

    def models(self) -> list[str]:
        return ["fitguard", "preprocess"]

    def infer(self, model: str, payloads: list[bytes]) -> tuple[dict[str, np.ndarray], str]:
        wait = self.server._enter()
        try:
            time.sleep(wait)
            return self.server.answer(payloads)
        finally:
            self.server._leave()

    def close(self) -> None:
        pass


class AsyncFakeTransport:
    def __init__(self, server: FakeServer, conn: Connection) -> None:
        self.sync = FakeTransport(server, conn)

    async def model_ready(self, model: str) -> bool:
        return self.sync.model_ready(model)

    async def model_metadata(self, model: str) -> dict[str, Any]:
        return self.sync.model_metadata(model)

    async def model_config(self, model: str) -> dict[str, Any]:
        return self.sync.model_config(model)

    async def models(self) -> list[str]:
        return self.sync.models()

    async def infer(self, model: str, payloads: list[bytes]) -> tuple[dict[str, np.ndarray], str]:
        wait = self.sync.server._enter()
        try:
            await asyncio.sleep(wait)
            return self.sync.server.answer(payloads)
        finally:
            self.sync.server._leave()

    async def close(self) -> None:
        pass


FAST = RetryPolicy(retries=3, backoff=0.01, max_backoff=0.05, deadline=2.0, jitter=0.0)


def fake_client(server: FakeServer, model: str = "fitguard", policy: RetryPolicy = FAST) -> FitClient:
    return FitClient(
        "fake:1", model=model, retry_policy=policy, transport_factory=lambda conn: FakeTransport(server, conn)
    )


def fake_async_client(server: FakeServer, policy: RetryPolicy = FAST) -> AsyncFitClient:
    return AsyncFitClient(
        "fake:1", retry_policy=policy, transport_factory=lambda conn: AsyncFakeTransport(server, conn)
    )


def cls(i: int) -> bytes:
    return b"cls:%d" % i


# ---------------------------------------------------------------------------------------------------
# Unit tests


def test_verdict_is_typed_and_immutable() -> None:
    with fake_client(FakeServer()) as client:
        v = client.classify(cls(281))
    c = imagenet_classes()[281]
    assert isinstance(v, Verdict) and v.ok
    assert (v.class_id, v.wnid, v.label) == (281, c.wnid, c.name)
    assert v.confidence == pytest.approx(0.6)
    assert [t.class_id for t in v.top5] == [281, 282, 283, 284, 285]
    assert v.top5[1].label == imagenet_classes()[282].name
    assert v.quality == pytest.approx(0.281) and v.quality_range == contract.QUALITY_RANGE
    assert v.fit is False and v.fit_score == pytest.approx(1.81)
    assert v.model_version == "1" and v.source is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.label = "dog"  # type: ignore[misc]
    assert v.to_dict()["top5"][0]["class_id"] == 281


def test_contract_mismatch_says_what_differs() -> None:
    server = FakeServer()
    server.metadata["inputs"][0]["datatype"] = "FP32"
    server.metadata["outputs"] = [t for t in server.metadata["outputs"] if t["name"] != contract.FIT]
    server.metadata["outputs"][0]["shape"] = [-1, 3]
    with pytest.raises(ContractMismatch) as info, fake_client(server):
        pass
    msg = str(info.value)
    assert "input IMAGE FP32 [-1,1] should be IMAGE BYTES [-1,1]" in msg
    assert "output FIT missing" in msg
    assert "output CLASS_ID INT64 [-1,3] should be CLASS_ID INT64 [-1,1]" in msg
    assert "'fitguard' at fake:1" in msg


def test_contract_needs_batching() -> None:
    server = FakeServer(max_batch_size=0)
    with pytest.raises(ContractMismatch, match="max_batch_size is 0"):
        fake_client(server).connect()


def test_model_not_ready_lists_ready_models() -> None:
    with pytest.raises(ModelNotReady, match="ready models: fitguard, preprocess"):
        fake_client(FakeServer(), model="fitgaurd").classify(cls(1))


def test_connects_once() -> None:
    server = FakeServer()
    with fake_client(server) as client:
        for i in range(3):
            client.classify(cls(i))
        client.classify_many([cls(i) for i in range(20)])
    assert server.connects == 1


def test_retries_unavailable_then_succeeds() -> None:
    server = FakeServer()
    with fake_client(server) as client:
        server.failures = [ServerUnavailable("down"), Timeout("slow")]
        assert client.classify(cls(7)).class_id == 7
    assert server.batches == [1, 1, 1]


def test_overload_is_retried_with_jitter_within_the_deadline() -> None:
    server = FakeServer()
    with fake_client(server) as client:
        server.failures = [Overloaded("queue full"), Overloaded("queue timeout")]
        assert client.classify(cls(3)).class_id == 3
    assert server.batches == [1, 1, 1]

    policy = RetryPolicy(retries=50, backoff=0.02, max_backoff=0.04, deadline=0.3, jitter=0.5)
    slept: list[float] = []

    def refused() -> int:
        raise Overloaded("queue full")

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    with pytest.raises(Overloaded):
        retry_mod.call(refused, policy, sleep=sleep)
    nominal = list(policy.waits())[: len(slept)]
    assert all(n / 2 <= w <= n for w, n in zip(slept, nominal, strict=True))
    assert len(set(slept)) == len(slept)  # jittered: no two clients wait in lock-step
    assert sum(slept) <= policy.deadline


def test_backoff_schedule_is_exponential_and_capped() -> None:
    policy = RetryPolicy(retries=5, backoff=0.1, max_backoff=0.3, deadline=60, jitter=0.0)
    slept: list[float] = []
    calls = []

    def fn() -> int:
        calls.append(1)
        raise ServerUnavailable("down")

    with pytest.raises(ServerUnavailable):
        retry_mod.call(fn, policy, sleep=slept.append)
    assert slept == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])
    assert len(calls) == 6


def test_retry_time_is_bounded_by_deadline() -> None:
    server = FakeServer()
    policy = RetryPolicy(retries=1000, backoff=0.02, max_backoff=0.1, deadline=0.5)
    with fake_client(server, policy=policy) as client:
        server.failures = [ServerUnavailable("down")] * 1000
        start = time.monotonic()
        with pytest.raises(ServerUnavailable):
            client.classify(cls(1))
        elapsed = time.monotonic() - start
    assert 0.2 < elapsed < 0.8
    assert 3 < len(server.batches) < 100


@pytest.mark.parametrize("error", [BadImage("not an image"), ServerError("boom"), ContractMismatch("x")])
def test_no_retry_on_other_errors(error: Exception) -> None:
    server = FakeServer()
    with fake_client(server) as client:
        server.failures = [error]
        with pytest.raises(type(error)):
            client.classify(cls(1))
    assert server.batches == [1]


def test_bad_image_carries_reason_and_source(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"bad jpeg")
    with fake_client(FakeServer()) as client, pytest.raises(BadImage) as info:
        client.classify(path)
    assert info.value.reason == "corrupt or truncated image: cannot identify image file"
    assert info.value.source == str(path) and str(path) in str(info.value)


def test_classify_many_keeps_order_with_requests_in_flight() -> None:
    server = FakeServer(delay=0.02, seed=1)
    ids = list(range(0, 1000, 7))
    with fake_client(server) as client:
        results = client.classify_many([cls(i) for i in ids], batch_size=5, concurrency=6)
        again = client.classify_many([cls(i) for i in ids], batch_size=5, concurrency=6)
    assert [r.class_id for r in results] == ids and again == results
    assert max(server.batches) == 5 and sum(server.batches) == 2 * len(ids)
    assert 1 < server.max_in_flight <= 6  # requests overlapped, never more than asked
    assert server.transports == 1 + 6  # per-thread (HTTP-style) transports: connect + workers, reused


def test_batch_size_is_clamped_to_server_max() -> None:
    server = FakeServer(max_batch_size=4)
    with fake_client(server) as client:
        results = client.classify_many([cls(i) for i in range(10)], batch_size=64, concurrency=1)
    assert server.batches == [4, 4, 2]
    assert [r.class_id for r in results] == list(range(10))


def test_bad_image_in_batch_is_isolated(tmp_path: Path) -> None:
    server = FakeServer()
    missing = tmp_path / "missing.png"
    images: list[Any] = [cls(1), b"bad bytes", cls(3), missing, cls(5)]
    with fake_client(server) as client:
        results = client.classify_many(images, batch_size=8)
    assert [r.ok for r in results] == [True, False, True, False, True]
    assert [r.class_id for r in results if isinstance(r, Verdict)] == [1, 3, 5]
    bad, unreadable = results[1], results[3]
    assert isinstance(bad, Failure) and bad.index == 1 and "cannot identify" in bad.reason
    assert (
        isinstance(unreadable, Failure)
        and unreadable.source == str(missing)
        and "cannot read" in unreadable.reason
    )
    # One batch of the 4 readable images, refused; then each retried alone.
    assert server.batches == [4, 1, 1, 1, 1]


def test_server_failure_stops_the_run() -> None:
    server = FakeServer()
    with fake_client(server) as client:
        server.failures = [ServerUnavailable("down")] * 100
        with pytest.raises(ServerUnavailable):
            client.classify_many([cls(i) for i in range(40)], batch_size=4, concurrency=2)


def test_unsupported_input_is_a_type_error() -> None:
    with fake_client(FakeServer()) as client, pytest.raises(TypeError, match="cannot classify a int"):
        client.classify(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("with_tqdm", [True, False])
def test_progress_bar(
    with_tqdm: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if not with_tqdm:
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if tqdm were not installed
    with fake_client(FakeServer()) as client:
        results = client.classify_many([cls(i) for i in range(10)], batch_size=3, progress=True)
    assert len(results) == 10
    err = capsys.readouterr().err
    assert ("10/10" in err) and (
        ("img/s" in err or "it/s" in err or "img" in err) if with_tqdm else "images" in err
    )


def test_async_client_same_surface() -> None:
    server = FakeServer(delay=0.01, seed=2)
    ids = list(range(0, 300, 3))

    async def main() -> tuple[Verdict, list[Any], list[Any]]:
        async with fake_async_client(server) as client:
            one = await client.classify(cls(9))
            many = await client.classify_many([cls(i) for i in ids], batch_size=3, concurrency=8)
            mixed = await client.classify_many([cls(1), b"bad", cls(2)], batch_size=8)
        return one, many, mixed

    one, many, mixed = asyncio.run(main())
    assert one.class_id == 9
    assert [r.class_id for r in many] == ids and server.max_in_flight > 1
    assert [r.ok for r in mixed] == [True, False, True]


def test_async_retry_and_no_retry_on_bad_input() -> None:
    server = FakeServer()

    async def main() -> None:
        async with fake_async_client(server) as client:
            server.failures = [ServerUnavailable("down"), Overloaded("queue full")]
            assert (await client.classify(cls(4))).class_id == 4
            with pytest.raises(BadImage):
                await client.classify(b"bad")

    asyncio.run(main())
    assert server.batches == [1, 1, 1, 1]


# ---------------------------------------------------------------------------------------------------
# Inputs, error mapping, connection options


def test_every_input_kind_becomes_bytes(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    rgb = photos["chelsea"]
    png = to_bytes(rgb)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), rgb)  # arrays travel losslessly
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(to_bytes(Image.fromarray(rgb))))), rgb)
    path = tmp_path / "cat.jpg"
    Image.fromarray(rgb).save(path, quality=90)
    raw = path.read_bytes()
    assert to_bytes(path) == raw and to_bytes(str(path)) == raw  # files are sent as they are
    assert to_bytes(io.BytesIO(raw)) == raw and to_bytes(bytearray(raw)) == raw
    with path.open("rb") as f:
        assert to_bytes(f) == raw
    assert to_bytes(rgb[:, :, 0]).startswith(b"\x89PNG")  # greyscale HW arrays too
    with pytest.raises(BadImage, match="uint8"):
        to_bytes(rgb.astype(np.float32))
    with pytest.raises(BadImage, match="shape"):
        to_bytes(np.zeros((2, 3, 4, 5), np.uint8))
    with path.open("r") as text, pytest.raises(TypeError, match="binary"):
        to_bytes(text)  # type: ignore[arg-type]


def test_expand_paths_recurses_into_folders(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.JPG", "a/b/2.png", "a/notes.txt", "3.webp"):
        (tmp_path / name).write_bytes(b"x")
    found = expand_paths([tmp_path / "a", tmp_path / "3.webp"])
    assert found == [tmp_path / "a/1.JPG", tmp_path / "a/b/2.png", tmp_path / "3.webp"]


def test_error_mapping() -> None:
    from tritonclient.utils import InferenceServerException as E

    conn = Connection("h:1", timeout=2)
    cases = [
        (E("failed to connect to all addresses", "StatusCode.UNAVAILABLE"), ServerUnavailable),
        (E("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED"), Timeout),
        (E("Request for unknown model: 'x' is not found", "StatusCode.NOT_FOUND"), ModelNotReady),
        (E("Request for unknown model: 'x' is not found", "400"), ModelNotReady),
        (E("corrupt image", "StatusCode.INVALID_ARGUMENT"), BadImage),
        (E("corrupt image", "400"), BadImage),
        (E("out of memory", "StatusCode.INTERNAL"), ServerError),
        (ConnectionRefusedError(111, "Connection refused"), ServerUnavailable),
        (TimeoutError("timed out"), Timeout),
        # Triton's queue policy: a full queue or a wait past the timeout, inside the ensemble
        (
            E("in ensemble 'fitguard', [request id: <id_unknown>] Exceeds maximum queue size", "503"),
            Overloaded,
        ),
        (E("in ensemble 'fitguard', Exceeds maximum queue size", "StatusCode.UNAVAILABLE"), Overloaded),
        (E("in ensemble 'fitguard', Request timeout expired", "StatusCode.UNAVAILABLE"), Overloaded),
        (E("Request timeout expired", "503"), Overloaded),
        # admission control at the entry step (fitguard.admission), at once
        (
            E(f"in ensemble 'fitguard', overloaded: {ADMISSION_REFUSED} (4)", "StatusCode.UNAVAILABLE"),
            Overloaded,
        ),
        (E(f"overloaded: {ADMISSION_REFUSED} (4 images in flight)", "503"), Overloaded),
    ]
    for exc, kind in cases:
        assert type(map_error(exc, conn, "infer")) is kind, exc
    refused = map_error(E("in ensemble 'fitguard', bad image: corrupt", "400"), conn, "infer")
    assert isinstance(refused, BadImage) and refused.reason == "bad image: corrupt"


def test_connection_options() -> None:
    conn = Connection("https://triton.example:8443/", protocol="http")
    assert conn.url == "triton.example:8443" and conn.ssl
    with pytest.raises(ValueError, match="protocol"):
        Connection("h:1", protocol="tcp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ssl_context"):
        Connection("h:1", protocol="grpc", ssl_context=object())  # type: ignore[arg-type]
    conn = Connection(
        "h:1",
        protocol="http",
        ssl=True,
        root_certificates="ca.pem",
        certificate_chain="c.pem",
        private_key="k.pem",
    )
    assert conn.http_ssl_options() == {"ca_certs": "ca.pem", "certfile": "c.pem", "keyfile": "k.pem"}


def test_tls_and_headers_reach_tritonclient(monkeypatch: pytest.MonkeyPatch) -> None:
    import tritonclient.grpc as grpcclient

    seen: dict[str, Any] = {}

    class Recorder:
        def __init__(self, url: str, **kwargs: Any) -> None:
            seen.update(url=url, **kwargs)

        def is_model_ready(self, model: str, **kwargs: Any) -> bool:
            seen["ready_kwargs"] = kwargs
            return False

        def get_model_repository_index(self, **kwargs: Any) -> dict[str, Any]:
            return {"models": [{"name": "fitguard", "state": "UNAVAILABLE"}]}

        def close(self) -> None:
            pass

    monkeypatch.setattr(grpcclient, "InferenceServerClient", Recorder)
    client = FitClient(
        "h:1", ssl=True, root_certificates="ca.pem", headers={"authorization": "Bearer t"}, timeout=3
    )
    with pytest.raises(ModelNotReady, match="ready models: none"):
        client.connect()
    assert seen["url"] == "h:1" and seen["ssl"] is True and seen["root_certificates"] == "ca.pem"
    assert seen["ready_kwargs"] == {"headers": {"authorization": "Bearer t"}, "client_timeout": 3}


def test_client_imports_without_torch() -> None:
    code = """
import sys
for name in ("torch", "torchvision", "onnxruntime", "onnx", "sklearn",
             "fitguard.backbones", "fitguard.classifier", "fitguard.quality", "fitguard.detector"):
    sys.modules[name] = None  # any import of these now raises ImportError
import fitguard.client, fitguard.client.cli, fitguard.client.aio
from fitguard.cli import main
client = fitguard.client.FitClient("127.0.0.1:1", retries=0)
try:
    main(["classify", "--help"])
except SystemExit as exc:
    assert exc.code == 0
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


# ---------------------------------------------------------------------------------------------------
# Integration: real tritonclient against nothing, then against the real embedded server (tiny backbone).

PROTOCOLS = ("grpc", "http")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_down_is_a_clear_error_within_the_retry_deadline(protocol: str) -> None:
    url = f"127.0.0.1:{free_port()}"  # nothing listens here
    start = time.monotonic()
    with pytest.raises(ServerUnavailable, match=url):
        FitClient(url, protocol, retries=10, retry_deadline=1.0, timeout=2).classify(b"x")  # type: ignore[arg-type]
    assert time.monotonic() - start < 1.0 + 2 + 0.5

    async def main() -> None:
        async with AsyncFitClient(url, protocol, retries=10, retry_deadline=1.0, timeout=2) as client:  # type: ignore[arg-type]
            await client.classify(b"x")

    start = time.monotonic()
    with pytest.raises(ServerUnavailable, match=url):
        asyncio.run(main())
    assert time.monotonic() - start < 1.0 + 2 + 0.5


def test_default_retries_outlast_a_heal_and_a_number_given_is_kept() -> None:
    """By default an unavailable server is retried until the deadline (a step reloads in seconds);
    a caller's own number of retries is the most for any failure, so ``--retries 2`` fails fast."""
    down = ServerUnavailable("step down")
    default = FitClient("127.0.0.1:1").retry_policy
    assert default.retries == 3
    assert default.wait_before(10, down, start=0.0, now=5.0) is not None  # still retrying 5 s in
    assert default.wait_before(4, Overloaded("busy"), start=0.0, now=1.0) is None  # overload: 3 retries
    assert FitClient("127.0.0.1:1", retries=2).retry_policy.wait_before(3, down, start=0.0, now=1.0) is None


def url_of(server: Any, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def views(photos: dict[str, np.ndarray], n: int) -> list[np.ndarray]:
    """``n`` distinct real images: crops of the scikit-image photos at several offsets and sizes."""
    rng = np.random.default_rng(0)
    out = []
    names = sorted(photos)
    for i in range(n):
        rgb = photos[names[i % len(names)]]
        h, w = rgb.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out.append(np.ascontiguousarray(rgb[top : top + side, left : left + side]))
    return out


def same(a: Verdict, b: Verdict) -> bool:
    """Equal up to float noise: batched and single requests may differ in the last bits, while distinct
    images (even on the tiny random backbone, whose outputs vary little) differ by far more."""
    return (
        [t.class_id for t in a.top5] == [t.class_id for t in b.top5]
        and [t.probability for t in a.top5] == pytest.approx([t.probability for t in b.top5], rel=1e-4)
        and a.quality == pytest.approx(b.quality, abs=3e-6)
        and a.fit_score == pytest.approx(b.fit_score, abs=3e-5)
    )


def check_consistent(v: Verdict) -> None:
    assert v.label == imagenet_classes()[v.class_id].name and v.wnid == imagenet_classes()[v.class_id].wnid
    assert v.top5[0].class_id == v.class_id and v.confidence == v.top5[0].probability
    probs = [t.probability for t in v.top5]
    assert probs == sorted(probs, reverse=True)
    assert v.fit == (v.fit_score >= 0)
    assert v.model_version == "1"


@pytest.mark.server
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_input_kind_against_the_server(
    tiny_server: Any, protocol: str, photos: dict[str, np.ndarray], tmp_path: Path
) -> None:
    rgb = photos["chelsea"]
    path = tmp_path / "chelsea.png"
    Image.fromarray(rgb).save(path)
    raw = path.read_bytes()
    with FitClient(url_of(tiny_server, protocol), protocol) as client:  # type: ignore[arg-type]
        assert client.info.name == "fitguard" and client.info.max_batch_size >= 1
        ref = client.classify(path)
        check_consistent(ref)
        assert ref.source == str(path)
        with path.open("rb") as f:
            kinds = [str(path), raw, bytearray(raw), io.BytesIO(raw), f, Image.fromarray(rgb), rgb]
            for kind in kinds:
                v = client.classify(kind)
                assert same(v, ref), type(kind)
        assert client.classify(Image.open(path)).source == str(path)


@pytest.mark.server
def test_grpc_and_http_agree(tiny_server: Any, photos: dict[str, np.ndarray]) -> None:
    images = views(photos, 6)
    results = {}
    for protocol in PROTOCOLS:
        with FitClient(url_of(tiny_server, protocol), protocol) as client:  # type: ignore[arg-type]
            results[protocol] = client.classify_many(images, batch_size=3)
    assert all(same(a, b) for a, b in zip(results["grpc"], results["http"], strict=True))


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_order_is_kept_under_concurrency(
    tiny_server: Any, protocol: str, photos: dict[str, np.ndarray]
) -> None:
    images = views(photos, 20)
    with FitClient(url_of(tiny_server, protocol), protocol) as client:  # type: ignore[arg-type]
        singles = [client.classify(im) for im in images]
        batched = client.classify_many(images, batch_size=3, concurrency=4)
    assert all(isinstance(v, Verdict) and same(v, s) for v, s in zip(batched, singles, strict=True))
    # The comparison is sharp enough that a swap would show: distinct images are (almost) never "same".
    lookalikes = sum(same(a, b) for i, a in enumerate(singles) for b in singles[i + 1 :])
    assert lookalikes <= 2


@pytest.mark.server
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_images_among_good_ones(
    tiny_server: Any, protocol: str, photos: dict[str, np.ndarray], tmp_path: Path
) -> None:
    good = views(photos, 3)
    truncated = to_bytes(good[0])[:300]
    images: list[Any] = [
        good[0],
        b"this is not an image",
        good[1],
        truncated,
        good[2],
        tmp_path / "missing.jpg",
    ]
    with FitClient(url_of(tiny_server, protocol), protocol) as client:  # type: ignore[arg-type]
        results = client.classify_many(images, batch_size=8)
        singles = [client.classify(im) for im in good]
        with pytest.raises(BadImage) as info:
            client.classify(b"this is not an image")
    assert [r.ok for r in results] == [True, False, True, False, True, False]
    assert all(same(r, s) for r, s in zip([results[0], results[2], results[4]], singles, strict=True))
    # The server's own words, without Triton's "in ensemble 'fitguard', " wrapping.
    assert info.value.reason.startswith("bad image: not a recognised image format")
    assert "not a recognised image format" in results[1].reason
    assert "truncated" in results[3].reason or "corrupt" in results[3].reason
    assert "cannot read file" in results[5].reason


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_client_against_the_server(
    tiny_server: Any, protocol: str, photos: dict[str, np.ndarray]
) -> None:
    images = views(photos, 12)
    with FitClient(url_of(tiny_server, protocol), protocol) as client:  # type: ignore[arg-type]
        singles = [client.classify(im) for im in images]

    async def main() -> tuple[list[Verdict], list[Any], list[Any]]:
        async with AsyncFitClient(url_of(tiny_server, protocol), protocol) as client:  # type: ignore[arg-type]
            kinds = [
                images[0],
                Image.fromarray(images[1]),
                to_bytes(images[2]),
                io.BytesIO(to_bytes(images[3])),
            ]
            one = list(await asyncio.gather(*(client.classify(k) for k in kinds)))
            many = await client.classify_many(images, batch_size=2, concurrency=4)
            mixed = await client.classify_many([images[0], b"garbage", images[1]], batch_size=4)
        return one, many, mixed

    one, many, mixed = asyncio.run(main())
    assert all(same(a, b) for a, b in zip(one, singles[:4], strict=True))
    assert all(same(a, b) for a, b in zip(many, singles, strict=True))
    assert [r.ok for r in mixed] == [True, False, True] and "not a recognised" in mixed[1].reason


@pytest.mark.server
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_contract_mismatch_and_unknown_model_on_a_real_server(tiny_server: Any, protocol: str) -> None:
    url = url_of(tiny_server, protocol)
    with pytest.raises(ContractMismatch) as info, FitClient(url, protocol, model="preprocess"):  # type: ignore[arg-type]
        pass
    msg = str(info.value)
    assert "'preprocess'" in msg and "outputs CLASS_ID, TOP5_IDS" in msg and "CLASSIFIER_INPUT UINT8" in msg
    with (
        pytest.raises(ModelNotReady, match="ready models: .*fitguard"),
        FitClient(url, protocol, model="nope"),
    ):  # type: ignore[arg-type]
        pass

    async def main() -> None:
        async with AsyncFitClient(url, protocol, model="preprocess"):  # type: ignore[arg-type]
            pass

    with pytest.raises(ContractMismatch, match="outputs CLASS_ID, TOP5_IDS"):
        asyncio.run(main())
