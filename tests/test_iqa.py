"""DTNIQ-f training: dataset loaders on fake trees in the published layouts, labels, splits, the feature
cache, the CLI end to end with the tiny backbone, and the SRCC target with efficientnet_lite0 (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fitguard.training.data.distortions import distort
from fitguard.training.data.iqa_folders import load_kadid10k, load_tid2013
from fitguard.training.quality.data import (
    load_quality_set,
    photo_views,
    vsi_to_score,
)
from fitguard.training.quality.evaluate import correlations, reference_splits
from fitguard.training.quality.head import score_to_bins


def _small(photos: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: photos[n][:96, :128] for n in ("chelsea", "coffee", "rocket")}


@pytest.fixture()
def tid_tree(tmp_path: Path, photos: dict[str, np.ndarray]) -> Path:
    """TID2013's layout: mos_with_names.txt, distorted_images/iXX_TT_L.bmp, reference_images/IXX.BMP."""
    root = tmp_path / "tid2013"
    (root / "distorted_images").mkdir(parents=True)
    (root / "reference_images").mkdir()
    lines = []
    for r, rgb in enumerate(_small(photos).values(), 1):
        Image.fromarray(rgb).save(root / "reference_images" / f"I{r:02d}.BMP")
        for t, kind in ((1, "white_noise"), (8, "gaussian_blur"), (10, "jpeg")):
            for level in (1, 3, 5):
                name = f"i{r:02d}_{t:02d}_{level}.bmp"
                Image.fromarray(distort(rgb, kind, level, seed=r)).save(
                    root / "distorted_images" / name.upper()
                )
                lines.append(f"{7.5 - level:.5f} {name}")
    (root / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture()
def kadid_tree(tmp_path: Path, photos: dict[str, np.ndarray]) -> Path:
    """KADID-10k's layout: dmos.csv (dist_img,ref_img,dmos,var) and images/ with references and distorted."""
    root = tmp_path / "kadid10k"
    (root / "images").mkdir(parents=True)
    rows = ["dist_img,ref_img,dmos,var"]
    for r, rgb in enumerate(_small(photos).values(), 1):
        Image.fromarray(rgb).save(root / "images" / f"I{r:02d}.png")
        for t, kind in ((1, "gaussian_blur"), (10, "jpeg"), (11, "white_noise")):
            for level in (2, 4):
                name = f"I{r:02d}_{t:02d}_{level:02d}.png"
                Image.fromarray(distort(rgb, kind, level, seed=r)).save(root / "images" / name)
                rows.append(f"{name},I{r:02d}.png,{5.0 - level * 0.9:.2f},0.5")
    (root / "dmos.csv").write_text("\n".join(rows) + "\n")
    return root


def test_tid2013_loader(tid_tree: Path, photos: dict[str, np.ndarray]) -> None:
    items = load_tid2013(tid_tree)
    assert len(items) == 27
    first = items[0]
    assert (first.name, first.reference, first.distortion, first.level) == (
        "i01_01_1",
        "i01",
        "additive_gaussian_noise",
        1,
    )
    assert first.raw == pytest.approx(6.5) and first.score == pytest.approx(6.5 / 7)
    # Upper-case files on disk, lower-case names in the listing: found anyway; pixels round-trip.
    img = items[1].load()
    assert np.array_equal(img, distort(_small(photos)["chelsea"], "white_noise", 3, seed=1))
    assert {it.reference for it in items} == {"i01", "i02", "i03"}
    assert {it.distortion for it in items} == {"additive_gaussian_noise", "gaussian_blur", "jpeg"}


def test_tid2013_loader_errors(tid_tree: Path) -> None:
    (tid_tree / "distorted_images" / "I02_08_3.BMP").unlink()
    with pytest.raises(FileNotFoundError, match="i02_08_3.bmp"):
        load_tid2013(tid_tree)
    with pytest.raises(FileNotFoundError, match="mos_with_names"):
        load_tid2013(tid_tree / "distorted_images")
    (tid_tree / "mos_with_names.txt").write_text("5.1 not-a-name\n")
    with pytest.raises(ValueError, match="mos_with_names.txt:1"):
        load_tid2013(tid_tree)


def test_kadid10k_loader(kadid_tree: Path) -> None:
    items = load_kadid10k(kadid_tree)
    assert len(items) == 18
    it = items[0]
    assert (it.name, it.reference, it.distortion, it.level) == ("I01_01_02", "I01", "gaussian_blur", 2)
    assert it.raw == pytest.approx(3.2) and it.score == pytest.approx((3.2 - 1) / 4)
    assert items[-1].distortion == "white_noise" and items[-1].load().shape == (96, 128, 3)
    with pytest.raises(ValueError, match="--root"):
        load_quality_set("kadid10k")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_quality_set("live")


def test_score_bins_and_correlations() -> None:
    hard = score_to_bins(np.array([0.0, 0.5, 1.0]), 70, sigma=0)
    assert hard.shape == (3, 70) and hard[0, 0] == 1 and hard[2, 69] == 1 and hard[1].argmax() in (34, 35)
    soft = score_to_bins(np.array([0.3]), 70, sigma=2.0)[0]
    assert soft.sum() == pytest.approx(1.0, abs=1e-5)
    assert float((soft * np.arange(70)).sum()) == pytest.approx(0.3 * 69, abs=0.05)  # unbiased away from ends
    srcc, plcc = correlations(np.array([1, 2, 3, 4.0]), np.array([2, 4, 6, 9.0]))
    assert srcc == pytest.approx(1.0) and 0.95 < plcc < 1.0


def test_reference_splits_never_leak() -> None:
    refs = np.repeat(np.array([f"r{i}" for i in range(10)]), 7)
    splits = reference_splits(refs, 10, seed=3)
    assert len(splits) == 10
    for train, test in splits:
        assert not set(refs[train]) & set(refs[test])
        assert len(set(refs[test])) == 2 and len(train) + len(test) == len(refs)
    held_out = [tuple(sorted(set(refs[t]))) for _, t in splits]
    assert len(set(held_out)) == 10  # no split repeats another
    # Repeated 5-fold: each reference is held out exactly once per five splits.
    assert sorted(r for h in held_out[:5] for r in h) == sorted(set(refs))
    assert sorted(r for h in held_out[5:] for r in h) == sorted(set(refs))
    again = reference_splits(refs, 10, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again, strict=True))
    # 34 scenes: five folds of 6 or 7 (not four of 8 or 9 and a partial third repeat), each scene held
    # out exactly twice in ten splits.
    scenes = np.repeat(np.array([f"s{i}" for i in range(34)]), 3)
    held = [set(scenes[t]) for _, t in reference_splits(scenes, 10, seed=0)]
    assert sorted({len(h) for h in held}) == [6, 7]
    assert all(sum(s in h for h in held) == 2 for s in set(scenes))


@pytest.mark.slow
def test_synthetic_labels(photos: dict[str, np.ndarray]) -> None:
    from fitguard.training.quality.data import synthetic

    views = photo_views({"chelsea": photos["chelsea"]}, 3, 224, seed=0)["chelsea"]
    assert len(views) == 3 and all(v.shape == (224, 224, 3) for v in views)
    items = synthetic(
        {"chelsea": photos["chelsea"]}, views=1, kinds=("white_noise", "jpeg"), per_view=None, seed=0
    )
    assert len(items) == 11 and items[-1].distortion == "reference" and items[-1].score == 1.0
    noise = [it.score for it in items if it.distortion == "white_noise"]
    assert all(b < a for a, b in zip(noise, noise[1:], strict=False)), noise  # stronger noise, lower score
    assert vsi_to_score(1.0) == 1.0 and vsi_to_score(0.5) == 0.0 and vsi_to_score(0.8) == pytest.approx(0.25)
    # The label is the metric of exactly the image that load() regenerates.
    import piq
    import torch

    it = items[2]
    img = torch.from_numpy(it.load()).permute(2, 0, 1)[None].float() / 255
    ref = torch.from_numpy(views[0].copy()).permute(2, 0, 1)[None].float() / 255
    assert float(piq.vsi(img, ref, data_range=1.0)) == pytest.approx(it.raw, abs=1e-5)


def test_feature_cache(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    from fitguard.backbones import build_backbone
    from fitguard.training.quality.features import FeatureCache, backbone_key, patch_features, patch_key

    net = build_backbone("tiny")
    imgs = [photos["coffee"], photos["chelsea"][:224, :224]]
    feats, unique = patch_features(imgs, net, 4, tmp_path, progress=False)
    assert feats.shape == (2, 4, net.quality_dim) and feats.dtype == np.float32
    assert unique[0].all() and unique[1].tolist() == [True, False, False, False]  # one 224 image, one patch
    files = sorted((tmp_path / backbone_key(net)).rglob("*.npy"))
    assert len(files) == 5
    # Second pass reads the cache: a planted value proves it.
    from fitguard.preprocess import iqa_patches

    key = patch_key(iqa_patches(imgs[0], 4)[0])
    FeatureCache(tmp_path, net).put(key, np.full(net.quality_dim, 7.0, np.float32))
    again, _ = patch_features(imgs, net, 4, tmp_path, progress=False)
    assert (again[0, 0] == 7.0).all()
    np.testing.assert_array_equal(again[0, 1:], feats[0, 1:])
    # Features equal the backbone's quality features of UInt8Normalize'd patches (what the exported graph
    # computes).
    import torch

    from fitguard.backbones import UInt8Normalize

    with torch.inference_mode():
        x = UInt8Normalize(net.preset)(torch.from_numpy(iqa_patches(imgs[0], 4)))
        ref = net.quality_features(x).numpy()
    np.testing.assert_allclose(feats[0], ref, rtol=1e-4, atol=1e-5)
    # The namespace is the trunk's: a new head shares it, other trunk weights do not.
    ckpt = tmp_path / "tiny.pt"
    state = torch.nn.Sequential(net.features, net.fc).state_dict()
    state["1.weight"] = state["1.weight"] + 1.0
    torch.save(state, ckpt)
    new_head = build_backbone("tiny", weights=str(ckpt))
    assert new_head.weights_id != net.weights_id and backbone_key(new_head) == backbone_key(net)
    first = next(iter(state))
    state[first] = state[first] + 1.0
    torch.save(state, ckpt)
    assert backbone_key(build_backbone("tiny", weights=str(ckpt))) != backbone_key(net)


@pytest.mark.slow
def test_synthetic_covers_every_type_and_level_per_photo(photos: dict[str, np.ndarray]) -> None:
    from fitguard.training.data.distortions import DISTORTIONS, LEVELS
    from fitguard.training.quality.data import synthetic

    every = {(k, lvl) for k in DISTORTIONS for lvl in LEVELS}
    items = synthetic({"coffee": photos["coffee"]}, views=5, per_view=12, seed=1, ladder=False)
    assert len(items) == 5 * 13
    assert {(it.distortion, it.level) for it in items if it.distortion != "reference"} == every
    assert {it.reference for it in items} == {"coffee"}
    # With the ladder (the default), view 0 carries every type at every level and its clean image.
    items = synthetic({"coffee": photos["coffee"]}, views=3, per_view=12, seed=1)
    assert len(items) == 61 + 2 * 13
    ladder = [it for it in items if it.view == "coffee#0"]
    assert {(it.distortion, it.level) for it in ladder if it.distortion != "reference"} == every
    assert len(ladder) == 61 and sum(it.distortion == "reference" for it in ladder) == 1


def _check_outputs(out: Path, backbone: str, dataset: str, images: int, splits: int) -> dict:
    import torch

    from fitguard.backbones import build_backbone
    from fitguard.quality import QualityModel, load_head

    metrics = json.loads(Path(f"{out}.metrics.json").read_text())
    assert {"srcc_mean", "plcc_mean", "splits", "dataset", "backbone", "images"} <= set(metrics)
    assert (metrics["dataset"], metrics["backbone"], metrics["images"]) == (dataset, backbone, images)
    assert len(metrics["splits"]) == splits
    for s in metrics["splits"]:
        assert s["test_references"]
    assert metrics["srcc_mean"] == pytest.approx(np.mean([s["srcc"] for s in metrics["splits"]]))
    for figure in ("scatter", "levels"):
        png = Path(f"{out}.{figure}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert {"ordering", "calibration", "srcc_by_kind", "baseline", "left_out_kinds"} <= set(metrics)
    assert metrics["baseline"]["images"] > 0 and set(metrics["left_out_kinds"]) == set(
        metrics["srcc_by_kind"]
    )
    net = build_backbone(backbone)
    head, info = load_head(out, net)
    assert info["meta"]["srcc_mean"] == metrics["srcc_mean"]
    model = QualityModel(net, head).eval()
    with torch.inference_mode():
        q = model(torch.randint(0, 256, (2, 3, 3, 224, 224), dtype=torch.uint8))
    assert q.shape == (2, 1)
    return metrics


def test_cli_tid2013_tiny(tid_tree: Path, tmp_path: Path) -> None:
    from fitguard.cli import main

    out = tmp_path / "heads" / "tid.pt"
    argv = [
        "train",
        "iqa",
        "--backbone",
        "tiny",
        "--dataset",
        "tid2013",
        "--root",
        str(tid_tree),
        "--out",
        str(out),
    ]
    assert (
        main(
            [
                *argv,
                "--splits",
                "2",
                "--quality-features",
                "patches",
                "--patches",
                "2",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--hidden",
                "64",
            ]
        )
        == 0
    )
    metrics = _check_outputs(out, "tiny", "tid2013", 27, 2)
    assert metrics["head_config"]["hidden"] == 64 and metrics["patches"] == 2
    assert metrics["splits"][0]["test_references"] in (["i01"], ["i02"], ["i03"])


@pytest.mark.slow
def test_cli_kadid_and_synthetic_tiny(
    kadid_tree: Path, tmp_path: Path, photos: dict[str, np.ndarray]
) -> None:
    from fitguard.cli import main

    out = tmp_path / "kadid.pt"
    base = ["train", "iqa", "--backbone", "tiny", "--cache-dir", str(tmp_path / "cache"), "--hidden", "64"]
    assert (
        main([*base, "--dataset", "kadid10k", "--root", str(kadid_tree), "--out", str(out), "--splits", "1"])
        == 0
    )
    _check_outputs(out, "tiny", "kadid10k", 18, 1)

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        Image.fromarray(photos[name]).save(folder / f"{name}.png")
    out = tmp_path / "synthetic.pt"
    argv = [
        *base,
        "--dataset",
        "synthetic",
        "--photos",
        str(folder),
        "--views",
        "2",
        "--out",
        str(out),
        "--splits",
        "2",
    ]
    assert main(argv) == 0
    metrics = _check_outputs(out, "tiny", "synthetic", 3 * (61 + 13), 2)
    assert metrics["references"] == 3
    # One ladder per held-out scene and kind; the baseline runs on the ladders (61 images per scene).
    assert metrics["ordering"]["ladders"] == 2 * 12 and metrics["baseline"]["images"] == 3 * 61
    assert metrics["calibration"]["ladders"] == 2 * 12


@pytest.mark.slow
def test_vsi_labels_in_parallel_equal_one_process_and_are_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, photos: dict[str, np.ndarray]
) -> None:
    """Two worker processes give the labels one process gives; each view's values land in the data cache
    once, and a second run reads them from there instead of computing them."""
    from fitguard.training.quality.vsi_labels import vsi_labels

    views = photo_views({n: photos[n] for n in ("coffee", "chelsea")}, 2, 96, seed=0)
    jobs = [[(crop, [("white_noise", 3, 1), ("jpeg", 2, 1)]) for crop in crops] for crops in views.values()]
    monkeypatch.setenv("FITGUARD_CACHE", str(tmp_path / "a"))
    parallel = vsi_labels(jobs, workers=2)
    files = sorted((tmp_path / "a" / "data" / "vsi").glob("*.npy"))
    assert len(files) == 4 and not list((tmp_path / "a" / "data" / "vsi").glob("*.tmp*"))
    monkeypatch.setenv("FITGUARD_CACHE", str(tmp_path / "b"))
    single = vsi_labels(jobs, workers=1)
    for p, s in zip(parallel, single, strict=True):
        for a, b in zip(p, s, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)
            assert a.shape == (2,) and a[0] < 1.0
    np.save(files[0], np.array([0.5, 0.25]))  # a cached file is what a later run returns
    monkeypatch.setenv("FITGUARD_CACHE", str(tmp_path / "a"))
    again = [v for photo in vsi_labels(jobs, workers=2) for v in photo]
    assert any(np.array_equal(v, [0.5, 0.25]) for v in again)
