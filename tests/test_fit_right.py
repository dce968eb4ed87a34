"""Fit = right evaluation: signals, the stamp-split protocol and the bootstrap, on generated features."""

from __future__ import annotations

import numpy as np
import pytest

from fitguard.training.fit.features import FitFeatures
from fitguard.training.fit.population import CLEAN, DISTORTED, FOOL_GD, UAP_DEEPFOOL, Population
from fitguard.training.fit.protocol import (
    PASS_RATE,
    restrict,
    right_flags,
    run_repeats,
    stamp_split,
    table_v,
    untrained_scores,
)
from fitguard.training.fit.signals import bootstrap, prob_scores, selective_metrics, signal_groups


def _features(n: int, rng: np.random.Generator, right: np.ndarray) -> FitFeatures:
    """Logits whose top-1 is class 0 where right; confidence (margin) tracks rightness, with noise."""
    logits = rng.normal(0, 1, (n, 1000)).astype(np.float32)
    target = np.where(right, 0, 1 + rng.integers(0, 999, n))
    logits[np.arange(n), target] += np.where(right, 6.0, 4.5) + rng.normal(0, 1.0, n)
    patch = np.repeat(logits[:, None], 4, axis=1) + rng.normal(0, 1.5, (n, 4, 1000)).astype(np.float32)
    quality = rng.uniform(0.2, 0.9, n).astype(np.float32)
    return FitFeatures(logits, quality, patch, rng.normal(0, 1, (n, 34)).astype(np.float32))


@pytest.fixture(scope="module")
def world() -> dict:
    rng = np.random.default_rng(0)
    n_stamps, per = 30, 6
    n = n_stamps * per + 10
    stamp_of = np.repeat(np.arange(n_stamps), per)
    hidden_right = np.concatenate([rng.random(n_stamps * per) < 0.6, np.zeros(10, bool)])
    feats = _features(n, rng, hidden_right)
    kinds = (CLEAN, DISTORTED, UAP_DEEPFOOL)
    group = np.asarray([kinds[i % 3] for i in range(n - 10)] + [FOOL_GD] * 10)
    item = np.concatenate([np.arange(n - 10), -np.ones(10, np.int64)])
    codec = np.where(np.arange(n) % 2 == 0, "jpeg@90/224", "webp@80/320")
    kind = np.where(group == CLEAN, codec, group)
    pop = Population([], item, group, kind, np.zeros(n, np.int64))
    acceptable = [frozenset({0})] * (n - 10)
    right = right_flags(pop, feats.logits.argmax(1), acceptable)
    categories = ("animals", "food", "vehicles")
    stamps = np.asarray([f"{categories[s % 3]}/s{s}" for s in stamp_of] + [""] * 10)
    return {"pop": pop, "feats": feats, "right": right, "stamps": stamps, "hidden": hidden_right}


def test_right_flags_follow_top1_and_fooling_is_wrong(world: dict) -> None:
    top1 = world["feats"].logits.argmax(1)
    real = world["pop"].item >= 0
    assert np.array_equal(world["right"][real], top1[real] == 0)
    assert world["right"].mean() > 0.4
    assert not world["right"][world["pop"].item < 0].any()


def test_prob_scores_rank_confident_above_flat() -> None:
    logits = np.zeros((2, 1000))
    logits[0, 3] = 10.0
    s = prob_scores(logits)
    for name in ("msp", "energy", "doctor", "entropy"):
        assert s[name][0] > s[name][1], name
    assert s["msp"][1] == pytest.approx(1e-3)


def test_signal_groups_shapes_and_patch_agreement(world: dict) -> None:
    sig = signal_groups(world["feats"])
    n = len(world["right"])
    assert sig["paper"].shape == (n, 6) and sig["probvec"].shape == (n, 3) and sig["levels"].shape == (n, 34)
    agree = sig["patches"][:, 0]
    assert agree[world["right"]].mean() > agree[~world["right"]].mean()


def test_stamp_split_keeps_stamps_whole() -> None:
    stamps = np.asarray(["a", "a", "b", "b", "c", "c", "d", "d", "", ""])
    train = stamp_split(stamps, seed=3)
    for s in "abcd":
        assert len(set(train[stamps == s].tolist())) == 1
    assert train[stamps == ""].sum() == 1


def test_repeats_bootstrap_and_table_v(world: dict) -> None:
    feats, right = world["feats"], world["right"]
    reps = run_repeats(
        pop=world["pop"],
        signals=signal_groups(feats),
        untrained=untrained_scores(feats.logits, feats.quality),
        right=right,
        stamps=world["stamps"],
        repeats=3,
        svms=False,
    )
    assert len(reps) == 3
    for r in reps:
        assert not set(r["stamps"].tolist()) & set(
            world["stamps"][~np.isin(np.arange(len(right)), r["test"])]
        )
    methods = ["msp", "quality", "fit_right"]
    res = bootstrap(reps, methods, lambda c, ok: selective_metrics(c, ok)["aurc"], draws=30)
    for m in methods:
        per_repeat = [selective_metrics(r["conf"][m], r["right"])["aurc"] for r in reps]
        assert res[m]["mean"] == pytest.approx(np.mean(per_repeat))  # the point is the repeats' mean
        lo, hi = res[m]["ci95"]
        assert lo < hi  # the draws resample stamps: reusing the rows would give one value
    # margin tracks rightness, quality is noise: MSP ranks better than quality
    assert res["msp"]["mean"] < res["quality"]["mean"]
    assert res["quality"]["minus_msp"]["ci95"][0] > 0
    tv = table_v(restrict(reps, (CLEAN,)), methods, (CLEAN,))
    assert tv["msp"][CLEAN]["right_passed"] == pytest.approx(PASS_RATE, abs=0.2)


def test_fit_features_match_the_served_models(tmp_path) -> None:
    """One pass gives the classifier's logits and DTNIQ-f's quality exactly as the served graphs do."""
    import torch

    from fitguard.backbones import UInt8Normalize, build_backbone
    from fitguard.preprocess import classifier_crop, iqa_patches
    from fitguard.quality import QualityHead, QualityModel
    from fitguard.training.fit.features import compute_fit_features
    from fitguard.training.paper.features import FeatureModels

    torch.manual_seed(0)
    bb = build_backbone("tiny").eval()
    qm = QualityModel(bb, QualityHead(bb.quality_dim, hidden=32)).eval()
    models = FeatureModels(bb, qm, {}, "test")
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((256, 256), (300, 410), (240, 230))
    ]
    feats = compute_fit_features(models, images, patches=4, batch_size=2, cache=tmp_path)
    again = compute_fit_features(models, images, patches=4, cache=tmp_path)  # from the cache
    with torch.inference_mode():
        crops = torch.from_numpy(np.stack([classifier_crop(im, bb.preset) for im in images]))
        logits = bb(UInt8Normalize(bb.preset)(crops)).numpy()
        patches = torch.from_numpy(np.stack([iqa_patches(im, 4) for im in images]))
        quality = qm(patches).reshape(-1).numpy()
        patch_logits = bb(UInt8Normalize(bb.preset)(patches.flatten(0, 1))).reshape(3, 4, -1).numpy()
    np.testing.assert_allclose(feats.logits, logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(feats.quality, quality, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats.patch_logits, patch_logits, rtol=1e-4, atol=1e-4)
    assert feats.level_stats.shape == (3, 2 * len(bb.level_channels))
    np.testing.assert_allclose(again.patch_logits, feats.patch_logits, atol=1e-2)


def test_summaries_domain_shift_and_report(world: dict, tmp_path) -> None:
    from fitguard.training.fit.evaluate import summarize_mixes
    from fitguard.training.fit.report import write_markdown
    from fitguard.training.fit.shifts import domain_shifts, shift_splits

    feats, right = world["feats"], world["right"]
    common = {
        "pop": world["pop"],
        "signals": signal_groups(feats),
        "untrained": untrained_scores(feats.logits, feats.quality),
        "stamps": world["stamps"],
    }
    reps = run_repeats(**common, right=right, repeats=2)
    methods = list(reps[0]["conf"])
    assert {"paper_uap", "paper_right", "fit_right", "lr_msp_quality"} <= set(methods)
    res = summarize_mixes(reps, methods, draws=10)
    assert set(res) == {"natural", "paper", "clean"}
    assert res["paper"]["n_test_mean"] > res["natural"]["n_test_mean"] > res["clean"]["n_test_mean"]
    # Confidence tracks rightness in this world, so MSP ranks well below a random order's risk.
    assert res["clean"]["aurc"]["msp"]["mean"] < 0.8 * (1 - res["clean"]["base_accuracy"])
    scenes = np.asarray([f"scene{i % 5}" for i in range(len(right) - 10)] + [""] * 10)
    splits = shift_splits(common["pop"], scenes, common["stamps"], seed=0)
    assert set(splits) == {"categories", "backgrounds", "compression"}
    for name, (train, test, _) in splits.items():
        assert not (train & test).any(), name
        shared = set(common["stamps"][train].tolist()) & set(common["stamps"][test].tolist()) - {""}
        assert not shared, name  # no stamp on both sides
    train, test, _ = splits["backgrounds"]
    assert not set(scenes[train].tolist()) & set(scenes[test].tolist()) - {""}
    shift = domain_shifts(**common, scenes=scenes, right=right, draws=10)
    assert shift["categories"]["train"] == ["animals", "food"]
    aurc = shift["backgrounds"]["clean"]["aurc"]
    assert aurc["msp"]["mean"] < aurc["quality"]["mean"]  # quality is drawn at random here
    rep = {
        "setup": {
            "backbone": "tiny",
            "iqa_head": "h",
            "patches": 4,
            "repeats": 2,
            "bootstrap_draws": 10,
            "pass_rate_right_clean": PASS_RATE,
            "attacks": {},
        },
        "groups": {"clean": {"n": 1, "accuracy": 1.0, "accuracy_wup": 1.0, "quality_median": 0.5}},
        "results": res,
        "wordnet_aurc": {m: res[m]["aurc"] for m in res},
        "domain_shift": shift,
        "seconds": {},
    }
    write_markdown(tmp_path / "report.md", rep, "risk_coverage.png")
    text = (tmp_path / "report.md").read_text()
    assert "## natural mix" in text and "Domain shift (compression)" in text and "fit_right_no_levels" in text


def test_shipped_recipe_threshold_and_fooling_weight() -> None:
    """The threshold passes PASS_RATE of the right clean rows out of fold, and the fooling weight is one
    whose out-of-fold scores refuse at least FOOLING_REFUSAL of the fooling rows."""
    from fitguard.training.fit.recipes import FOOLING_REFUSAL, PASS_RATE, fit_right_detector

    rng = np.random.default_rng(3)
    n, n_fool = 400, 16
    right = np.concatenate([rng.random(n) < 0.6, np.zeros(n_fool, bool)])
    x = rng.normal(0, 1, (n + n_fool, 7))
    x[:n, 0] += np.where(right[:n], 1.0, -0.5)  # confidence tracks rightness
    x[n:, 0] += 1.5  # fooling images are confident ...
    x[n:, -1] -= 8.0  # ... and of very low quality
    groups = np.concatenate(
        [np.repeat(np.arange(n // 4), 4).astype(str), [f"fool{i}" for i in range(n_fool)]]
    )
    clean = np.concatenate([np.arange(n) % 2 == 0, np.zeros(n_fool, bool)])
    fooling = np.arange(n + n_fool) >= n
    det, oof = fit_right_detector(x, right, groups=groups, clean=clean, fooling=fooling)
    assert np.mean(oof[clean & right] >= det.threshold) == pytest.approx(PASS_RATE, abs=0.02)
    cand = det.meta["candidates"][str(det.meta["fooling_weight"])]
    assert cand["oof_fooling_refused"] >= FOOLING_REFUSAL
    assert det.feature_set == "fit" and det.meta["fit_means"]
    assert np.mean(det.score(x[fooling]) < 0) >= FOOLING_REFUSAL


def test_guarded_recipe_bounds_the_veto_and_refuses_fooling() -> None:
    """MSP ranks; the veto (energy and quality both in their tails) refuses the fooling rows (confident,
    high energy, low quality) and at most VETO_BUDGET of the right natural rows, leaving alone natural
    rows that are only confident or only of low quality; the threshold passes PASS_RATE of the right
    clean rows."""
    from fitguard.training.fit.recipes import FOOLING_REFUSAL, PASS_RATE, VETO_BUDGET, fit_guarded_detector

    rng = np.random.default_rng(5)
    n, n_fool = 600, 24
    right = np.concatenate([rng.random(n) < 0.6, np.zeros(n_fool, bool)])
    x = rng.normal(0, 1, (n + n_fool, 7))
    x[:, 0] = np.clip(np.where(right, 0.7, 0.4) + rng.normal(0, 0.15, n + n_fool), 0, 1)
    x[:, 5] = 9 + 1.2 * x[:, 0] + rng.normal(0, 0.8, n + n_fool)  # energy grows with confidence
    x[:, 6] = 1.5 + rng.normal(0, 1.0, n + n_fool)  # quality logit
    x[n:, 0] = rng.uniform(0.9, 1.0, n_fool)  # fooling images: confident ...
    x[n:, 5] = rng.uniform(13.0, 16.0, n_fool)  # ... beyond natural energies ...
    x[n:, 6] = rng.uniform(-2.5, -0.5, n_fool)  # ... and of low quality
    clean = np.concatenate([np.arange(n) % 2 == 0, np.zeros(n_fool, bool)])
    attack = np.arange(n + n_fool) >= n
    det, conf = fit_guarded_detector(x, right, clean=clean, attack=attack)
    assert det.guarded and det.meta["recipe"] == "guarded" and det.meta["met_requirements"]
    assert det.meta["veto_right_natural"] <= VETO_BUDGET
    assert np.mean(det.score(x[attack]) < 0) >= FOOLING_REFUSAL
    assert np.mean(conf[clean & right] >= det.threshold) == pytest.approx(PASS_RATE, abs=0.01)
    np.testing.assert_allclose(det.confidence(x), conf, atol=1e-6)
    # Only one tail is not enough: very confident sharp images and noisy plain ones pass the veto.
    probe = np.tile(x[:2], (1, 1))
    probe[0, 5], probe[0, 6] = 20.0, 2.0
    probe[1, 5], probe[1, 6] = 9.0, -4.0
    assert not det.veto.fires(probe).any()


def test_release_gate_reads_every_shift_and_fails_on_a_loss() -> None:
    """The gate passes a detector within its margins everywhere and fails one that loses to MSP under a
    single shift, naming it."""
    from fitguard.training.fit.release_gate import release_gate, release_gate_lines

    def aurc(shipped: float, msp: float, lo: float, hi: float) -> dict:
        return {"msp": {"mean": msp}, "shipped": {"mean": shipped, "minus_msp": {"ci95": [lo, hi]}}}

    def rates(right_passed: float) -> dict:
        return {"shipped": {"clean": {"right_passed": right_passed, "passed": 0.8}}}

    fooled = {"shipped": {"fool_gd": {"passed": 0.0}, "fool_ev": {"passed": 0.03}}}
    rep = {
        "results": {
            "natural": {"aurc": aurc(0.280, 0.286, -0.01, 0.004)},
            "paper": {"aurc": aurc(0.280, 0.362, -0.09, -0.06), "table_v": fooled},
            "clean": {"aurc": aurc(0.209, 0.209, -0.004, 0.004), "table_v": rates(0.92)},
        },
        "domain_shift": {
            "codec": {
                "clean": {"aurc": aurc(0.2, 0.2, -0.003, 0.003), "table_v": rates(0.9)},
                "natural": {"aurc": aurc(0.25, 0.25, -0.002, 0.004)},
                "paper": {"aurc": aurc(0.25, 0.30, -0.08, -0.02)},
            }
        },
        "unseen": {
            "photos": {
                "natural": {"aurc": aurc(0.1, 0.1, 0.0, 0.0)},
                "paper": {"aurc": aurc(0.1, 0.2, -0.1, -0.1)},
            }
        },
    }
    gate = release_gate(rep)
    assert gate["passed"] and not gate["loses_anywhere"] and gate["paper_target_met"], gate
    assert gate["worst"]["paper"]["where"] == "codec"
    rep["domain_shift"]["codec"]["paper"]["aurc"] = aurc(0.29, 0.30, -0.02, -0.001)  # a gain under 15%
    gate = release_gate(rep)
    assert gate["passed"] and not gate["paper_target_met"]
    assert any(line.startswith("- misses the target: codec paper") for line in release_gate_lines(gate))
    rep["unseen"]["photos"]["natural"]["aurc"] = aurc(0.12, 0.1, 0.01, 0.03)
    gate = release_gate(rep)
    assert not gate["passed"] and gate["loses_anywhere"]
    assert any("photos natural" in line for line in release_gate_lines(gate))


def test_the_gate_says_what_a_small_set_cannot_show() -> None:
    """Eight fooling images all refused cannot show 95% (the Wilson interval reaches below it), 200 can;
    an AURC row within its margin on average but with a wide interval fails and says why."""
    from fitguard.training.fit.release_gate import images_to_show, release_gate, release_gate_lines, wilson

    assert wilson(1.0, 8)[0] < 0.95 <= wilson(1.0, 200)[0] and wilson(0.5, 0) == (0.0, 1.0)
    n = images_to_show(0.95)
    assert wilson(1.0, n)[0] >= 0.95 > wilson(1.0, n - 1)[0]
    assert (
        wilson(0.97, images_to_show(0.95, 0.97))[0] >= 0.95 > wilson(0.97, images_to_show(0.95, 0.97) - 1)[0]
    )
    assert images_to_show(0.95, 0.95) is None and images_to_show(0.95, 0.9) is None

    def aurc(shipped: float, lo: float, hi: float) -> dict:
        return {"msp": {"mean": 0.2}, "shipped": {"mean": shipped, "minus_msp": {"ci95": [lo, hi]}}}

    def clean(right_passed: float, n_right: float) -> dict:
        return {"shipped": {"clean": {"right_passed": right_passed, "passed": 0.8, "n_right": n_right}}}

    def rep(fooling: float) -> dict:
        fooled = {"shipped": {"fool_gd": {"passed": 0.0, "n": fooling}}}
        return {
            "results": {
                "natural": {"aurc": aurc(0.201, -0.010, 0.012)},
                "paper": {"aurc": aurc(0.15, -0.06, -0.04), "table_v": fooled},
                "clean": {"aurc": aurc(0.2, -0.001, 0.001), "table_v": clean(0.93, 40)},
            }
        }

    small = release_gate(rep(8))
    assert not small["passed"]  # the natural row's upper bound is past the margin of 0.004
    assert [line.split(":")[0] for line in small["not_shown"]] == [
        "in-domain natural",
        "fool_gd refused 1.000 on 8 images per repeat",
        "right clean passed, in-domain 0.930 on 40 images per repeat",  # [0.80, 0.98] holds 0.90
    ]
    assert f"about {n} at this rate would show it" in small["not_shown"][1]
    assert "Too few held-out images to show either way:" in release_gate_lines(small)
    rates = {r["what"]: r for r in release_gate(rep(200))["rates"]}
    assert not rates["fool_gd refused"]["not_shown"] and rates["right clean passed, in-domain"]["not_shown"]
