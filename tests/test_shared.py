"""Shared quality mode: the classifier's pass gives the quality features; the ensemble's contract holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as http
from conftest import infer_ensemble, synthetic_detector
from PIL import Image, ImageFilter

from fitguard import contract as c
from fitguard.backbones import UInt8Normalize, build_backbone
from fitguard.classifier import ServedClassifier, SharedClassifier
from fitguard.cli import main
from fitguard.detector import save_detector
from fitguard.export import export_repository, verify_repository
from fitguard.export.configs import check_signature
from fitguard.preprocess import encode_image, quality_views
from fitguard.presets import preset_for
from fitguard.quality import BadHeadError, QualityHead, load_head, save_head
from fitguard.reference import OnnxPipeline, ReferencePipeline
from fitguard.repository import read_config, repository_settings

torch.set_num_threads(2)
OUTPUTS = [t.name for t in c.ENSEMBLE_OUTPUTS]


# ----------------------------------------------------------------------------------------- one pass


@pytest.mark.parametrize("name", ["tiny", "efficientnet_lite0"])
def test_one_pass_gives_the_classifier_logits_and_the_quality_features(
    name: str, photos: dict[str, np.ndarray]
) -> None:
    net = build_backbone(name, "random" if name != "tiny" else "default")
    preset = net.preset
    crops = np.stack([quality_views(p, preset, c.SHARED_MODE)[0] for p in photos.values()])
    x = torch.from_numpy(crops)
    with torch.inference_mode():
        probs, energy, features = SharedClassifier(net).eval()(x)
        want_probs, want_energy = ServedClassifier(net).eval()(x)
        want_features = net.quality_features(UInt8Normalize(preset)(x))
    assert features.shape == (len(crops), net.quality_dim)
    torch.testing.assert_close(probs, want_probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(energy, want_energy, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(features, want_features, atol=1e-5, rtol=1e-5)


def test_quality_views_are_the_patches_or_the_classifier_crop(photos: dict[str, np.ndarray]) -> None:
    from fitguard.preprocess import classifier_crop, iqa_patches

    rgb, preset = photos["chelsea"], preset_for("efficientnet_lite0")
    np.testing.assert_array_equal(quality_views(rgb, preset, c.PATCHES_MODE, 3), iqa_patches(rgb, 3))
    shared = quality_views(rgb, preset, c.SHARED_MODE)
    assert shared.shape == (1, 3, 224, 224)
    np.testing.assert_array_equal(shared[0], classifier_crop(rgb, preset))
    with pytest.raises(ValueError, match="unknown quality mode"):
        quality_views(rgb, preset, "both")


# ------------------------------------------------------------------------------------------ repository


def test_shared_repository_records_its_mode_and_follows_its_contract(tiny_shared_repository: Path) -> None:
    manifest = verify_repository(tiny_shared_repository)
    assert manifest["arguments"]["quality_features"] == c.SHARED_MODE
    assert manifest["arguments"]["patches"] == 0
    assert manifest["parity"][c.CLASSIFIER]["passed"] and manifest["parity"][c.QUALITY_MODEL]["passed"]
    settings = repository_settings(tiny_shared_repository)
    assert settings.shared and settings.patches == 0
    dim = build_backbone("tiny").quality_dim
    for name in (c.ENSEMBLE, *c.MODELS):
        config = read_config(tiny_shared_repository / name / "config.pbtxt")
        check_signature(config, 0, mode=c.SHARED_MODE, feature_dim=dim)
        if name in (c.PREPROCESS, c.CLASSIFIER, c.QUALITY_MODEL):
            assert config.parameters["quality_features"].string_value == c.SHARED_MODE
    # No step of the shared ensemble carries patches; the classifier feeds the quality step.
    ensemble = (tiny_shared_repository / c.ENSEMBLE / "config.pbtxt").read_text()
    assert c.IQA_PATCHES not in ensemble and c.IQA_FEATURES in ensemble
    with pytest.raises(ValueError, match="do not match the tensor contract"):
        check_signature(read_config(tiny_shared_repository / c.QUALITY_MODEL / "config.pbtxt"), 4)


def test_ensemble_contract_is_the_same_in_both_modes(
    tiny_repository: Path, tiny_shared_repository: Path
) -> None:
    patches = read_config(tiny_repository / c.ENSEMBLE / "config.pbtxt")
    shared = read_config(tiny_shared_repository / c.ENSEMBLE / "config.pbtxt")
    assert list(patches.input) == list(shared.input) and list(patches.output) == list(shared.output)
    assert c.signatures(c.SHARED_MODE)[c.ENSEMBLE] == c.SIGNATURES[c.ENSEMBLE]


def test_a_head_is_served_only_in_the_mode_it_was_trained_for(
    tmp_path: Path, tiny_repository: Path, tiny_shared_repository: Path
) -> None:
    assert load_head(tiny_shared_repository / "iqa_head.pt")[1]["mode"] == c.SHARED_MODE
    assert load_head(tiny_repository / "iqa_head.pt")[1]["mode"] == c.PATCHES_MODE
    detector = tmp_path / "detector.joblib"
    save_detector(detector, synthetic_detector())
    for head, mode in ((tiny_repository, c.SHARED_MODE), (tiny_shared_repository, c.PATCHES_MODE)):
        with pytest.raises(BadHeadError, match="mode inputs"):
            export_repository(
                tmp_path / "out",
                backbone="tiny",
                head=head / "iqa_head.pt",
                detector=detector,
                quality_features=mode,
                log=lambda _: None,
            )
    assert not (tmp_path / "out").exists()
    argv = ["export", "--backbone", "tiny", "--iqa-head", str(tiny_repository / "iqa_head.pt")]
    argv += ["--detector", str(detector), "--out", str(tmp_path / "cli"), "--quality-features", "shared"]
    assert main(argv) == 1
    net = build_backbone("tiny")
    with pytest.raises(ValueError, match="unknown quality mode"):
        save_head(tmp_path / "h.pt", QualityHead(net.quality_dim), net, mode="crop")


# ---------------------------------------------------------------------------------------------- server


def _images(photos: dict[str, np.ndarray]) -> dict[str, bytes]:
    out = {}
    for name, rgb in photos.items():
        img = Image.fromarray(rgb)
        out[name] = encode_image(img)
        out[f"{name}/blur"] = encode_image(img.filter(ImageFilter.GaussianBlur(6)))
        out[f"{name}/jpeg7"] = encode_image(img, "JPEG", quality=7)
        out[f"{name}/small-gray"] = encode_image(img.convert("L").resize((96, 64)))
    return out


def _assert_same(served: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, float]:
    for name in (c.CLASS_ID, c.TOP5_IDS, c.FIT):
        np.testing.assert_array_equal(served[name], expected[name], err_msg=name)
    deltas = {
        n: float(np.max(np.abs(served[n] - expected[n])))
        for n in (c.QUALITY_SCORE, c.FIT_SCORE, c.TOP5_PROBS)
    }
    assert all(d <= 1e-4 for d in deltas.values()), deltas
    return deltas


@pytest.fixture(scope="module")
def shared_server(tiny_shared_repository: Path):
    from fitguard.serve import EmbeddedServer

    with EmbeddedServer(tiny_shared_repository, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server


@pytest.mark.server
def test_shared_ensemble_answers_with_the_same_contract_as_the_reference(
    shared_server, tiny_shared_repository: Path, photos: dict[str, np.ndarray]
) -> None:
    with http.InferenceServerClient(shared_server.http_url) as client:
        meta = client.get_model_metadata(c.ENSEMBLE)
        steps = {m: client.get_model_metadata(m) for m in c.MODELS}
    want = {t.name: (t.datatype, [-1, *t.shape]) for t in (*c.ENSEMBLE_OUTPUTS, c.ENSEMBLE_PROBS)}
    assert {o["name"]: (o["datatype"], [int(d) for d in o["shape"]]) for o in meta["outputs"]} == want
    assert [i["name"] for i in meta["inputs"]] == [c.IMAGE]
    assert [o["name"] for o in steps[c.PREPROCESS]["outputs"]] == [c.CLASSIFIER_INPUT]
    assert sorted(o["name"] for o in steps[c.CLASSIFIER]["outputs"]) == [c.ENERGY, c.IQA_FEATURES, c.PROBS]
    assert [i["name"] for i in steps[c.QUALITY_MODEL]["inputs"]] == [c.IQA_FEATURES]

    images = _images(photos)
    names = list(images)
    expected = ReferencePipeline.from_repository(tiny_shared_repository).predict([images[n] for n in names])
    onnx_expected = OnnxPipeline.from_repository(tiny_shared_repository).predict([images[n] for n in names])
    served = [infer_ensemble(shared_server.http_url, [images[n]]) for n in names]
    stacked = {k: np.concatenate([s[k] for s in served]) for k in OUTPUTS}
    deltas = _assert_same(stacked, expected)
    onnx_deltas = _assert_same(stacked, onnx_expected)
    # Several images in one request, through the dynamic batcher's path.
    batch = [images[n] for n in ("chelsea", "coffee/blur", "rocket/small-gray", "astronaut/jpeg7")]
    _assert_same(
        infer_ensemble(shared_server.http_url, batch),
        ReferencePipeline.from_repository(tiny_shared_repository).predict(batch),
    )
    print(f"\n{len(names)} images, shared mode: vs reference {deltas}; vs in-process ONNX {onnx_deltas}")


@pytest.mark.server
def test_shared_quality_differs_from_patch_quality_where_the_views_differ(
    tiny_shared_repository: Path, photos: dict[str, np.ndarray]
) -> None:
    """The shared reference reads the crop: its quality is the patch model's on the crop as one patch."""
    reference = ReferencePipeline.from_repository(tiny_shared_repository)
    data = encode_image(photos["astronaut"])
    crop, patches = reference.settings.prepare(data)
    assert patches is None
    with torch.inference_mode():
        want = reference.quality_model(torch.from_numpy(crop)[None, None]).numpy()
    np.testing.assert_allclose(reference.predict([data])[c.QUALITY_SCORE], want, atol=1e-6)
    manifest = json.loads((tiny_shared_repository / "manifest.json").read_text())
    assert manifest["arguments"]["head_backbone"] == "tiny"


# -------------------------------------------------------------------------------------------- training


def test_training_reads_the_served_shared_features(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    """Head features in shared mode are the backbone's on the classifier crop; the detector's quality
    reads the crop too, because the head file says which mode it was trained for."""
    from fitguard.preprocess import classifier_crop
    from fitguard.training.image_groups import ImageGroup
    from fitguard.training.paper.features import compute_features, load_feature_models
    from fitguard.training.quality.features import patch_features

    net = build_backbone("tiny")
    images = [photos["chelsea"], photos["rocket"]]
    feats, unique = patch_features(images, net, 1, tmp_path / "cache", progress=False, mode=c.SHARED_MODE)
    crops = torch.from_numpy(np.stack([classifier_crop(rgb, net.preset) for rgb in images]))
    with torch.inference_mode():
        _, _, want = SharedClassifier(net)(crops)
    assert feats.shape == (2, 1, net.quality_dim) and unique.all()
    np.testing.assert_allclose(feats[:, 0], want.numpy(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one view per image"):
        patch_features(images, net, 4, tmp_path / "cache", progress=False, mode=c.SHARED_MODE)

    torch.manual_seed(0)
    save_head(tmp_path / "head.pt", QualityHead(net.quality_dim, hidden=64), net, mode=c.SHARED_MODE)
    models = load_feature_models("tiny", tmp_path / "head.pt")
    canvases = np.stack([rgb[:256, :256] for rgb in images])
    ints = np.arange(2, dtype=np.int64)
    group = ImageGroup("originals", canvases, ints, ints, ints, np.array(["a", "b"]), np.zeros(2, np.int64))
    got = compute_features(models, group, patches=4)
    with torch.inference_mode():
        crops = np.stack([classifier_crop(rgb, net.preset) for rgb in group.images])
        want_q = models.quality(torch.from_numpy(crops)[:, None]).reshape(-1).numpy()
    np.testing.assert_allclose(got.quality, want_q, atol=1e-6)


@pytest.mark.slow
def test_train_iqa_cli_in_shared_mode(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        Image.fromarray(photos[name]).save(folder / f"{name}.png")
    out = tmp_path / "shared.pt"
    argv = ["train", "iqa", "--backbone", "tiny", "--cache-dir", str(tmp_path / "cache"), "--hidden", "64"]
    argv += ["--dataset", "synthetic", "--photos", str(folder), "--views", "2", "--splits", "2"]
    argv += ["--no-baseline", "--no-left-out"]
    assert main([*argv, "--out", str(out), "--quality-features", "shared"]) == 0
    metrics = json.loads(Path(f"{out}.metrics.json").read_text())
    assert metrics["quality_features"] == c.SHARED_MODE and metrics["patches"] == 1
    assert len(metrics["splits"]) == 2 and all(np.isfinite(s["srcc"]) for s in metrics["splits"])
    assert load_head(out)[1]["mode"] == c.SHARED_MODE
