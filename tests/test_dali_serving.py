"""The DALI repository, served: the SDK, the CLI and the bench work unchanged against both repositories,
verdicts agree with the Python repository's, and shared quality mode runs on DALI.

The embedded server serves the DALI step with its stand-in backend (the exported ``model.dali`` on DALI's
CPU operators, with the real backend's batch semantics); the isolation under bad input is in
``tests/reliability/test_dali_isolation.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from reliability.conftest import Answer
from reliability.test_dali_isolation import corrupt_bodies, python_parity

from fitguard import contract as c
from fitguard.preprocess import encode_image
from fitguard.repository import read_config

pytestmark = [pytest.mark.slow, pytest.mark.server]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> Path:
    """The package photos as users send them: JPEG files and PNG files."""
    folder = tmp_path_factory.mktemp("photos")
    for name, rgb in photos.items():
        (folder / f"{name}.jpg").write_bytes(encode_image(rgb, "JPEG", 90))
        (folder / f"{name}.png").write_bytes(encode_image(rgb))
    return folder


def _classify(url: str, protocol: str, paths: list[Path]) -> list:
    from fitguard.client import FitClient

    with FitClient(url, protocol) as client:
        verdicts = client.classify_many(paths, batch_size=3, concurrency=4)
    assert all(v.ok for v in verdicts), verdicts
    return verdicts


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_sdk_serves_both_repositories_alike(
    tiny_server, tiny_dali_server, photo_folder, protocol
) -> None:
    paths = sorted(photo_folder.iterdir())
    urls = {
        s: getattr(server, f"{protocol}_url")
        for s, server in (("python", tiny_server), ("dali", tiny_dali_server))
    }
    python, dali = (_classify(urls[s], protocol, paths) for s in ("python", "dali"))
    for p, d in zip(python, dali, strict=True):
        assert d.source == p.source
        assert python_parity(Answer.from_verdict(p), Answer.from_verdict(d)) is None, d.source


def test_the_sdk_isolates_a_corrupt_file_on_both_repositories(
    tiny_server, tiny_dali_server, photo_folder
) -> None:
    """A corrupt body behind a valid header among good files, batched by the SDK: only it fails, on both."""
    from fitguard.client import FitClient

    good = sorted(photo_folder.glob("*.png"))
    corrupt = corrupt_bodies([p.read_bytes() for p in good], count=1)[0]
    images = [*good[:2], corrupt, *good[2:]]
    for server, reason in ((tiny_server, "corrupt or truncated"), (tiny_dali_server, "could not decode")):
        with FitClient(server.grpc_url) as client:
            results = client.classify_many(images, batch_size=len(images), concurrency=1)
        assert [r.ok for r in results] == [True, True, False, *([True] * (len(good) - 2))]
        assert reason in str(results[2].error)


def test_the_cli_serves_both_repositories_alike(
    tiny_server, tiny_dali_server, photo_folder, capsys: pytest.CaptureFixture[str]
) -> None:
    from fitguard.cli import main

    rows = {}
    for step, server in (("python", tiny_server), ("dali", tiny_dali_server)):
        assert main(["classify", "--url", server.grpc_url, "--json", str(photo_folder)]) == 0
        rows[step] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(rows["dali"]) == len(rows["python"]) == 2 * len(list(photo_folder.glob("*.png")))
    for p, d in zip(rows["python"], rows["dali"], strict=True):
        assert d["source"] == p["source"] and abs(d["quality"] - p["quality"]) < 1e-4
        assert d["fit"] == p["fit"] or abs(p["fit_score"]) < 1e-4


def test_the_bench_measures_the_dali_repository(tiny_dali_server, tmp_path: Path) -> None:
    from fitguard.cli import main

    out = tmp_path / "bench.json"
    argv = ["bench", "--url", tiny_dali_server.grpc_url, "--concurrency", "1,8", "--requests", "16"]
    assert main([*argv, "--no-references", "--no-naive", "--json", str(out)]) == 0
    levels = json.loads(out.read_text())["served"]["levels"]
    assert [level["errors"] for level in levels] == [0, 0]
    assert all(level["throughput"] > 0 for level in levels)


def test_shared_quality_mode_on_dali(
    tiny_shared_repository: Path, tmp_path: Path, photo_folder: Path
) -> None:
    """The DALI step emits the classifier crop only in a shared-mode repository, and its verdicts are the
    Python shared repository's."""
    from conftest import export_tiny

    from fitguard.serve import EmbeddedServer

    repo = export_tiny(tmp_path, quality_features=c.SHARED_MODE, preprocess="dali")
    for name in (c.PREPROCESS, c.DALI_PREPROCESS, c.DALI_PREPROCESS_SINGLE):
        assert [t.name for t in read_config(repo / name / "config.pbtxt").output] == [c.CLASSIFIER_INPUT]
    paths = sorted(photo_folder.iterdir())
    verdicts = {}
    for step, path in (("python", tiny_shared_repository), ("dali", repo)):
        with EmbeddedServer(path, http_port=0, grpc_port=0, metrics_port=0) as server:
            verdicts[step] = _classify(server.grpc_url, "grpc", paths)
    for p, d in zip(verdicts["python"], verdicts["dali"], strict=True):
        assert python_parity(Answer.from_verdict(p), Answer.from_verdict(d)) is None, d.source


# ------------------------------------------------------------------------------------- the real build

# The shipped classifier on crops within 1 of 255 per pixel (DALI's resampling filter against Pillow's):
# verdicts may differ only where they are ties, i.e. a fit score or a top-1 lead within this of zero
# (the test prints the measured disagreements and score deltas); about 3x the largest seen here.
NEAR_TIE = 0.02
MEDIAN_SCORE_DELTA = 0.01


@pytest.fixture(scope="module")
def build_dali(build_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The build's repository (Python step) and the same models exported with ``--preprocess dali``."""
    from fitguard.cli import main

    build = build_dir
    out = tmp_path_factory.mktemp("build_dali") / "repository"
    argv = ["export", "--backbone", "efficientnet_lite0", "--iqa-head", str(build / "iqa_head.pt")]
    argv += ["--detector", str(build / "detector.joblib"), "--out", str(out), "--preprocess", "dali"]
    assert main(argv) == 0
    return build / "model_repository", out


@pytest.mark.build
def test_verdicts_agree_on_package_photos_and_labelled_objects(build_dali: tuple[Path, Path]) -> None:
    from fitguard.client import FitClient
    from fitguard.photos import package_photos
    from fitguard.serve import EmbeddedServer
    from fitguard.training.data import load_dataset

    photos = package_photos()
    objects = load_dataset("objects")
    picked = np.linspace(0, len(objects) - 1, 64).astype(int)
    images = [encode_image(rgb, "JPEG", 90) for rgb in photos.values()]
    images += [encode_image(rgb) for rgb in photos.values()]
    images += [encode_image(objects[int(i)].image()) for i in picked]
    got = {}
    for step, repo in zip(("python", "dali"), build_dali, strict=True):
        with (
            EmbeddedServer(repo, http_port=0, grpc_port=0, metrics_port=0) as server,
            FitClient(server.grpc_url) as client,
        ):
            got[step] = client.classify_many(images, batch_size=8, concurrency=2)
        assert all(v.ok for v in got[step])
    pairs = list(zip(got["python"], got["dali"], strict=True))
    deltas = np.array([abs(p.fit_score - d.fit_score) for p, d in pairs])
    class_ties = [p.top5[0].probability - p.top5[1].probability for p, d in pairs if p.class_id != d.class_id]
    fit_ties = [abs(p.fit_score) for p, d in pairs if p.fit != d.fit]
    print(
        f"\nDALI vs Python on the build: {len(pairs)} images; class differs on {len(class_ties)} "
        f"(top-1 leads {np.round(class_ties, 4).tolist()}), verdict on {len(fit_ties)} (fit scores "
        f"{np.round(fit_ties, 4).tolist()}); |delta fit score| median {np.median(deltas):.4f}, "
        f"max {deltas.max():.4f}"
    )
    assert all(t < NEAR_TIE for t in class_ties) and all(t < NEAR_TIE for t in fit_ties)
    assert len(class_ties) + len(fit_ties) <= len(pairs) // 20
    assert np.median(deltas) < MEDIAN_SCORE_DELTA
