"""Verdict metrics and the overload settings of an export.

The server test sends images whose verdicts are known beforehand (the in-process ONNX pipeline on the same
files) plus bad images, then scrapes the real server's ``/metrics`` and finds exactly what was sent: fit and
unfit counts, the quality histogram, the refusal reasons and the unfit classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_detector
from scrape import scrape

from fitguard import contract as c
from fitguard import monitoring as m
from fitguard.export.configs import Serving, check_signature, render_config
from fitguard.export.monitoring import drop_monitor_step
from fitguard.export.overload import QueuePolicy
from fitguard.export.repository import SOURCE
from fitguard.preprocess import PreprocessSettings, encode_image
from fitguard.presets import preset_for
from fitguard.repository import read_config

QUEUED = (c.PREPROCESS, c.CLASSIFIER, c.QUALITY_MODEL, c.DETECTOR, c.MONITOR)


# ------------------------------------------------------------------------------------------- configs


def _render(name: str, queue: QueuePolicy | None = None, monitoring: bool = True):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    settings = PreprocessSettings(preset_for("efficientnet_lite0"), 4, backbone="efficientnet_lite0")
    text = render_config(
        SOURCE,
        name,
        settings,
        threshold=0.0,
        serving=Serving(queue=queue or QueuePolicy(), monitoring=monitoring),
        extra={},
    )
    return text_format.Parse(text, mc.ModelConfig())


def test_every_model_gets_the_queue_policy() -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    for name in QUEUED:
        # The size is bounded at the entry step only (export/overload.py: a Triton 2.51 ensemble bug).
        size = 7 if name == c.PREPROCESS else 0
        source = read_config(SOURCE / name / "config.pbtxt").dynamic_batching.default_queue_policy
        assert (source.max_queue_size > 0) == (name == c.PREPROCESS), name
        assert source.timeout_action == mc.ModelQueuePolicy.REJECT and source.default_timeout_microseconds
        queue = _render(name, QueuePolicy(max_queue_size=7, timeout_ms=250)).dynamic_batching
        policy = queue.default_queue_policy
        assert (policy.max_queue_size, policy.default_timeout_microseconds) == (size, 250_000), name
        assert policy.timeout_action == mc.ModelQueuePolicy.REJECT and policy.allow_timeout_override
    assert not _render(c.ENSEMBLE).HasField("dynamic_batching")  # an ensemble has no queue of its own
    no_timeout = _render(c.CLASSIFIER, QueuePolicy(max_queue_size=0, timeout_ms=0)).dynamic_batching
    assert no_timeout.default_queue_policy.timeout_action == mc.ModelQueuePolicy.DELAY
    with pytest.raises(ValueError):
        QueuePolicy(max_queue_size=-1)


def test_monitoring_off_drops_the_step_and_keeps_the_contract() -> None:
    on, off = _render(c.ENSEMBLE), _render(c.ENSEMBLE, monitoring=False)
    assert [s.model_name for s in on.ensemble_scheduling.step][-1] == c.MONITOR
    steps = {s.model_name: s for s in off.ensemble_scheduling.step}
    assert c.MONITOR not in steps
    check_signature(off, c.DEFAULT_PATCHES)
    # Every ensemble output is now written by a remaining step, under its own name.
    written = {v for s in steps.values() for v in s.output_map.values()}
    assert {t.name for t in c.ENSEMBLE_OUTPUTS} <= written
    assert steps[c.DETECTOR].input_map[c.QUALITY_SCORE] == c.QUALITY_SCORE
    assert dict(steps[c.QUALITY_MODEL].output_map) == {c.QUALITY_SCORE: c.QUALITY_SCORE}
    assert _render(c.PREPROCESS, monitoring=False).parameters["monitoring"].string_value == "false"
    assert _render(c.PREPROCESS).parameters["monitoring"].string_value == "true"
    drop_monitor_step(off)  # idempotent
    assert len(off.ensemble_scheduling.step) == 4


# --------------------------------------------------------------------------------- metrics, no server


class _FakeMetric:
    def __init__(self, labels: dict, buckets: list | None = None) -> None:
        self.labels, self.buckets, self.value, self.observed = labels, buckets, 0, []

    def increment(self, n: int) -> None:
        self.value += n

    def observe(self, x: float) -> None:
        self.observed.append(x)


class _FakeFamily:
    COUNTER, HISTOGRAM = "counter", "histogram"
    created: dict[str, _FakeFamily] = {}

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind, self.metrics = name, kind, []
        _FakeFamily.created[name] = self

    def Metric(self, labels: dict, buckets: list | None = None) -> _FakeMetric:  # noqa: N802 - Triton's name
        metric = _FakeMetric(labels, buckets)
        self.metrics.append(metric)
        return metric


class _FakePbUtils:
    MetricFamily = _FakeFamily


def test_verdict_metrics_bound_the_class_labels() -> None:
    metrics = m.VerdictMetrics(_FakePbUtils, version="3", class_names=["a", "b", "c", "d"], max_classes=2)
    fit = np.array([[True], [False], [False], [False], [False]])
    metrics.record(
        class_id=np.array([[0], [1], [2], [3], [1]]),
        quality=np.array([[0.9], [0.2], [0.3], [0.4], [0.5]], np.float32),
        fit=fit,
        score=np.array([[0.5], [-1.0], [-2.0], [-0.1], [-0.3]], np.float32),
    )
    assert (metrics.fit.value, metrics.unfit.value, metrics.refused_unfit.value) == (1, 4, 4)
    assert metrics.fit.labels == {"verdict": "fit", "version": "3"}
    by_class = {
        x.labels["class_id"]: (x.labels["label"], x.value) for x in metrics.by_class._metrics.values()
    }
    assert by_class == {"1": ("b", 2), "2": ("c", 1), m.OTHER_CLASS: (m.OTHER_CLASS, 1)}
    assert len(metrics.quality.observed) == 5 and metrics.quality.buckets == list(m.QUALITY_BUCKETS)
    assert _FakeFamily.created[m.QUALITY].kind == _FakeFamily.HISTOGRAM


# ---------------------------------------------------------------------------------------- the server


def _split_threshold(scores: np.ndarray) -> float:
    """A threshold in the widest gap between neighbouring scores in the middle half, so that between a
    quarter and three quarters of the images are fit and no score sits near it."""
    ordered = np.sort(scores.reshape(-1))
    n = len(ordered)
    lo, hi = n // 4, n - n // 4
    k = lo + int(np.argmax(np.diff(ordered[lo - 1 : hi])))
    assert ordered[k] - ordered[k - 1] > 1e-4, "scores too close to split"
    return float((ordered[k] + ordered[k - 1]) / 2)


@pytest.fixture(scope="module")
def images(photos) -> list[bytes]:
    out = []
    for name in sorted(photos):
        rgb = photos[name]
        for scale in (1, 2, 3):
            out.append(encode_image(rgb[::scale, ::scale], "PNG"))
    return out


@pytest.fixture(scope="module")
def split_repository(tiny_repository: Path, images, tmp_path_factory) -> Path:
    """The tiny repository re-exported with a detector threshold that splits ``images`` into fit and unfit."""
    from fitguard.detector import save_detector
    from fitguard.export import export_repository
    from fitguard.reference import OnnxPipeline

    scores = OnnxPipeline.from_repository(tiny_repository, threads=1).predict(images)[c.FIT_SCORE]
    root = tmp_path_factory.mktemp("split")
    save_detector(root / "detector.joblib", synthetic_detector(threshold=_split_threshold(scores)))
    return export_repository(
        root / "repository",
        backbone="tiny",
        head=tiny_repository / "iqa_head.pt",
        detector=root / "detector.joblib",
        log=lambda _: None,
    )


@pytest.mark.slow
@pytest.mark.server
def test_metrics_count_exactly_what_was_sent(split_repository: Path, images) -> None:
    from fitguard.client import BadImage, FitClient
    from fitguard.reference import OnnxPipeline
    from fitguard.serve import EmbeddedServer

    expected = OnnxPipeline.from_repository(split_repository, threads=1).predict(images)
    fit = expected[c.FIT].reshape(-1)
    assert 0 < fit.sum() < len(fit)  # both verdicts are exercised
    bad = [b"not an image", b"\x89PNG\r\n\x1a\n truncated", b"GIF89a"]
    rounds = 2
    with EmbeddedServer(split_repository, http_port=0, grpc_port=0, metrics_port=0) as server:
        before = scrape(server.metrics_url)
        assert (
            m.VERDICTS in before and m.QUALITY + "_count" in before
        )  # families exist before the first verdict
        served = []
        with FitClient(server.grpc_url, retries=0) as client:
            for _ in range(rounds):
                served += [client.classify(image) for image in images]
                for payload in bad:
                    with pytest.raises(BadImage):
                        client.classify(payload)
        after = scrape(server.metrics_url)

    assert [v.fit for v in served] == [bool(f) for f in np.tile(fit, rounds)]

    def delta(sample: str, **labels: str) -> float:
        key = tuple(sorted({"version": "1", **labels}.items()))
        return after[sample][key] - before.get(sample, {}).get(key, 0.0)

    def bucket(edge: float) -> float:
        edges = {dict(k)["le"] for k in after[m.QUALITY + "_bucket"]}
        (le,) = (e for e in edges if float(e) == edge)  # Triton writes 1 for 1.0
        return delta(m.QUALITY + "_bucket", le=le)

    n_fit, n_unfit = int(fit.sum()) * rounds, int((~fit).sum()) * rounds
    assert delta(m.VERDICTS, verdict="fit") == n_fit
    assert delta(m.VERDICTS, verdict="unfit") == n_unfit
    assert delta(m.REFUSALS, reason=m.REASON_UNFIT) == n_unfit
    assert delta(m.REFUSALS, reason=m.REASON_BAD_IMAGE) == len(bad) * rounds
    quality = np.array([v.quality for v in served], np.float32).astype(np.float64)
    assert delta(m.QUALITY + "_count") == len(served)
    assert delta(m.QUALITY + "_sum") == pytest.approx(quality.sum(), rel=1e-6)
    for edge in m.QUALITY_BUCKETS:
        assert bucket(edge) == np.sum(quality <= edge), edge
    assert delta(m.FIT_SCORE + "_count") == len(served)
    unfit_classes: dict[int, int] = {}
    for v in served:
        if not v.fit:
            unfit_classes[v.class_id] = unfit_classes.get(v.class_id, 0) + 1
    for class_id, count in unfit_classes.items():
        label = served[[v.class_id for v in served].index(class_id)].label
        assert delta(m.UNFIT_BY_CLASS, class_id=str(class_id), label=label) == count


@pytest.mark.slow
@pytest.mark.server
def test_monitoring_off_serves_the_same_answers_without_verdict_metrics(
    split_repository: Path, images, tmp_path: Path
) -> None:
    import json

    from fitguard.client import BadImage, FitClient
    from fitguard.export import export_repository
    from fitguard.reference import OnnxPipeline
    from fitguard.serve import EmbeddedServer

    off = export_repository(
        tmp_path / "off",
        backbone="tiny",
        head=split_repository / "iqa_head.pt",
        detector=split_repository / "detector.joblib",
        monitoring="off",
        log=lambda _: None,
    )
    arguments = json.loads((off / "manifest.json").read_text())["arguments"]
    assert arguments["monitoring"] == "off" and not (off / c.MONITOR).exists()
    expected = OnnxPipeline.from_repository(split_repository, threads=1).predict(images)
    with EmbeddedServer(off, http_port=0, grpc_port=0, metrics_port=0) as server:
        with FitClient(server.grpc_url, retries=0) as client:
            served = [client.classify(image) for image in images]
            with pytest.raises(BadImage):
                client.classify(b"not an image")
        samples = scrape(server.metrics_url)
    assert [v.fit for v in served] == expected[c.FIT].reshape(-1).tolist()
    assert np.allclose([v.fit_score for v in served], expected[c.FIT_SCORE].reshape(-1), atol=1e-5)
    assert not [name for name in samples if name.startswith("fitguard_")]
