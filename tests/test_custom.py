"""A team's own classifier: the architecture registry, the classifier spec, its classes served as Triton's
labels (plain tritonclient, the SDK, the CLI), a torchvision architecture through export, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import synthetic_detector  # noqa: E402

from fitguard import contract as c  # noqa: E402
from fitguard.backbones import WeightsMismatchError, backbone_names, build_backbone, build_classifier  # noqa: E402
from fitguard.classifier_spec import SpecError, classifier_spec  # noqa: E402
from fitguard.detector import TOP_K, detector_features  # noqa: E402
from fitguard.presets import ARCHITECTURES, PRESETS, preset_for  # noqa: E402


def write_classes(path: Path, n: int) -> Path:
    # Names with spaces and a colon: the classification extension's "score:index:label" must keep them.
    path.write_text("".join(f"team class {i}: kind\n" for i in range(n)), encoding="utf-8")
    return path


def export_custom(root: Path, name: str, n: int, weights: str = "default") -> Path:
    """A repository of classifier ``name`` with a classes file of ``n`` (seeded quality head, the synthetic
    detector), exported and verified like any; returns its Path."""
    from fitguard.detector import save_detector
    from fitguard.export import export_repository
    from fitguard.quality import QualityHead, save_head

    torch.set_num_threads(2)
    spec = classifier_spec(name, weights=weights, classes=write_classes(root / "classes.txt", n))
    net = build_classifier(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_head(root / "head.pt", QualityHead(net.quality_dim), net, mode="patches")
    save_detector(root / "detector.joblib", synthetic_detector())
    return export_repository(
        root / "repository",
        classifier=spec,
        head=root / "head.pt",
        detector=root / "detector.joblib",
        log=lambda _: None,
    )


# ------------------------------------------------------------------------------------------ registry, spec


def test_one_table_names_every_architecture_and_its_presets() -> None:
    assert backbone_names() == sorted(ARCHITECTURES) == ["efficientnet_lite0", "resnet152", "tiny"]
    assert set(PRESETS) == {*ARCHITECTURES, "resnet152:IMAGENET1K_V2"}
    assert preset_for("resnet152", "IMAGENET1K_V2").resize == 232
    assert preset_for("torchvision:resnet18") == preset_for("tiny")  # ImageNet's


def test_spec_sets_classes_and_preset(tmp_path: Path) -> None:
    spec = classifier_spec(
        "tiny", classes=write_classes(tmp_path / "c.txt", 3), resize=240, mean=(0.5, 0.5, 0.5), std=(1, 1, 1)
    )
    assert (spec.num_classes, spec.top_k) == (3, 3) and spec.classes[2] == "team class 2: kind"
    net = build_classifier(spec)
    assert net.num_classes == 3 and net.preset.resize == 240 and net.preset.std == (1.0, 1.0, 1.0)
    assert classifier_spec("tiny").num_classes == c.NUM_CLASSES and classifier_spec("tiny").preset is None


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("vgg7", {}, "unknown backbone 'vgg7'"),
        ("tiny", {"crop": 256}, "--crop 256"),
        ("tiny", {"mean": (0.5, 0.5)}, "--mean takes three numbers"),
    ],
)
def test_bad_spec_is_one_line(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        classifier_spec(name, **kwargs)
    assert "\n" not in str(info.value)


def test_classes_file_must_name_distinct_classes(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("cat\ndog\ncat\n", encoding="utf-8")
    with pytest.raises(SpecError, match="repeated: cat"):
        classifier_spec("tiny", classes=tmp_path / "c.txt")
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(SpecError, match="no class names"):
        classifier_spec("tiny", classes=tmp_path / "empty.txt")


def test_weights_that_do_not_fit_name_what_differs(tmp_path: Path) -> None:
    three = build_backbone("tiny", num_classes=3)
    torch.save(torch.nn.Sequential(three.features, three.fc).state_dict(), tmp_path / "three.pth")
    with pytest.raises(WeightsMismatchError, match="its head has 3 outputs, the classifier 12 classes"):
        build_backbone("tiny", str(tmp_path / "three.pth"), num_classes=12)
    assert build_backbone("tiny", str(tmp_path / "three.pth"), num_classes=3).weights_id.startswith("file:")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsMismatchError, match=r"missing keys 0\.0\.bias, .* \(\+7 more\)") as info:
        build_backbone("tiny", str(tmp_path / "other.pth"))
    assert "unexpected keys conv.weight" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(WeightsMismatchError, match="1000-class head"):
        build_backbone("resnet152", "IMAGENET1K_V1", num_classes=3)


def test_fewer_than_five_classes_pad_the_detector_features() -> None:
    probs = np.array([[0.7, 0.2, 0.1]], np.float32)
    features = detector_features(probs, np.array([0.5]), "fit", np.array([1.0]))
    assert features.shape == (1, TOP_K + 2)
    np.testing.assert_array_equal(features[0, :TOP_K], np.array([0.7, 0.2, 0.1, 0.0, 0.0], np.float32))
    signature = c.signatures(c.PATCHES_MODE, num_classes=3)
    outputs = {t.name: t.shape for t in signature[c.ENSEMBLE][1]}
    assert outputs[c.TOP5_IDS] == (3,) and outputs[c.PROBS] == (3,)


# --------------------------------------------------------------------------------------- export and serving


SERVED_CLASSIFIERS = {
    "tiny-3-classes": ("tiny", 3, "default"),
    # A second architecture through the whole spec path: torchvision's, split at its final Linear.
    "mobilenet_v3_small-12-classes": ("torchvision:mobilenet_v3_small", 12, "random"),
}


@pytest.fixture(scope="module", params=list(SERVED_CLASSIFIERS))
def custom(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(repository, classes, server): the tiny classifier with 3 classes, a torchvision one with 12."""
    from fitguard.serve import EmbeddedServer

    name, n, weights = SERVED_CLASSIFIERS[request.param]
    root = tmp_path_factory.mktemp("custom")
    repository = export_custom(root, name, n, weights=weights)
    classes = (root / "classes.txt").read_text(encoding="utf-8").splitlines()
    with EmbeddedServer(repository, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield repository, classes, server


@pytest.mark.server
def test_repository_carries_the_classes(custom) -> None:
    from fitguard.repository import read_config

    repository, classes, _ = custom
    n, k = len(classes), min(5, len(classes))
    for model in (c.CLASSIFIER, c.ENSEMBLE):
        assert (repository / model / "labels.txt").read_text(encoding="utf-8").splitlines() == classes
    manifest = json.loads((repository / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["arguments"]["num_classes"] == n and manifest["arguments"]["top_k"] == k
    assert {"fitguard/labels.txt", "classifier/labels.txt"} <= set(manifest["files"])
    ensemble = {t.name: t for t in read_config(repository / c.ENSEMBLE / "config.pbtxt").output}
    assert list(ensemble[c.PROBS].dims) == [n] and ensemble[c.PROBS].label_filename == "labels.txt"
    assert list(ensemble[c.TOP5_IDS].dims) == [k]


@pytest.mark.server
def test_plain_tritonclient_class_count_gives_the_team_labels(custom, photos) -> None:
    import tritonclient.http as http

    from fitguard.preprocess import encode_image

    _, classes, server = custom
    k = min(3, len(classes))
    with http.InferenceServerClient(server.http_url) as client:
        tensor = http.InferInput(c.IMAGE, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([encode_image(photos["chelsea"])], dtype=object).reshape(1, 1))
        # Triton 2.51's ensemble answers PROBS alone with a deadlock error: ask it beside a verdict output.
        outputs = [http.InferRequestedOutput(c.PROBS, class_count=k), http.InferRequestedOutput(c.TOP5_IDS)]
        result = client.infer(c.ENSEMBLE, [tensor], outputs=outputs)
    top = [entry.decode().split(":", 2) for entry in result.as_numpy(c.PROBS).ravel()]
    assert [int(i) for _, i, _ in top] == result.as_numpy(c.TOP5_IDS)[0, :k].tolist()
    assert [label for _, i, label in top] == [classes[int(i)] for _, i, _ in top]


@pytest.mark.server
def test_sdk_and_cli_print_the_team_labels(custom, photos, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from fitguard.cli import main
    from fitguard.client import FitClient

    _, classes, server = custom
    with FitClient(server.grpc_url) as client:
        verdict = client.classify(Image.fromarray(photos["coffee"]))
        assert client.info.num_classes == len(classes) and client.info.labelled
    assert verdict.label == classes[verdict.class_id] and verdict.wnid == ""
    assert [t.label for t in verdict.top5] == [classes[t.class_id] for t in verdict.top5]
    assert len(verdict.top5) == min(5, len(classes))
    Image.fromarray(photos["coffee"]).save(tmp_path / "coffee.png")
    assert main(["classify", "--url", server.http_url, "--protocol", "http", "--json", str(tmp_path)]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line["label"] == classes[line["class_id"]] == verdict.label


@pytest.mark.server
def test_each_served_classifier_matches_its_torch_reference(custom) -> None:
    """The export's parity record, and the graphs against the torch reference on real photos."""
    from fitguard.photos import sample_photos
    from fitguard.preprocess import encode_image
    from fitguard.reference import OnnxPipeline, ReferencePipeline

    repository, classes, _ = custom
    manifest = json.loads((repository / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["parity"] and all(report["passed"] for report in manifest["parity"].values())
    images = [encode_image(p) for p in sample_photos(limit=3)[0][:3]]
    onnx_out = OnnxPipeline.from_repository(repository).predict(images)
    torch_out = ReferencePipeline.from_repository(repository).predict(images)
    assert onnx_out[c.TOP5_IDS].shape == (3, min(5, len(classes)))
    np.testing.assert_array_equal(onnx_out[c.TOP5_IDS], torch_out[c.TOP5_IDS])


# ------------------------------------------------------------------------------------------------ bad input


def _export_args(tmp_path: Path, *extra: str) -> list[str]:
    from fitguard.detector import save_detector
    from fitguard.quality import QualityHead, save_head

    net = build_backbone("tiny")
    save_head(tmp_path / "head.pt", QualityHead(net.quality_dim), net, mode="patches")
    save_detector(tmp_path / "detector.joblib", synthetic_detector())
    head, det, out = tmp_path / "head.pt", tmp_path / "detector.joblib", tmp_path / "out"
    return ["export", "--iqa-head", str(head), "--detector", str(det), "--out", str(out), *extra]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown", "unknown backbone 'resnet7'"),
        ("torchvision", "unknown torchvision classification architecture 'nope'"),
        ("head", "its head has 3 outputs, the classifier 12 classes"),
        ("keys", "missing keys"),
        ("missing", "not found"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    from fitguard.cli import main

    three = build_backbone("tiny", num_classes=3)
    torch.save(torch.nn.Sequential(three.features, three.fc).state_dict(), tmp_path / "three.pth")
    torch.save({"x": torch.zeros(1)}, tmp_path / "junk.pth")
    classes = str(write_classes(tmp_path / "classes.txt", 12))
    spec = {
        "unknown": ["--classifier", "resnet7"],
        "torchvision": ["--classifier", "torchvision:nope", "--weights", "random"],
        "head": ["--classifier", "tiny", "--weights", str(tmp_path / "three.pth"), "--classes", classes],
        "keys": ["--backbone", "tiny", "--weights", str(tmp_path / "junk.pth")],
        "missing": ["--backbone", "tiny", "--weights", str(tmp_path / "gone.pth")],
    }[case]
    assert main(_export_args(tmp_path, *spec)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


# ------------------------------------------------------------------------------------ the team's photos


def _fine_tuned_tiny(photos_dir: Path):
    """``tiny`` with a 3-class head fitted on the photos' centre crops: a weak classifier that is right
    on most photos, so every cross-validation fold of the evaluation sees right and wrong answers."""
    from test_labelled import CLASSES

    from fitguard.backbones import UInt8Normalize
    from fitguard.preprocess import classifier_crop, decode_file, image_files

    net = build_backbone("tiny", num_classes=3)
    files = image_files(photos_dir)
    crops = np.stack([classifier_crop(decode_file(f), net.preset) for f in files])
    y = torch.tensor([CLASSES.index(f.parent.name) for f in files])
    with torch.no_grad():
        x = net.features(UInt8Normalize(net.preset)(torch.from_numpy(crops)))
    opt = torch.optim.Adam(net.fc.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net.fc(x), y).backward()
        opt.step()
    return net.eval()


def test_a_plain_spec_stamps_a_build_as_its_name_did(tmp_path: Path) -> None:
    """A spec adds to the build's stamps only what a name could not say: the default build's stamps (and
    so everyone's built repository) stay as they were; classes, a preset and weights by content join."""
    plain = classifier_spec("efficientnet_lite0")
    assert plain.is_plain and plain.stamp() == {}
    three = build_backbone("tiny", num_classes=3)
    torch.save(torch.nn.Sequential(three.features, three.fc).state_dict(), tmp_path / "model.pth")
    spec = classifier_spec(
        "tiny", weights=str(tmp_path / "model.pth"), classes=write_classes(tmp_path / "c.txt", 3), resize=256
    )
    before = spec.stamp()
    assert not spec.is_plain and set(before) == {"classes", "preset", "weights_file"}
    torch.save(three.state_dict(), tmp_path / "model.pth")  # other bytes under the same name
    assert spec.stamp()["weights_file"] != before["weights_file"]


@pytest.mark.slow
def test_a_team_classifier_is_fitted_held_out_and_exported_on_its_labelled_photos(
    tmp_path: Path, photos
) -> None:
    """The plumbing end to end on ``tiny`` with 3 classes: its own state dict, the detector fitted on half
    of the photo groups (population made against it), the other half held out, the evaluation on the
    same split rule, and the repository that serves the team's labels."""
    from test_labelled import CLASSES, write_photos

    from fitguard.detector import load_detector
    from fitguard.export import export_repository
    from fitguard.quality import QualityHead, save_head
    from fitguard.training.fit.custom import train_custom_detector
    from fitguard.training.fit.evaluate import evaluate_fit
    from fitguard.training.fit.population import PopulationConfig

    torch.set_num_threads(2)
    photos_dir = write_photos(tmp_path / "photos", photos, per_class=4)
    three = _fine_tuned_tiny(photos_dir)
    torch.save(torch.nn.Sequential(three.features, three.fc).state_dict(), tmp_path / "model.pth")
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    spec = classifier_spec("tiny", weights=str(tmp_path / "model.pth"), classes=tmp_path / "classes.txt")
    net = build_classifier(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_head(tmp_path / "head.pt", QualityHead(net.quality_dim, hidden=16), net, mode=c.SHARED_MODE)
    config = PopulationConfig(distort_stamps=2, uap_fit_images=4, fool_count=4)
    common = {"classifier": spec, "head": tmp_path / "head.pt", "config": config, "labelled": photos_dir}
    meta = train_custom_detector(tmp_path / "detector.joblib", **common, cache=tmp_path / "cache")
    assert meta["classifier"]["num_classes"] == 3 and meta["labelled"] == str(photos_dir)
    held_out = set(meta["held_out_groups"])
    assert 0 < len(held_out) < 12 and held_out <= {f"{n}/{i}.jpg" for n in CLASSES for i in range(4)}
    saved = load_detector(tmp_path / "detector.joblib").meta
    assert saved["held_out_rows"] == meta["held_out_rows"] > 0
    assert saved["held_out_labels"] == meta["held_out_labels"]  # the file names its list of held-out photos
    # The photos it never saw, as calibrate reads them with the repository's class names.
    from fitguard.calibration.sample import read_sample
    from fitguard.labels import ClassTable

    unseen = read_sample(photos_dir, meta["held_out_labels"], classes=ClassTable(CLASSES))
    assert {im.group for im in unseen} == held_out
    assert all(CLASSES[next(iter(im.labels))] == im.path.parent.name for im in unseen)
    rep = evaluate_fit(
        **common, backbone="tiny", report=tmp_path / "report", repeats=2, draws=20, cache=tmp_path / "cache"
    )
    assert rep["setup"]["classifier"]["num_classes"] == 3 and rep["domain_shift"] == {}
    # Twelve photos: the report still comes, and says what they are too few to show.
    assert "passed" in rep["gate"] and rep["gate"]["not_shown"]
    assert all(r["width"] >= 0 for r in rep["gate"]["aurc"]) and all(
        "ci95" in r for r in rep["gate"]["rates"]
    )
    assert "Too few held-out images to show either way" in (tmp_path / "report" / "report.md").read_text()
    repo = export_repository(
        tmp_path / "repository",
        classifier=spec,
        head=tmp_path / "head.pt",
        detector=tmp_path / "detector.joblib",
        quality_features=c.SHARED_MODE,
        log=lambda _: None,
    )
    assert (repo / "fitguard" / "labels.txt").read_text(encoding="utf-8").split("\n")[:3] == list(CLASSES)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no labelled", "needs --labelled photos/"),
        ("unknown class", "folder 'dog' is not a class of the classes file"),
        ("too small", "holding out needs at least 4"),
    ],
)
def test_build_refuses_a_labelled_set_in_one_line_and_writes_nothing(
    tmp_path: Path, photos, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    from test_labelled import CLASSES, write_photos

    from fitguard.cli import main

    three = build_backbone("tiny", num_classes=3)
    torch.save(torch.nn.Sequential(three.features, three.fc).state_dict(), tmp_path / "model.pth")
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    root = write_photos(tmp_path / "photos", photos, per_class=1 if case == "too small" else 2)
    if case == "unknown class":
        (root / "cat").rename(root / "dog")
    args = ["build", "--classifier", "tiny", "--weights", str(tmp_path / "model.pth")]
    args += ["--classes", str(tmp_path / "classes.txt"), "--out", str(tmp_path / "out")]
    args += [] if case == "no labelled" else ["--labelled", str(root)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_train_detector_without_its_quality_head_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fitguard.cli import main

    args = ["train", "detector", "--classifier", "tiny", "--iqa-head", str(tmp_path / "head.pt")]
    assert main([*args, "--out", str(tmp_path / "detector.joblib")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fitguard train detector: error: quality head {tmp_path / 'head.pt'} not found"
    assert not list(tmp_path.iterdir())
