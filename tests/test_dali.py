"""The DALI preprocess step: parity with the Python step on real photos and the bad-input corpus, and the
``--preprocess dali`` repository (the GPU build differs only in the decoder's device; it runs where a GPU
is)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from reliability.corpus import bad_inputs

from fitguard import contract as c
from fitguard.dali_preprocess import MODEL_FILE, CpuRunner, Geometry
from fitguard.export.dali import PIXEL_TOLERANCE
from fitguard.photos import package_photos
from fitguard.preprocess import BadImageError, PreprocessSettings, encode_image
from fitguard.presets import preset_for
from fitguard.repository import read_config, repository_settings

# Corpus entries a valid answer comes back for, but not the Python step's pixels (docs/performance.md):
# alpha is dropped instead of flattened onto white, float TIFF is scaled differently, and the bicubic
# upscale of a tiny bilevel image rings differently at its hard edges.
DALI_PIXELS_DIFFER = {"palette_png_transparency", "rgba_transparent_png", "tiff_float32", "bilevel_png"}
DALI_REFUSES = {"animated_gif"}  # GIF is not among DALI's decoders; the Python step takes the first frame
UPSCALED_TOLERANCE = 2  # images smaller than a patch: bicubic upscale, DALI's kernel against Pillow's


def _settings(patches: int = 5, weights: str | None = None) -> PreprocessSettings:
    return PreprocessSettings(preset_for("resnet152", weights), patches, backbone="resnet152")


def _compare(runner: CpuRunner, settings: PreprocessSettings, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    got, want = runner.prepare(data), settings.prepare(data)
    assert [g.shape for g in got] == [w.shape for w in want]
    return tuple(np.abs(g.astype(np.int16) - w.astype(np.int16)) for g, w in zip(got, want, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("weights", [None, "IMAGENET1K_V2"])  # resize 256 and 232
def test_dali_matches_python_step_on_package_photos(weights: str | None) -> None:
    settings = _settings(weights=weights)
    runner = CpuRunner(Geometry.from_settings(settings), batch_size=2)
    worst = {"crop": 0, "patches": 0, "crop_share": 0.0}
    for name, rgb in package_photos().items():
        for fmt in ("PNG", "JPEG"):
            crop, patches = _compare(runner, settings, encode_image(rgb, fmt, 90))
            worst["crop"] = max(worst["crop"], int(crop.max()))
            worst["patches"] = max(worst["patches"], int(patches.max()))
            worst["crop_share"] = max(worst["crop_share"], float(np.mean(crop > 0)))
            assert worst["crop"] <= PIXEL_TOLERANCE["crop"], (name, fmt)
            assert worst["patches"] <= PIXEL_TOLERANCE["patches"], (name, fmt)
    assert worst["crop_share"] < 0.25  # a filter difference, not a shifted crop (that moves most pixels)


@pytest.mark.slow
def test_dali_geometry_is_exact_over_sizes_and_patch_counts() -> None:
    """Noise images of odd and even sizes: a crop or patch offset one pixel off would change most pixels,
    so identical patches and a crop within the filter tolerance prove the integer geometry."""
    rng = np.random.default_rng(0)
    sizes = [(224, 224), (225, 301), (256, 257), (300, 451), (227, 800), (801, 230), (640, 427), (480, 481)]
    for patches in (1, 2, 3, 5, 7):
        settings = _settings(patches)
        runner = CpuRunner(Geometry.from_settings(settings), batch_size=1)
        for h, w in sizes:
            noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            crop, cut = _compare(runner, settings, encode_image(noise))
            assert cut.max() == 0, (patches, h, w)
            assert crop.max() <= 64 and np.mean(crop > 8) < 0.05, (
                patches,
                h,
                w,
            )  # noise: filters differ most


@pytest.mark.slow
def test_dali_on_the_bad_input_corpus() -> None:
    settings = _settings(4)
    runner = CpuRunner(Geometry.from_settings(settings), batch_size=1)
    refused, differ = set(), set()
    for case in bad_inputs():
        try:
            crop, patches = _compare(runner, settings, case.payload)
        except BadImageError:
            refused.add(case.name)
            continue
        if max(int(crop.max()), int(patches.max())) > UPSCALED_TOLERANCE:
            differ.add(case.name)
    errors = {case.name for case in bad_inputs() if case.expect == "error"}
    verdicts = {case.name for case in bad_inputs() if case.expect == "verdict"}
    assert errors <= refused  # every input the Python step must refuse, DALI refuses too (limits included)
    assert refused & verdicts == DALI_REFUSES
    assert differ == DALI_PIXELS_DIFFER


def test_runner_refuses_what_breaks_the_limits_before_decoding() -> None:
    from dataclasses import replace

    from fitguard.preprocess import Limits

    settings = _settings(1)
    photo = encode_image(package_photos(["coffee"])["coffee"])  # 400 x 600
    for limits in (
        Limits(max_bytes=1000),
        Limits(max_pixels=200_000),
        Limits(max_side=500),
        Limits(max_aspect=1.4),
    ):
        runner = CpuRunner(Geometry.from_settings(replace(settings, limits=limits)), batch_size=1)
        with pytest.raises(BadImageError, match="DALI refused"):
            runner.prepare(photo)
    crop, patches = CpuRunner(Geometry.from_settings(settings), batch_size=1).prepare(photo)
    assert crop.shape == (3, 224, 224) and patches.shape == (1, 3, 224, 224)


@pytest.fixture(scope="module")
def dali_repositories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny backbone exported twice with ``--preprocess dali``: CPU (accelerator none) and GPU (cuda)."""
    import torch
    from conftest import synthetic_detector

    from fitguard.backbones import build_backbone
    from fitguard.cli import main
    from fitguard.detector import save_detector
    from fitguard.quality import QualityHead, save_head

    root = tmp_path_factory.mktemp("dali")
    net = build_backbone("tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_head(root / "head.pt", QualityHead(net.quality_dim), net)
    save_detector(root / "detector.joblib", synthetic_detector())
    out = {}
    for accelerator in ("none", "cuda"):
        out[accelerator] = root / accelerator
        args = ["export", "--backbone", "tiny", "--iqa-head", str(root / "head.pt")]
        args += ["--detector", str(root / "detector.joblib"), "--out", str(out[accelerator])]
        assert main([*args, "--preprocess", "dali", "--accelerator", accelerator]) == 0
    return out


@pytest.mark.slow
def test_dali_repository_passes_the_repository_checks(dali_repositories: dict[str, Path]) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    from fitguard.export.configs import check_signature
    from fitguard.export.dali import CHECK_MODEL_PY, DALI_MODELS
    from fitguard.manifest import verify_repository

    for accelerator, repo in dali_repositories.items():
        manifest = verify_repository(repo)
        assert manifest["arguments"]["preprocess"] == "dali"
        report = manifest["parity"][c.PREPROCESS]
        assert report["passed"] and report["deltas"]["patches"] == 0
        # preprocess is the validating Python step; the pipeline is served twice, batching and alone.
        assert (repo / c.PREPROCESS / "1" / "model.py").read_bytes() == CHECK_MODEL_PY.read_bytes()
        for name in (c.ENSEMBLE, *c.MODELS):  # the Python repository's contract, the ensemble's included
            check_signature(read_config(repo / name / "config.pbtxt"), c.DEFAULT_PATCHES)
        kind = mc.ModelInstanceGroup.KIND_GPU if accelerator == "cuda" else mc.ModelInstanceGroup.KIND_CPU
        for name in DALI_MODELS:
            config = read_config(repo / name / "config.pbtxt")
            check_signature(config, c.DEFAULT_PATCHES, "dali")
            assert config.backend == "dali" and [g.kind for g in config.instance_group] == [kind]
            assert config.input[0].data_type == mc.TYPE_UINT8 and config.input[0].allow_ragged_batch
            assert config.HasField("dynamic_batching") == (name == c.DALI_PREPROCESS)
            assert f"{name}/1/{MODEL_FILE}" in manifest["files"]
            pipeline = (repo / name / "1" / MODEL_FILE).read_bytes()
            assert (b"mixed" in pipeline) == (accelerator == "cuda")
        assert repository_settings(repo) == PreprocessSettings(preset_for("tiny"), 4, backbone="tiny")
        json.dumps(manifest)


@pytest.mark.slow
def test_serialized_cpu_pipeline_answers_like_the_python_step(dali_repositories: dict[str, Path]) -> None:
    """The written model.dali itself (as the DALI backend loads it) on photos, against the Python step."""
    from nvidia.dali import Pipeline

    repo = dali_repositories["none"]
    settings = repository_settings(repo)
    pipe = Pipeline.deserialize(filename=str(repo / c.DALI_PREPROCESS / "1" / MODEL_FILE), device_id=None)
    pipe.build()
    photos = [
        encode_image(rgb, "JPEG", 90) for rgb in package_photos(["chelsea", "rocket", "retina"]).values()
    ]
    pipe.feed_input(c.IMAGE, [np.frombuffer(p, np.uint8) for p in photos])
    crops, patches = (np.stack([np.array(t) for t in out]) for out in pipe.run())
    want_crops, want_patches = settings.prepare_batch(photos)
    assert np.abs(crops.astype(np.int16) - want_crops).max() <= PIXEL_TOLERANCE["crop"]
    assert np.array_equal(patches, want_patches)


@pytest.mark.slow
@pytest.mark.server
def test_embedded_server_refuses_a_gpu_dali_repository_by_name(dali_repositories: dict[str, Path]) -> None:
    """The DALI stand-in serves CPU pipelines (tests/reliability/test_dali_isolation.py); a GPU repository
    fails its load on a machine without a GPU and says which model."""
    from fitguard.serve import EmbeddedServer
    from fitguard.serve.embedded import EmbeddedServerError

    with (
        pytest.raises(EmbeddedServerError, match=c.DALI_PREPROCESS),
        EmbeddedServer(dali_repositories["cuda"], http_port=0, grpc_port=0, metrics_port=0),
    ):
        pass
