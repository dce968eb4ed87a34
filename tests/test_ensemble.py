"""The served ensemble through the real embedded Triton server equals the in-process pipelines."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as http
from conftest import infer_ensemble
from PIL import Image, ImageFilter
from tritonclient.utils import InferenceServerException

from fitguard import contract as c
from fitguard.preprocess import encode_image
from fitguard.reference import OnnxPipeline, ReferencePipeline

pytestmark = pytest.mark.server
OUTPUTS = [t.name for t in c.ENSEMBLE_OUTPUTS]


def _variants(name: str, rgb: np.ndarray) -> dict[str, bytes]:
    """A photo and degraded versions of it, in the formats and modes clients send."""
    img = Image.fromarray(rgb)
    noisy = np.clip(rgb + np.random.default_rng(0).normal(0, 0.26 * 255, rgb.shape), 0, 255).astype(np.uint8)
    return {
        f"{name}": encode_image(img),
        f"{name}/blur": encode_image(img.filter(ImageFilter.GaussianBlur(6))),
        f"{name}/noise": encode_image(noisy),
        f"{name}/jpeg7": encode_image(img, "JPEG", quality=7),
        f"{name}/small-gray": encode_image(img.convert("L").resize((96, 64))),  # upscaled for the patches
    }


@pytest.fixture(scope="module")
def images(photos: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: v for name, rgb in photos.items() for k, v in _variants(name, rgb).items()}


@pytest.fixture(scope="module")
def reference(tiny_repository: Path) -> ReferencePipeline:
    return ReferencePipeline.from_repository(tiny_repository)


def _assert_same(
    served: dict[str, np.ndarray], expected: dict[str, np.ndarray], rows: slice = slice(None)
) -> dict[str, float]:
    for name in (c.CLASS_ID, c.TOP5_IDS, c.FIT):
        np.testing.assert_array_equal(served[name], expected[name][rows], err_msg=name)
    deltas = {
        n: float(np.max(np.abs(served[n] - expected[n][rows])))
        for n in (c.QUALITY_SCORE, c.FIT_SCORE, c.TOP5_PROBS)
    }
    assert all(d <= 1e-4 for d in deltas.values()), deltas
    return deltas


def test_served_answers_equal_the_reference_pipeline(
    tiny_server, tiny_repository: Path, images: dict[str, bytes], reference: ReferencePipeline
) -> None:
    names = list(images)
    expected = reference.predict([images[n] for n in names])
    onnx_expected = OnnxPipeline.from_repository(tiny_repository).predict([images[n] for n in names])
    served = [infer_ensemble(tiny_server.http_url, [images[n]]) for n in names]  # one image per request
    stacked = {k: np.concatenate([s[k] for s in served]) for k in OUTPUTS}
    for t in c.ENSEMBLE_OUTPUTS:
        assert stacked[t.name].shape == (len(names), *t.shape)
    deltas = _assert_same(stacked, expected)
    onnx_deltas = _assert_same(stacked, onnx_expected)
    print(
        f"\n{len(names)} images: served vs torch/sklearn reference max deltas {deltas}; "
        f"vs in-process ONNX {onnx_deltas}"
    )


def test_several_images_in_one_request(
    tiny_server, images: dict[str, bytes], reference: ReferencePipeline
) -> None:
    batch = [images[n] for n in ("chelsea", "coffee/blur", "rocket/small-gray", "astronaut/jpeg7")]
    _assert_same(infer_ensemble(tiny_server.http_url, batch), reference.predict(batch))


def _preprocess_counts(url: str) -> tuple[int, int]:
    with http.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(c.PREPROCESS)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_bad_image_fails_alone_among_batched_requests(
    tiny_server, images: dict[str, bytes], reference: ReferencePipeline
) -> None:
    good = [
        images[n]
        for n in ("chelsea", "astronaut/noise", "coffee", "rocket/blur", "chelsea/jpeg7", "coffee/small-gray")
    ]
    batch = good[:3] + [b"GIF89a but not really"] + good[3:]
    expected = reference.predict(good)
    clients = [http.InferenceServerClient(tiny_server.http_url) for _ in batch]
    start = threading.Barrier(len(batch))

    def send(i: int) -> dict[str, np.ndarray] | Exception:
        tensor = http.InferInput(c.IMAGE, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[batch[i]]], dtype=object))
        start.wait()  # all requests arrive together, so the dynamic batcher groups them
        try:
            result = clients[i].infer(c.ENSEMBLE, [tensor])
            return {n: result.as_numpy(n) for n in OUTPUTS}
        except InferenceServerException as exc:
            return exc

    inferences, executions = _preprocess_counts(tiny_server.http_url)
    with ThreadPoolExecutor(len(batch)) as pool:
        answers = list(pool.map(send, range(len(batch))))
    for client in clients:
        client.close()
    after = _preprocess_counts(tiny_server.http_url)
    inferences, executions = after[0] - inferences, after[1] - executions
    # Fewer executions than requests: the bad image shared a batch with good ones.
    assert inferences == len(batch) and executions < inferences, (inferences, executions)
    bad = answers.pop(3)
    assert isinstance(bad, InferenceServerException)
    assert "bad image" in str(bad) and bad.status() == "400"
    assert not [a for a in answers if isinstance(a, Exception)], answers
    _assert_same({k: np.concatenate([a[k] for a in answers]) for k in OUTPUTS}, expected)
    # The same bad image inside a multi-image request fails that request with the reason.
    with pytest.raises(InferenceServerException, match="bad image"):
        infer_ensemble(tiny_server.http_url, [good[0], b"\x89PNG\r\n\x1a\n truncated"])


def test_classifier_labels_for_the_classification_extension(
    tiny_server, images: dict[str, bytes], reference
) -> None:
    crop, _ = reference.settings.prepare(images["chelsea"])
    with http.InferenceServerClient(tiny_server.http_url) as client:
        tensor = http.InferInput(c.CLASSIFIER_INPUT, [1, *crop.shape], "UINT8")
        tensor.set_data_from_numpy(crop[None])
        result = client.infer(
            c.CLASSIFIER, [tensor], outputs=[http.InferRequestedOutput(c.PROBS, class_count=3)]
        )
    top = [entry.decode().split(":") for entry in result.as_numpy(c.PROBS).ravel()]
    expected_ids = reference.predict([images["chelsea"]])[c.TOP5_IDS][0, :3]
    from fitguard.labels import label

    assert [int(i) for _, i, _ in top] == expected_ids.tolist()
    assert [name for _, _, name in top] == [label(int(i)) for i in expected_ids]


@pytest.mark.slow
def test_changed_model_file_fails_the_load(tiny_repository: Path, tmp_path: Path) -> None:
    from fitguard.serve import EmbeddedServer, ModelLoadError

    repo = Path(shutil.copytree(tiny_repository, tmp_path / "repo"))
    with (repo / c.QUALITY_MODEL / "1" / "model.onnx").open("ab") as f:
        f.write(b"\0")
    with (
        pytest.raises(ModelLoadError) as info,
        EmbeddedServer(repo, http_port=0, grpc_port=0, metrics_port=0),
    ):
        pass
    assert c.PREPROCESS in info.value.failures
    assert "quality/1/model.onnx: changed since export" in str(info.value) + info.value.log
