"""The quality evaluation protocol on arrays with known answers, and the BRISQUE baseline's features
against piq's implementation and samples of known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from fitguard.training.data.distortions import LEVELS
from fitguard.training.quality.evaluate import (
    Labels,
    calibration,
    ladders,
    left_out_kinds,
    ordering,
    reference_splits,
    scene_protocol,
)

KINDS = ("blur", "noise")


def _labels(scenes: int = 5) -> Labels:
    """Per scene: a ladder view (clean + every level of two kinds) and a second view with two images."""
    rows = []
    for s in range(scenes):
        ladder = f"s{s}#0"
        rows.append((f"s{s}", "reference", 0, ladder, 1.0))
        for kind in KINDS:
            rows += [(f"s{s}", kind, lvl, ladder, 1.0 - 0.15 * lvl - 0.01 * s) for lvl in LEVELS]
        rows += [(f"s{s}", "reference", 0, f"s{s}#1", 1.0), (f"s{s}", "blur", 2, f"s{s}#1", 0.7)]
    ref, kind, level, view, score = (np.array(c) for c in zip(*rows, strict=True))
    return Labels(
        scores=score.astype(float), references=ref, kinds=kind, levels=level.astype(int), views=view
    )


def test_ladders_ordering_and_calibration() -> None:
    labels = _labels()
    idx = np.arange(len(labels.scores))
    found = ladders(labels, idx)
    # Partial views (s*#1) are not ladders; every ladder has its clean image.
    assert [(v, k) for v, k, *_ in found] == [(f"s{s}#0", k) for s in range(5) for k in KINDS]
    assert all(c is not None and labels.kinds[c] == "reference" for *_, c in found)
    assert all(labels.levels[steps].tolist() == list(LEVELS) for _, _, steps, _ in found)

    perfect = ordering(labels.scores, labels, idx)
    assert len(perfect) == 10 and all(o["spearman"] == pytest.approx(1.0) for o in perfect)
    flipped = ordering(-labels.scores, labels, idx)
    assert all(o["spearman"] == pytest.approx(-1.0) for o in flipped)
    # One swapped pair of steps out of six: Spearman 1 - 6 * 2 / (6 * 35).
    pred = labels.scores.copy()
    a, b = found[0][2][0], found[0][2][1]
    pred[[a, b]] = pred[[b, a]]
    assert ordering(pred, labels, idx)[0]["spearman"] == pytest.approx(1 - 12 / 210)

    cal = calibration(labels.scores, labels, idx)
    assert len(cal) == 10 and all(c["above"] for c in cal)
    low_clean = labels.scores.copy()
    low_clean[found[0][3]] = 0.0  # scene 0's clean ladder image now scores below its level 3 images
    assert [c["above"] for c in calibration(low_clean, labels, idx)][:2] == [False, False]


def test_scene_protocol_and_left_out_kinds() -> None:
    labels = _labels(10)
    splits = reference_splits(labels.references, 10, seed=0)
    seen: list[np.ndarray] = []

    def oracle(train_idx: np.ndarray, split: int):
        seen.append(train_idx)
        return (lambda idx: labels.scores[idx]), {"best_epoch": 1}

    summary, held_out = scene_protocol(oracle, labels, splits)
    assert summary["srcc_mean"] == pytest.approx(1.0) and summary["plcc_mean"] == pytest.approx(1.0)
    assert summary["ordering"]["mean"] == pytest.approx(1.0) and summary["ordering"]["ladders"] == 2 * 2 * 10
    assert summary["calibration"]["clean_above_level3"] == 1.0 and summary["calibration"]["failures"] == []
    assert summary["calibration"]["clean_median_gap"]["mean"] == 0.0
    assert [len(t) for t, _ in held_out] == [len(te) for _, te in splits]
    for train, (tr, _) in zip(seen, splits, strict=True):
        assert np.array_equal(train, tr)

    seen.clear()
    out = left_out_kinds(oracle, labels, splits, included=summary["splits"])
    assert sorted(out) == sorted(KINDS)
    for train, kind in zip(seen, sorted(KINDS), strict=True):
        assert kind not in set(labels.kinds[train])  # the left-out kind never trains
    assert all(
        v["srcc"] == pytest.approx(1.0) and v["srcc_included"] == pytest.approx(1.0) for v in out.values()
    )


def test_brisque_fits_known_distributions() -> None:
    from scipy.stats import gennorm

    from fitguard.training.quality.brisque import aggd_fit, ggd_fit

    for shape in (0.8, 1.0, 2.0, 3.0):
        x = gennorm.rvs(shape, scale=0.5, size=400_000, random_state=1)
        fitted, var = ggd_fit(x)
        assert fitted == pytest.approx(shape, rel=0.03), shape
        assert var == pytest.approx(np.var(x), rel=1e-6)
    # Asymmetric, shape 2, left scale 1 and right scale 2 (so a third of the mass lies left): left
    # variance a quarter of the right, mean > 0.
    z = np.abs(gennorm.rvs(2.0, size=450_000, random_state=2))
    sample = np.concatenate([-z[:150_000], 2 * z[150_000:]])
    shape, eta, left, right = aggd_fit(sample[None])[0]
    assert shape == pytest.approx(2.0, rel=0.03) and right / left == pytest.approx(4.0, rel=0.03) and eta > 0


def test_brisque_features_match_piq(photos: dict[str, np.ndarray]) -> None:
    import torch
    from piq.brisque import _natural_scene_statistics
    from piq.functional import imresize, rgb2yiq

    from fitguard.training.quality.brisque import brisque_features

    images = [photos["chelsea"][:224, :224], photos["coffee"][100:324, :224]]
    ours = brisque_features(images)
    assert ours.shape == (2, 36)
    luma = torch.round(rgb2yiq(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).double())[:, :1])
    full = _natural_scene_statistics(luma).numpy()
    half = _natural_scene_statistics(imresize(luma, sizes=(112, 112))).numpy()
    np.testing.assert_allclose(ours[:, :18], full, atol=1e-4)
    # The half-size image: Pillow's antialiased bicubic vs piq's MATLAB-style imresize.
    np.testing.assert_allclose(ours[:, 18:], half, atol=5e-3)
    # Noise with heavier tails has a smaller MSCN shape.
    rng = np.random.default_rng(0)
    gauss = np.clip(128 + 30 * rng.standard_normal((224, 224, 1)), 0, 255).repeat(3, 2).astype(np.uint8)
    laplace = np.clip(128 + 21 * rng.laplace(size=(224, 224, 1)), 0, 255).repeat(3, 2).astype(np.uint8)
    shapes = brisque_features([gauss, laplace])[:, 0]
    assert shapes[0] > shapes[1] + 0.8


def test_brisque_protocol_fits_on_training_scenes_and_tracks_blur_and_noise(photos) -> None:
    """The baseline's protocol on a small labelled set with known answers: blur and noise ladders of four
    photos, the score falling with the level. BRISQUE features are made for exactly this, so its held-out
    ranking must follow the levels, and it reports the head's figures on the same images beside its own.
    (The head against BRISQUE on the scenes set is ``make report``'s figure, docs/iqa.md.)"""
    from fitguard.training.data.distortions import distort
    from fitguard.training.data.iqa_folders import IQAItem
    from fitguard.training.quality.brisque import brisque_protocol

    items = []
    for name, rgb in photos.items():
        crop = np.ascontiguousarray(rgb[:224, :224])
        items.append(IQAItem(f"{name}/ref", name, 1.0, "reference", 0, 1.0, lambda c=crop: c))
        for kind in ("gaussian_blur", "white_noise"):
            for level in LEVELS:
                image = distort(crop, kind, level, seed=level)
                items.append(
                    IQAItem(
                        f"{name}/{kind}/{level}", name, 1 - level / 6, kind, level, 0.0, lambda x=image: x
                    )
                )
    labels = Labels.from_items(items)
    splits = reference_splits(labels.references, 2, test_fraction=0.5, seed=0)
    perfect = [(test, labels.scores[test]) for _, test in splits]
    result = brisque_protocol(items, labels, splits, perfect)
    assert result["images"] == len(items)  # every image belongs to a complete ladder
    assert result["srcc_mean"] > 0.5, result
    assert result["head_srcc_mean"] == pytest.approx(1.0)  # the "head" here is the labels themselves
