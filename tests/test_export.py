"""Export: graphs that prove themselves, the repository writer, the manifest, and the source configs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import synthetic_detector

from fitguard import contract as c
from fitguard.backbones import build_backbone
from fitguard.cli import main
from fitguard.detector import quality_logit, save_detector
from fitguard.export import verify
from fitguard.export.accelerators import apply_accelerator
from fitguard.export.configs import Serving, check_signature, render_config
from fitguard.export.onnx_export import export_detector
from fitguard.export.repository import SOURCE, export_repository
from fitguard.labels import labels_text
from fitguard.manifest import RepositoryIntegrityError, verify_repository
from fitguard.preprocess import Limits, PreprocessSettings, encode_image
from fitguard.presets import preset_for
from fitguard.quality import BadHeadError, QualityHead, save_head
from fitguard.reference import OnnxPipeline, ReferencePipeline, reference_outputs
from fitguard.repository import read_config, repository_settings

torch.set_num_threads(2)
MODELS = (c.ENSEMBLE, *c.MODELS)


def _inputs(
    tmp_path: Path, backbone: str, weights: str | None = "default", seed: int = 0
) -> tuple[Path, Path]:
    """A seeded random quality head for ``backbone`` and a synthetic detector, as files."""
    net = build_backbone(backbone, weights)
    torch.manual_seed(seed)
    save_head(tmp_path / "head.pt", QualityHead(net.quality_dim), net)
    save_detector(tmp_path / "detector.joblib", synthetic_detector(seed, threshold=0.05))
    return tmp_path / "head.pt", tmp_path / "detector.joblib"


def _parity_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("parity ")]


# ------------------------------------------------------------------------------------------- sources


def test_source_configs_follow_the_contract() -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    for name in MODELS:
        config = read_config(SOURCE / name / "config.pbtxt")
        assert config.name == name
        assert config.max_batch_size > 0
        check_signature(config, c.DEFAULT_PATCHES)
        if name != c.ENSEMBLE:
            assert config.dynamic_batching.max_queue_delay_microseconds > 0
            assert list(config.dynamic_batching.preferred_batch_size)
            assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    ensemble = read_config(SOURCE / c.ENSEMBLE / "config.pbtxt")
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        c.PREPROCESS,
        c.CLASSIFIER,
        c.QUALITY_MODEL,
        c.DETECTOR,
        c.MONITOR,
    ]
    classifier = read_config(SOURCE / c.CLASSIFIER / "config.pbtxt")
    assert classifier.output[0].label_filename == "labels.txt"
    # The labels are the export's (the classifier's classes), written into the repository, not committed.
    assert not (SOURCE / c.CLASSIFIER / "labels.txt").exists()
    assert (SOURCE / c.ENSEMBLE / "1" / ".gitkeep").is_file()
    assert (SOURCE / c.PREPROCESS / "1" / "model.py").is_file()


def test_accelerators_set_instance_groups_and_tensorrt() -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    settings = PreprocessSettings(preset_for("efficientnet_lite0"), 4, backbone="efficientnet_lite0")
    for accelerator, gpu in (("none", False), ("cuda", True), ("tensorrt-fp16", True)):
        for name in MODELS:
            config = read_config(SOURCE / name / "config.pbtxt")
            apply_accelerator(config, accelerator, instances=3)
            if name == c.ENSEMBLE:
                assert not config.instance_group
                continue
            (group,) = config.instance_group
            on_gpu = gpu and name in (c.CLASSIFIER, c.QUALITY_MODEL)
            assert group.kind == (
                mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU
            )
            assert group.count == (1 if name == c.DETECTOR else 3)
            accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
            if accelerator == "tensorrt-fp16" and on_gpu:
                assert [(a.name, dict(a.parameters)) for a in accelerators] == [
                    ("tensorrt", {"precision_mode": "FP16"})
                ]
            else:
                assert not accelerators
        text = render_config(
            SOURCE,
            c.QUALITY_MODEL,
            settings,
            threshold=0.0,
            serving=Serving(accelerator=accelerator, instances=3),
            extra={},
        )
        assert "KIND_GPU" in text if gpu else "KIND_CPU" in text
    with pytest.raises(ValueError, match="unknown accelerator"):
        apply_accelerator(read_config(SOURCE / c.CLASSIFIER / "config.pbtxt"), "tpu")


def test_preprocess_settings_round_trip_through_parameters() -> None:
    settings = PreprocessSettings(
        preset_for("resnet152", "IMAGENET1K_V2"), 7, Limits(max_side=999), "resnet152"
    )
    assert PreprocessSettings.from_parameters(settings.to_parameters()) == settings


# ------------------------------------------------------------------------------------- the repository


def test_tiny_repository_files_configs_and_manifest(tiny_repository: Path) -> None:
    manifest = json.loads((tiny_repository / "manifest.json").read_text())
    for name in (c.CLASSIFIER, c.QUALITY_MODEL, c.DETECTOR):
        assert (tiny_repository / name / "1" / "model.onnx").is_file()
    for name in MODELS:
        config = read_config(tiny_repository / name / "config.pbtxt")
        check_signature(config, c.DEFAULT_PATCHES)
    # Every file, model files included, is listed with its real SHA-256.
    listed = manifest["files"]
    on_disk = sorted(
        p.relative_to(tiny_repository).as_posix() for p in tiny_repository.rglob("*") if p.is_file()
    )
    # (A server that already ran on this repository leaves its __pycache__, which is not guarded.)
    assert sorted(listed) == [p for p in on_disk if p != "manifest.json" and "__pycache__" not in p]
    for rel, digest in listed.items():
        assert hashlib.sha256((tiny_repository / rel).read_bytes()).hexdigest() == digest
    args = manifest["arguments"]
    assert (args["backbone"], args["patches"], args["precision"], args["accelerator"]) == (
        "tiny",
        4,
        "fp32",
        "none",
    )
    assert args["weights_id"] == "seed0" and args["preset"]["resize"] == 256
    assert {"torch", "onnx", "onnxruntime", "scikit-learn", "skl2onnx", "fitguard"} <= set(
        manifest["versions"]
    )
    assert all(report["passed"] for report in manifest["parity"].values())
    assert manifest["parity"]["classifier"]["batch"] != 2  # checked at a batch size other than the export one
    assert repository_settings(tiny_repository) == PreprocessSettings(preset_for("tiny"), 4, backbone="tiny")
    assert verify_repository(tiny_repository)["files"] == listed
    for name in (c.CLASSIFIER, c.ENSEMBLE):  # ImageNet's classes, the default classifier's labels
        assert (tiny_repository / name / "labels.txt").read_text(encoding="utf-8") == labels_text()


def test_changed_or_missing_model_file_is_caught(tiny_repository: Path, tmp_path: Path) -> None:
    repo = Path(shutil.copytree(tiny_repository, tmp_path / "repo"))
    (repo / "preprocess" / "1" / "__pycache__").mkdir(exist_ok=True)  # what a server writes is not guarded
    (repo / "preprocess" / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"x")
    verify_repository(repo)
    with (repo / "classifier" / "1" / "model.onnx").open("ab") as f:
        f.write(b"\0")
    (repo / "detector" / "1" / "model.onnx").unlink()
    with pytest.raises(RepositoryIntegrityError) as info:
        verify_repository(repo)
    assert "classifier/1/model.onnx: changed" in str(info.value)
    assert "detector/1/model.onnx: missing" in str(info.value)
    (repo / "manifest.json").unlink()
    with pytest.raises(RepositoryIntegrityError, match="no manifest"):
        verify_repository(repo)


def test_graphs_have_named_tensors_and_dynamic_batch_and_patches(tiny_repository: Path) -> None:
    sessions = {
        n: ort.InferenceSession(str(tiny_repository / n / "1" / "model.onnx"))
        for n in (c.CLASSIFIER, c.QUALITY_MODEL, c.DETECTOR)
    }
    for name, session in sessions.items():
        inputs, outputs = c.SIGNATURES[name]
        assert [i.name for i in session.get_inputs()] == [t.name for t in inputs]
        assert [o.name for o in session.get_outputs()] == [t.name for t in outputs]
    rng = np.random.default_rng(0)
    for batch in (1, 5):
        x = rng.integers(0, 256, (batch, 3, 224, 224), dtype=np.uint8)
        probs, energy = sessions[c.CLASSIFIER].run(None, {c.CLASSIFIER_INPUT: x})
        assert probs.shape == (batch, 1000) and np.allclose(probs.sum(1), 1, atol=1e-5)
        assert energy.shape == (batch, 1) and np.all(np.log(probs.max(1, keepdims=True)) <= 1e-5)
        for patches in (1, 3):
            (q,) = sessions[c.QUALITY_MODEL].run(
                None, {c.IQA_PATCHES: rng.integers(0, 256, (batch, patches, 3, 224, 224), dtype=np.uint8)}
            )
            assert q.shape == (batch, 1)
        out = sessions[c.DETECTOR].run(None, {c.PROBS: probs, c.ENERGY: energy, c.QUALITY_SCORE: q})
        assert [o.shape for o in out] == [(batch, 1), (batch, 5), (batch, 5), (batch, 1), (batch, 1)]
        assert [o.dtype for o in out] == [np.int64, np.int64, np.float32, np.bool_, np.float32]


def test_onnx_pipeline_matches_reference_pipeline(
    tiny_repository: Path, photos: dict[str, np.ndarray]
) -> None:
    images = [encode_image(p) for p in photos.values()] + [encode_image(photos["chelsea"][:100, :150])]
    served_like = OnnxPipeline.from_repository(tiny_repository).predict(images)
    reference = ReferencePipeline.from_repository(tiny_repository).predict(images)
    assert set(served_like) == {t.name for t in c.ENSEMBLE_OUTPUTS}
    for t in c.ENSEMBLE_OUTPUTS:
        assert served_like[t.name].shape == (len(images), *t.shape)
    for name in (c.CLASS_ID, c.TOP5_IDS, c.FIT):
        np.testing.assert_array_equal(served_like[name], reference[name])
    for name in (c.QUALITY_SCORE, c.FIT_SCORE, c.TOP5_PROBS):
        np.testing.assert_allclose(served_like[name], reference[name], rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------- detector


@pytest.mark.parametrize("threshold", [0.0, 0.4, -0.7])
@pytest.mark.parametrize("feature_set", ["paper", "fit"])
def test_detector_graph_matches_sklearn_on_random_features(threshold: float, feature_set: str) -> None:
    detector = synthetic_detector(seed=3, threshold=threshold, feature_set=feature_set)
    graph = export_detector(detector)
    onnx.checker.check_model(graph, full_check=True)
    session = ort.InferenceSession(graph.SerializeToString())
    rng = np.random.default_rng(1)
    alpha = 10.0 ** rng.uniform(-3, 0, size=(500, 1))
    probs = rng.gamma(np.broadcast_to(alpha, (500, 1000))).astype(np.float32)
    probs /= probs.sum(1, keepdims=True)
    quality = rng.uniform(0, 1, (500, 1)).astype(np.float32)
    quality[:4, 0] = [0.0, 1.0, 1e-6, 1.0 - 1e-7]  # the logit's clipping, in the graph as in numpy
    energy = rng.uniform(0, 25, (500, 1)).astype(np.float32)
    names = [t.name for t in c.DETECTOR_OUTPUTS]
    inputs = {c.PROBS: probs, c.QUALITY_SCORE: quality, c.ENERGY: energy}
    got = dict(zip(names, session.run(names, inputs), strict=True))
    want = reference_outputs(probs, quality, detector, energy)
    np.testing.assert_array_equal(got[c.TOP5_IDS], want[c.TOP5_IDS])
    np.testing.assert_array_equal(got[c.CLASS_ID], want[c.CLASS_ID])
    np.testing.assert_allclose(got[c.FIT_SCORE], want[c.FIT_SCORE], rtol=0, atol=1e-5)
    clear = np.abs(want[c.FIT_SCORE]) > 1e-5
    np.testing.assert_array_equal(got[c.FIT][clear], want[c.FIT][clear])
    # Sign convention: FIT means the SVM's decision for label 1 (fit), shifted by the threshold.
    features = np.concatenate([want[c.TOP5_PROBS], quality_logit(quality)], axis=1)
    if feature_set == "fit":
        features = np.concatenate([features[:, :5], energy, features[:, 5:]], axis=1)
    assert np.isfinite(features).all()
    decision = detector.pipeline.decision_function(features)
    np.testing.assert_array_equal(
        got[c.FIT].ravel()[clear.ravel()], (decision - threshold >= 0)[clear.ravel()]
    )
    if threshold == 0.0:
        assert np.mean(got[c.FIT].ravel() == (detector.pipeline.predict(features) == 1)) > 0.99
    assert 0 < got[c.FIT].mean() < 1  # both verdicts occur: the comparison is not one-sided


# ------------------------------------------------------------------------------------------- bad inputs


def test_mismatched_head_is_refused_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lite = build_backbone("efficientnet_lite0", "random")
    save_head(tmp_path / "lite_head.pt", QualityHead(lite.quality_dim, hidden=16), lite)
    save_detector(tmp_path / "detector.joblib", synthetic_detector())
    out = tmp_path / "repo"
    with pytest.raises(BadHeadError, match="6176-d.*'tiny' gives 96-d"):
        export_repository(
            out, backbone="tiny", head=tmp_path / "lite_head.pt", detector=tmp_path / "detector.joblib"
        )
    argv = ["export", "--backbone", "tiny", "--iqa-head", str(tmp_path / "lite_head.pt")]
    assert main([*argv, "--detector", str(tmp_path / "detector.joblib"), "--out", str(out)]) == 1
    assert "6176-d" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detector.joblib", "lite_head.pt"]


def test_corrupt_head_is_refused_and_nothing_written(tmp_path: Path) -> None:
    head, detector = _inputs(tmp_path, "tiny")
    blob = head.read_bytes()
    for name, data in (("garbage.pt", b"not a torch file at all"), ("truncated.pt", blob[: len(blob) // 2])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadHeadError, match="not a readable quality-head file"):
            export_repository(tmp_path / "repo", backbone="tiny", head=tmp_path / name, detector=detector)
    assert not (tmp_path / "repo").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo")]


def test_refuses_to_replace_a_folder_that_is_not_a_repository(tmp_path: Path) -> None:
    head, detector = _inputs(tmp_path, "tiny")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="not a fitguard repository"):
        export_repository(tmp_path / "photos", backbone="tiny", head=head, detector=detector)
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"


@pytest.mark.slow
def test_failed_parity_check_writes_nothing_and_keeps_the_previous_export(
    tiny_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = Path(shutil.copytree(tiny_repository, tmp_path / "repo"))
    before = (out / "manifest.json").read_bytes()
    head, detector = _inputs(tmp_path, "tiny", seed=1)
    # A tolerance no real export can meet: the check must fail and leave `out` as it was.
    monkeypatch.setitem(verify.TOLERANCES, "fp32", verify.Tolerances(prob=-1.0))
    with pytest.raises(verify.ParityError, match="classifier"):
        export_repository(out, backbone="tiny", head=head, detector=detector, log=lambda _: None)
    assert (out / "manifest.json").read_bytes() == before
    verify_repository(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detector.joblib", "head.pt", "repo"]


# -------------------------------------------------------------------------------------- real backbones


@pytest.mark.slow
def test_cli_exports_efficientnet_lite0_with_real_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head, detector = _inputs(tmp_path, "efficientnet_lite0")
    out = tmp_path / "repo"
    argv = [
        "export",
        "--backbone",
        "efficientnet_lite0",
        "--iqa-head",
        str(head),
        "--detector",
        str(detector),
    ]
    assert main([*argv, "--out", str(out), "--patches", "3"]) == 0
    lines = _parity_lines(capsys.readouterr().out)
    print("\n".join(lines))
    assert len(lines) == 3 and all(line.endswith("OK") for line in lines)
    manifest = verify_repository(out)
    assert manifest["arguments"]["weights_id"] == "imagenet" and manifest["arguments"]["patches"] == 3
    assert manifest["parity"]["classifier"]["deltas"]["prob"] <= 1e-4
    settings = repository_settings(out)
    assert settings.patches == 3 and settings.preset == preset_for("efficientnet_lite0")
    assert read_config(out / c.QUALITY_MODEL / "config.pbtxt").input[0].dims[0] == 3


def _calibrated_resnet152(path: Path, photos: dict[str, np.ndarray]) -> Path:
    """Random ResNet-152 weights whose BatchNorm statistics come from real photos.

    Plain random init with the default running statistics makes activations grow block after block until the
    softmax saturates to one-hot, where every comparison is trivially exact; calibrated statistics keep the
    outputs spread out, so the parity check measures something.
    """
    from torchvision.models import resnet152

    from fitguard.backbones import UInt8Normalize

    torch.manual_seed(0)
    model = resnet152(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batch
    settings = PreprocessSettings(preset_for("resnet152"), 1)
    crops, _ = settings.prepare_batch([encode_image(p) for p in photos.values()])
    with torch.no_grad():
        model.train()(UInt8Normalize(settings.preset)(torch.from_numpy(crops)))
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
def test_resnet152_graph_with_random_weights(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    weights = str(_calibrated_resnet152(tmp_path / "resnet152_random.pth", photos))
    head, detector = _inputs(tmp_path, "resnet152", weights=weights)
    lines: list[str] = []
    out = export_repository(
        tmp_path / "repo",
        backbone="resnet152",
        weights=weights,
        head=head,
        detector=detector,
        patches=2,
        log=lines.append,
    )
    print("\n".join(lines))
    manifest = verify_repository(out)
    assert manifest["arguments"]["weights_id"].startswith("file:")
    assert all(r["passed"] for r in manifest["parity"].values())
    assert 0 < manifest["parity"]["quality"]["deltas"]["quality"] <= 1e-4
    assert 0 < manifest["parity"]["classifier"]["deltas"]["prob"] <= 1e-4
    # Not saturated: the photos get spread-out probabilities, so the deltas above were measured on real
    # values.
    probs = OnnxPipeline.from_repository(out).predict([encode_image(photos["chelsea"])])[c.TOP5_PROBS]
    assert probs[0, 0] < 0.99 and probs[0, 4] > 1e-6
