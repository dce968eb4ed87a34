"""The evaluation report: metric definitions, report.json keys and counts, and the detector's edge."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fitguard.training import metrics as M  # noqa: E402
from fitguard.training.image_groups import GroupConfig  # noqa: E402
from fitguard.training.paper import evaluate as E  # noqa: E402
from fitguard.training.paper import protocol as P  # noqa: E402
from fitguard.training.paper import scoring as S  # noqa: E402


def test_fpr_at_95_tpr_and_far_threshold():
    clean = np.arange(100, dtype=float)  # scores 0..99
    unfit = np.arange(50, 150, dtype=float)  # the loosest threshold keeping 95% of these is 55
    assert M.fpr_at_tpr(clean, unfit) == pytest.approx(45 / 100)
    thr = M.far_threshold(clean, 0.05)
    assert np.mean(clean > thr) <= 0.05 and np.mean(clean >= thr) > 0.05 - 1e-9
    assert M.fpr_at_tpr(clean, clean + 1000) == 0.0


def test_risk_coverage_and_aurc():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([True, True, False, True])
    cov, risk = M.risk_coverage(conf, correct)
    np.testing.assert_allclose(cov, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 0, 1 / 3, 1 / 4])
    assert M.aurc(conf, correct) == pytest.approx((0 + 0 + 1 / 3 + 1 / 4) / 4)
    assert M.accuracy_at_coverage(conf, correct, 0.5) == 1.0
    assert M.accuracy_at_coverage(conf, correct, 0.8) == pytest.approx(0.75)  # ceil(0.8 * 4) = 4 images
    # A perfect ranking has the lowest AURC.
    assert M.aurc(np.array([4, 3, 2, 1.0]), np.array([True, True, True, False])) < M.aurc(conf, correct)


def test_base_scores_follow_pytorch_ood_definitions():
    from fitguard.training.paper.features import GroupFeatures

    logits = np.random.default_rng(0).normal(size=(4, 1000)).astype(np.float32)
    feats = GroupFeatures(logits, np.array([0.1, 0.5, 0.7, 0.9], np.float32))
    s = S.base_scores(feats)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(s["msp"], -p.max(1), rtol=1e-5)
    m = logits.max(1)
    np.testing.assert_allclose(s["energy"], -(m + np.log(np.exp(logits - m[:, None]).sum(1))), rtol=1e-5)
    np.testing.assert_allclose(s["quality"], -feats.quality, rtol=1e-6)


def test_detector_all_learns_the_named_unfit_groups_only():
    from fitguard.training.image_groups import make_group

    rng = np.random.default_rng(0)
    blank = np.zeros((1, 8, 8, 3), np.uint8)

    def group(name, n, pairs):
        return make_group(name, np.repeat(blank, n, 0), np.zeros(n, int), pairs, pairs, [name] * n)

    gid = np.repeat(np.arange(10), 2)  # 10 photos x 2 originals
    groups = {
        "originals": group("originals", 20, np.arange(20)),
        "adversarial": group("adversarial", 20, np.arange(20)),
        "distorted": group("distorted", 40, np.repeat(np.arange(20), 2)),  # 2 per original
    }
    x = {g: rng.normal(size=(len(grp), 6)).astype(np.float32) for g, grp in groups.items()}
    x["distorted"][:, 5] -= 3  # separable from the originals
    train_ids = np.arange(5)  # photos 0-4: originals 0-9, distorted 0-19
    det = P.fit_all_groups(groups, x, gid, train_ids, {}, 0.05, ("distorted",))
    assert det.meta["n_train"] == 10 + 20
    det = P.fit_all_groups(groups, x, gid, train_ids, {}, 0.05)
    assert det.meta["n_train"] == 10 + 10 + 20  # every group, adversarial included


@pytest.mark.slow
def test_report_on_tiny(tmp_path, monkeypatch):
    from fitguard.backbones import build_backbone
    from fitguard.quality import QualityHead, save_head
    from fitguard.training.paper.train import train_detector

    torch.set_num_threads(2)
    monkeypatch.setenv("FITGUARD_CACHE", str(tmp_path / "cache"))
    bb = build_backbone("tiny")
    head = tmp_path / "head.pt"
    torch.manual_seed(0)
    save_head(head, QualityHead(bb.quality_dim, hidden=64), bb)
    config = GroupConfig(
        views=4,
        uap_fit_images=4,
        uap_max_iter=1,
        distort_sources=4,
        fool_gd_count=3,
        fool_gd_steps=2,
        fool_ev_count=3,
        fool_ev_generations=2,
    )
    det = tmp_path / "det.joblib"
    train_detector("tiny", head, det, patches=1, repeats=3, config=config)
    rep = E.evaluate("tiny", head, det, tmp_path / "report", patches=1, config=config)

    out = tmp_path / "report"
    saved = json.loads((out / "report.json").read_text())
    assert saved["n_images"] == rep["n_images"]
    # Trained the paper's way (adversarial alone), so detector_all learns every group.
    assert saved["setup"]["detector_all_unfit_groups"] == list(E.UNFIT_GROUPS)
    for name in saved["plots"]:
        assert (out / name).stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "Table IV" in md and "Table V" in md and "kde_quality_wup.png" in md

    n = saved["n_images"]
    assert n["distorted"] == 4 * 4 * 5 and n["fool_gd"] == 3 and n["fool_ev"] == 3
    assert n["adversarial"] == n["originals"]
    res = saved["results"]
    for m in E.METHODS:
        for g in E.UNFIT_GROUPS:
            e = res[m][g]
            assert set(e) >= {"auroc", "fpr_at_95tpr", "far_0.05", "far_0.0857", "n_images", "n_clean"}
            assert set(e["far_0.05"]) >= {"detection_rate", "threshold", "realized_far"}
            assert e["auroc"]["n_repeats"] == 3
            for rate, k in zip(
                e["far_0.05"]["detection_rate"]["per_repeat"], e["n_images"]["per_repeat"], strict=True
            ):
                assert rate * k == pytest.approx(round(rate * k))  # a share of counted images
            assert all(r <= 0.05 + 1e-9 for r in e["far_0.05"]["realized_far"]["per_repeat"])
    for g in ("fool_gd", "fool_ev"):  # half test, half train for the all-groups detector
        assert res["detector"][g]["n_images"]["per_repeat"] == [n[g] // 2] * 3
    assert set(saved["comparisons_all"]) == set(E.METHODS) - {"detector_all"}
    op = res["operating_point"]
    for g in E.UNFIT_GROUPS:
        d = op["detector"][g]
        for rate, k, hit in zip(
            d["detection_rate"]["per_repeat"],
            d["n_images"]["per_repeat"],
            d["n_detected"]["per_repeat"],
            strict=True,
        ):
            assert rate == pytest.approx(hit / k)
    for g in E.LABELLED_GROUPS:
        d = op["baseline2"][g]
        for acc, fit, ok in zip(
            d["accuracy_fit"]["per_repeat"],
            d["n_fit"]["per_repeat"],
            d["n_fit_correct"]["per_repeat"],
            strict=True,
        ):
            if fit:
                assert acc == pytest.approx(ok / fit)
    # Test-half originals and adversarial images come in pairs; distorted ones are 20 per test original.
    assert (
        res["detector"]["adversarial"]["n_images"]["per_repeat"]
        == res["detector"]["adversarial"]["n_clean"]["per_repeat"]
    )
    sel = res["selective"]
    assert set(sel) >= {"n_images", "base_accuracy", *E.METHODS}
    assert saved["kde_n_images"] == n["adversarial"] + n["distorted"]
    assert saved["shipped_detector"]["fool_ev"]["n_images"] == 3
