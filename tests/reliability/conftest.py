"""Shared pieces of the reliability tests: distinct good images and their reference answers.

The reference answers come from a first, sequential pass through the real server; under concurrency,
faults and hostile neighbours, every good request must get *its own* answer back (compared output by
output), which is how a lost, duplicated or swapped response would show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from fitguard.contract import (
    CLASS_ID,
    ENSEMBLE,
    ENSEMBLE_OUTPUTS,
    FIT,
    FIT_SCORE,
    IMAGE,
    QUALITY_SCORE,
    TOP5_IDS,
    TOP5_PROBS,
)
from fitguard.preprocess import encode_image

# Dynamic batching changes batch composition; ONNX Runtime on the CPU gave bit-identical outputs for an
# image alone or in a batch of 16 here (measured delta 0.0), so the tolerance only allows for other kernels.
FLOAT_TOL = 1e-6


@dataclass(frozen=True)
class Answer:
    """The ensemble's outputs for one image, comparable across runs."""

    class_id: int
    top5_ids: tuple[int, ...]
    top5_probs: np.ndarray
    quality: float
    fit: bool
    fit_score: float

    @classmethod
    def from_result(cls, result, row: int = 0) -> Answer:
        return cls(
            class_id=int(result.as_numpy(CLASS_ID)[row][0]),
            top5_ids=tuple(int(i) for i in result.as_numpy(TOP5_IDS)[row]),
            top5_probs=np.asarray(result.as_numpy(TOP5_PROBS)[row], dtype=np.float64),
            quality=float(result.as_numpy(QUALITY_SCORE)[row][0]),
            fit=bool(result.as_numpy(FIT)[row][0]),
            fit_score=float(result.as_numpy(FIT_SCORE)[row][0]),
        )

    @classmethod
    def from_verdict(cls, verdict) -> Answer:
        """From the client SDK's :class:`fitguard.client.Verdict`."""
        return cls(
            class_id=verdict.class_id,
            top5_ids=tuple(t.class_id for t in verdict.top5),
            top5_probs=np.array([t.probability for t in verdict.top5], dtype=np.float64),
            quality=float(verdict.quality),
            fit=bool(verdict.fit),
            fit_score=float(verdict.fit_score),
        )

    def vector(self) -> np.ndarray:
        return np.concatenate([self.top5_probs, [self.quality, self.fit_score]])

    def mismatch(self, other: Answer, tol: float = FLOAT_TOL) -> str | None:
        """Why ``other`` is not this answer, or None when it is."""
        if other.top5_ids != self.top5_ids or other.class_id != self.class_id:
            return f"classes {other.class_id}/{other.top5_ids} != {self.class_id}/{self.top5_ids}"
        delta = float(np.max(np.abs(other.vector() - self.vector())))
        if delta > tol:
            return f"outputs differ by {delta:.3g} (> {tol})"
        if other.fit != self.fit and abs(self.fit_score) > tol:
            return f"fit {other.fit} != {self.fit}"
        return None


def good_images(photos: dict[str, np.ndarray], count: int = 24) -> list[bytes]:
    """``count`` distinct, realistic images: crops, flips and scales of the photos, as PNG and JPEG."""
    out: list[bytes] = []
    names = sorted(photos)
    for i in range(count):
        rgb = photos[names[i % len(names)]]
        variant = i // len(names)
        h, w = rgb.shape[:2]
        top, left = (variant * 17) % max(1, h // 4), (variant * 29) % max(1, w // 4)
        crop = rgb[top : top + 3 * h // 4, left : left + 3 * w // 4]
        if variant % 2:
            crop = crop[:, ::-1]
        img = Image.fromarray(np.ascontiguousarray(crop))
        scale = 0.5 + 0.1 * (variant % 4)
        img = img.resize((max(32, int(img.width * scale)), max(32, int(img.height * scale))))
        out.append(encode_image(img, "JPEG" if variant % 3 == 2 else "PNG", quality=92))
    assert len(set(out)) == count
    return out


def grpc_infer(client, payloads: list[bytes], model: str = ENSEMBLE, timeout: float | None = 60):
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput(IMAGE, [len(payloads), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[p] for p in payloads], dtype=object))
    outputs = [grpcclient.InferRequestedOutput(t.name) for t in ENSEMBLE_OUTPUTS]
    return client.infer(model, [inp], outputs=outputs, client_timeout=timeout)


@pytest.fixture(scope="session")
def good_payloads(photos) -> list[bytes]:
    return good_images(photos)


@pytest.fixture(scope="session")
def reference_answers(tiny_server, good_payloads) -> list[Answer]:
    """Each good image sent alone, one after another: the answers everything else is compared with."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(tiny_server.grpc_url)
    try:
        answers = [Answer.from_result(grpc_infer(client, [p])) for p in good_payloads]
    finally:
        client.close()
    # A swapped response can only be caught if different images give different answers.
    vectors = np.stack([a.vector() for a in answers])
    for i in range(len(answers)):
        others = np.delete(vectors, i, axis=0)
        closest = float(np.min(np.max(np.abs(others - vectors[i]), axis=1)))
        assert closest > FLOAT_TOL, f"image {i} is indistinguishable from another (closest {closest:.2g})"
    return answers


def percentile_ms(latencies: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(latencies) * 1000.0, q))


def ensemble_counts(http_url: str) -> tuple[int, int]:
    """(successful, failed) requests of the ensemble so far, from Triton's statistics extension."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url)
    try:
        stats = client.get_inference_statistics(ENSEMBLE)["model_stats"][0]["inference_stats"]
    finally:
        client.close()
    return int(stats["success"]["count"]), int(stats["fail"]["count"])
