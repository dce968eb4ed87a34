"""Image groups, detector features, the pair protocol and the detector file (tiny backbone, real photos)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fitguard.backbones import build_backbone  # noqa: E402
from fitguard.detector import (  # noqa: E402
    DETECTOR_FORMAT,
    FIT_LABEL,
    BadDetectorError,
    detector_features,
    load_detector,
    quality_logit,
)
from fitguard.preprocess import center_offset, classifier_crop, iqa_patches  # noqa: E402
from fitguard.quality import QualityHead, save_head  # noqa: E402
from fitguard.training import image_groups as IG  # noqa: E402
from fitguard.training.attacks import adversarial as AA  # noqa: E402
from fitguard.training.attacks import fooling as AF  # noqa: E402
from fitguard.training.paper import distorted as PD  # noqa: E402
from fitguard.training.paper import originals as PO  # noqa: E402
from fitguard.training.paper.features import compute_features, load_feature_models  # noqa: E402
from fitguard.training.paper.protocol import pair_splits, run_protocol  # noqa: E402
from fitguard.training.paper.svm import fit_detector  # noqa: E402
from fitguard.training.paper.train import train_detector  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(2)
    return build_backbone("tiny")


@pytest.fixture(scope="module")
def tiny_head(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("head") / "head.pt"
    torch.manual_seed(0)
    save_head(path, QualityHead(tiny.quality_dim, hidden=64), tiny)
    return path


@pytest.fixture(scope="module")
def originals(tiny, photos):
    return PO.originals_group(tiny, photos, views=6)


def test_detector_features_sort_top5_and_take_the_quality_logit():
    probs = np.full((3, 1000), 1e-4, np.float32)
    probs[:, [7, 3, 9]] = [0.5, 0.2, 0.1]
    x = detector_features(probs, np.array([0.5, 0.0, 1.0], np.float32))
    assert x.shape == (3, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :5], [0.5, 0.2, 0.1, 1e-4, 1e-4], rtol=1e-6)
    assert x[0, 5] == 0.0  # logit(0.5)
    assert (
        np.isfinite(x).all()
        and x[1, 5] == pytest.approx(-9.21, abs=0.01)
        and x[2, 5] == pytest.approx(-x[1, 5], abs=1e-3)
    )
    q = np.linspace(0, 1, 101, dtype=np.float32)
    assert np.all(np.diff(quality_logit(q)[1:-1]) > 0)  # monotone: quality ranks are kept


def test_quality_weight_is_chosen_by_cv_and_baked_into_an_exportable_scaler():
    import onnxruntime as ort

    from fitguard import contract as c
    from fitguard.detector import Detector
    from fitguard.export.onnx_export import export_detector
    from fitguard.reference import reference_outputs
    from fitguard.training.paper.svm import bake_quality_weight, fit_detector, make_pipeline

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    y = (x[:, 5] + 0.2 * x[:, 0] > 0).astype(int)  # quality decides, confidence barely matters
    weighted = make_pipeline(1.0, 0.2, quality=4.0).fit(x, y)
    baked = bake_quality_weight(weighted)
    assert [name for name, _ in baked.steps] == ["scaler", "svc"]
    np.testing.assert_allclose(baked.decision_function(x), weighted.decision_function(x), atol=1e-9)

    det = fit_detector(x, y, np.arange(120) // 4, 0.05)
    assert det.meta["quality_weight"] > 1  # the grid prefers to weigh the decisive feature up
    assert [name for name, _ in det.pipeline.steps] == ["scaler", "svc"]
    assert fit_detector(x[:, :5], y, np.arange(120) // 4, 0.05).meta["quality_weight"] == 1.0

    # The baked file exports, and the graph agrees with scikit-learn on real-looking rows.
    baked_det = Detector(det.pipeline, det.threshold)
    probs = rng.dirichlet(np.full(1000, 0.05), size=64).astype(np.float32)
    quality = rng.uniform(0, 1, (64, 1)).astype(np.float32)
    energy = rng.uniform(5, 20, (64, 1)).astype(np.float32)  # the paper's features leave it unread
    session = ort.InferenceSession(export_detector(baked_det).SerializeToString())
    (got,) = session.run([c.FIT_SCORE], {c.PROBS: probs, c.QUALITY_SCORE: quality, c.ENERGY: energy})
    want = reference_outputs(probs, quality, baked_det, energy)[c.FIT_SCORE]
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("learner", ["logistic", "rbf_svm"])
def test_fit_set_detector_reads_the_energy(tmp_path, learner):
    """The ``fit`` set is the paper's six with ENERGY before the quality logit; its graph agrees with
    numpy + scikit-learn for either learner the shipped recipe may choose, and the file round-trips
    with its feature set."""
    import onnxruntime as ort
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from fitguard import contract as c
    from fitguard.detector import FIT_SET, Detector, save_detector
    from fitguard.export.onnx_export import export_detector, probe_inputs
    from fitguard.reference import reference_outputs

    probs, quality, energy = probe_inputs(300, seed=4)
    x = detector_features(probs, quality, FIT_SET, energy)
    assert x.shape == (300, 7)
    np.testing.assert_array_equal(x[:, 5:6], energy)
    np.testing.assert_array_equal(np.delete(x, 5, axis=1), detector_features(probs, quality))
    with pytest.raises(ValueError, match="energy"):
        detector_features(probs, quality, FIT_SET)
    y = (x[:, 5] - 4 * x[:, 0] > np.median(x[:, 5] - 4 * x[:, 0])).astype(int)
    clf = LogisticRegression() if learner == "logistic" else SVC(kernel="rbf")
    det = Detector(make_pipeline(StandardScaler(), clf).fit(x, y), 0.1, {}, FIT_SET)
    save_detector(tmp_path / "d.joblib", det)
    loaded = load_detector(tmp_path / "d.joblib")
    assert loaded.feature_set == FIT_SET
    session = ort.InferenceSession(export_detector(loaded).SerializeToString())
    probs, quality, energy = probe_inputs(64, seed=5)
    (got,) = session.run([c.FIT_SCORE], {c.PROBS: probs, c.QUALITY_SCORE: quality, c.ENERGY: energy})
    want = reference_outputs(probs, quality, loaded, energy)[c.FIT_SCORE]
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert 0 < np.mean(want >= 0) < 1


def test_guarded_detector_ranks_by_msp_and_vetoes_in_its_graph(tmp_path):
    """A guarded detector's confidence is the top-1 probability, minus one where the energy and the quality
    logit are both past the veto's limits: the veto moves answers below every other and never reorders
    the rest. The exported graph computes the same FIT_SCORE as numpy, and the file round-trips."""
    import onnxruntime as ort

    from fitguard import contract as c
    from fitguard.detector import FIT_SET, Detector, Veto, save_detector
    from fitguard.export.onnx_export import export_detector, probe_inputs
    from fitguard.reference import reference_outputs

    probs, quality, energy = probe_inputs(300, seed=6)
    x = detector_features(probs, quality, FIT_SET, energy)
    veto = Veto(energy_min=float(np.median(energy)), quality_logit_max=float(np.median(x[:, -1])))
    det = Detector(None, 0.3, {}, FIT_SET, veto)
    fires = veto.fires(x)
    np.testing.assert_array_equal(
        fires, (energy[:, 0] >= veto.energy_min) & (x[:, -1] <= veto.quality_logit_max)
    )
    assert 0.1 < fires.mean() < 0.4  # both halves at once: about a quarter
    conf = det.confidence(x)
    np.testing.assert_allclose(conf[~fires], x[~fires, 0], atol=1e-7)
    assert conf[fires].max() < conf[~fires].min()  # a vetoed answer ranks below every other
    np.testing.assert_allclose(det.score(x), conf - 0.3, atol=1e-6)
    save_detector(tmp_path / "g.joblib", det)
    loaded = load_detector(tmp_path / "g.joblib")
    assert loaded.guarded and loaded.veto == veto and loaded.pipeline is None
    session = ort.InferenceSession(export_detector(loaded).SerializeToString())
    probs, quality, energy = probe_inputs(128, seed=7)
    feeds = {c.PROBS: probs, c.QUALITY_SCORE: quality, c.ENERGY: energy}
    got = session.run([c.FIT_SCORE, c.FIT, c.TOP5_IDS], feeds)
    want = reference_outputs(probs, quality, loaded, energy)
    np.testing.assert_allclose(got[0], want[c.FIT_SCORE], atol=1e-5)
    np.testing.assert_array_equal(got[1], want[c.FIT])
    np.testing.assert_array_equal(got[2], want[c.TOP5_IDS])
    assert (got[0] < -0.3).any() and (got[0] > -0.3).any()  # the probes hit both sides of the veto
    with pytest.raises(ValueError, match="guarded"):
        save_detector(tmp_path / "bad.joblib", Detector(None, 0.0, {}, "paper", veto))


def test_old_detector_format_is_refused(tmp_path):
    import joblib

    path = tmp_path / "old.joblib"
    joblib.dump({"format": "fitguard.detector/1", "pipeline": None, "threshold": 0.0}, path)
    with pytest.raises(BadDetectorError, match=DETECTOR_FORMAT):
        load_detector(path)


def test_pair_splits_never_split_a_pair():
    ids = np.repeat(np.arange(11), 3)  # 11 pairs/photos, 3 rows each
    splits = pair_splits(ids, repeats=10, seed=3)
    assert len(splits) == 10
    for train, test in splits:
        assert not set(train) & set(test)
        assert sorted(np.r_[train, test].tolist()) == list(range(11))
        assert len(train) == 6 and len(test) == 5  # 50%, rounded
        rows_train = np.isin(ids, train)
        for i in range(11):  # every row of one id lands on one side
            assert len(set(rows_train[ids == i].tolist())) == 1
    assert len({tuple(t.tolist()) for t, _ in splits}) > 1  # the repeats differ
    again = pair_splits(ids, repeats=10, seed=3)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(splits, again, strict=True))


def test_originals_views_and_reference_labels(tiny, originals, photos):
    side = tiny.preset.resize
    assert originals.images.shape[1:] == (side, side, 3) and originals.images.dtype == np.uint8
    assert originals.meta["candidates"] == 6 * len(photos)
    assert 1 <= len(originals) <= originals.meta["candidates"]
    # Kept views are predicted as their photo's reference label, which is the whole-photo view's top-1.
    top1 = IG.predict_logits(tiny, originals.images).argmax(1)
    assert np.array_equal(top1, originals.labels)
    names = sorted(photos)
    for s in set(originals.sources.tolist()):
        whole = IG.canvas(photos[names[s]], side)
        assert (
            IG.predict_logits(tiny, whole[None]).argmax(1)[0] == originals.labels[originals.sources == s][0]
        )
    assert np.array_equal(originals.pairs, np.arange(len(originals)))
    # Deterministic.
    again = PO.originals_group(tiny, photos, views=6)
    assert np.array_equal(again.images, originals.images) and np.array_equal(again.labels, originals.labels)


def test_group_cache_round_trip(tiny, photos, tmp_path):
    first = PO.originals_group(tiny, photos, views=3, cache=tmp_path)
    files = list((tmp_path / "groups").glob("originals-*.npz"))
    assert len(files) == 1
    second = PO.originals_group(tiny, photos, views=3, cache=tmp_path)
    assert np.array_equal(first.images, second.images) and list(first.tags) == list(second.tags)
    assert second.meta == first.meta


def test_distorted_group(originals):
    group = PD.distorted_group(originals, max_sources=3)
    assert len(group) == 3 * 4 * 5
    assert set(group.tags.tolist()) == {"gaussian_blur", "white_noise", "jpeg", "jpeg2000"}
    assert set(group.levels.tolist()) == {1, 2, 3, 4, 5}
    assert np.array_equal(group.labels, originals.labels[group.pairs])
    assert group.images.shape[1:] == originals.images.shape[1:]
    assert np.array_equal(group.images, PD.distorted_group(originals, max_sources=3).images)
    blur5 = group.images[(group.tags == "gaussian_blur") & (group.levels == 5)][0]
    src = originals.images[group.pairs[(group.tags == "gaussian_blur") & (group.levels == 5)][0]]
    assert (
        np.abs(np.diff(blur5.astype(float), axis=0)).mean()
        < np.abs(np.diff(src.astype(float), axis=0)).mean()
    )


def test_adversarial_group_is_bounded_and_on_the_crop(tiny, originals):
    adv = AA.adversarial_group(tiny, originals, fit_images=4, max_iter=1)
    assert adv.images.shape == originals.images.shape
    assert adv.meta["linf"] <= 10 / 255 + 1e-6
    diff = adv.images.astype(int) - originals.images.astype(int)
    assert np.abs(diff).max() <= 10
    crop, side = tiny.preset.crop, tiny.preset.resize
    o = center_offset(side, crop)
    outside = np.ones((side, side), bool)
    outside[o : o + crop, o : o + crop] = False
    assert not diff[:, outside].any()  # only what the classifier sees is perturbed
    top1 = IG.predict_logits(tiny, adv.images).argmax(1)
    assert adv.meta["fooling_rate"] == pytest.approx(np.mean(top1 != originals.labels))
    again = AA.adversarial_group(tiny, originals, fit_images=4, max_iter=1)
    assert np.array_equal(again.images, adv.images)


def test_fooling_groups(tiny):
    gd = AF.fool_gd_group(tiny, count=3, steps=3)
    ev = AF.fool_ev_group(tiny, count=3, generations=2, batch=4)
    side = tiny.preset.resize
    for g in (gd, ev):
        assert g.images.shape == (3, side, side, 3)
        assert (g.labels == IG.NO_LABEL).all() and (g.pairs == -1).all()
    assert (gd.images[:, 0, 0] == AF.mean_canvas(tiny)[0, 0]).all()  # border keeps the mean image
    assert len(set(ev.tags.tolist())) == 3  # one elite per class
    assert ev.meta["evaluations"] == 8
    assert np.array_equal(gd.images, AF.fool_gd_group(tiny, count=3, steps=3).images)
    assert np.array_equal(ev.images, AF.fool_ev_group(tiny, count=3, generations=2, batch=4).images)


def test_features_match_serving_preprocessing(tiny, tiny_head, originals):
    from fitguard.classifier import Classifier

    models = load_feature_models("tiny", tiny_head)
    sub = originals.subset([0, 1])
    feats = compute_features(models, sub, patches=2)
    x = torch.from_numpy(np.stack([classifier_crop(img, tiny.preset) for img in sub.images]))
    p = torch.from_numpy(np.stack([iqa_patches(img, 2) for img in sub.images]))
    with torch.inference_mode():
        probs = Classifier(models.backbone)(x).numpy()
        q = models.quality(p).reshape(-1).numpy()
    np.testing.assert_allclose(feats.probs, probs, atol=1e-5)
    np.testing.assert_allclose(feats.quality, q, atol=1e-6)
    assert feats.features.shape == (2, 6)


def test_threshold_rule_hits_target_false_alarms():
    rng = np.random.default_rng(0)
    n = 60
    fit = rng.normal(0, 1, (n, 6))
    unfit = rng.normal(1.5, 1, (n, 6))
    x = np.r_[fit, unfit].astype(np.float32)
    y = np.r_[np.ones(n), np.zeros(n)].astype(int)
    g = np.r_[np.arange(n), np.arange(n)] // 3
    det = fit_detector(x, y, g, target_far=0.2)
    assert det.meta["target_far"] == 0.2 and det.threshold != 0.0
    # On the training originals themselves (in-sample) the flagged share is close to the target.
    assert 0.02 <= np.mean(~det.fit_verdict(fit)) <= 0.35
    assert fit_detector(x, y, g, target_far=None).threshold == 0.0


def test_run_protocol_on_tiny(tiny, tiny_head, originals):
    models = load_feature_models("tiny", tiny_head)
    adv = AA.adversarial_group(tiny, originals, fit_images=4, max_iter=1)
    fo, fa = compute_features(models, originals, 2), compute_features(models, adv, 2)
    runs = run_protocol(originals, fo, fa, repeats=3, split_by="pair", progress=None)
    assert len(runs) == 3
    for r in runs:
        assert r["n_test_pairs"] == len(originals) - len(r["train_ids"])


@pytest.mark.slow
def test_train_detector_file_round_trip(tiny_head, tmp_path, monkeypatch):
    monkeypatch.setenv("FITGUARD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "detector.joblib"
    config = IG.GroupConfig(views=4, uap_fit_images=4, uap_max_iter=1)
    summary = train_detector("tiny", tiny_head, out, patches=2, repeats=3, target_far=0.1, config=config)
    det = load_detector(out)
    assert det.threshold == pytest.approx(summary["threshold"])
    assert det.meta["backbone"] == "tiny" and det.meta["target_far"] == 0.1 and det.meta["repeats"] == 3
    assert list(det.pipeline.classes_) == [0, FIT_LABEL]
    assert det.pipeline.named_steps["svc"].kernel == "rbf"
    saved = json.loads(out.with_name(out.name + ".json").read_text())
    assert saved["n_pairs"] == summary["n_pairs"] and saved["args"]["patches"] == 2
    assert saved["held_out"]["adv_detection_rate"]["n_repeats"] == 3
    feats = np.random.default_rng(0).random((5, 6)).astype(np.float32)
    np.testing.assert_allclose(
        det.score(feats), det.pipeline.decision_function(feats) - det.threshold, rtol=1e-5
    )
