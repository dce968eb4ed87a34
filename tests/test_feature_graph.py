"""The build's forward passes on ONNX Runtime compute what the torch modules compute."""

from __future__ import annotations

import numpy as np
import pytest


def _crops(photos, preset) -> np.ndarray:
    from fitguard.preprocess import classifier_crop

    return np.stack([classifier_crop(rgb, preset) for rgb in photos.values()])


def _torch_outputs(backbone, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, quality features and level summary from the eager torch modules."""
    import torch

    from fitguard.backbones import LINEAR_INPUT_FEATURES, UInt8Normalize

    with torch.inference_mode():
        x = UInt8Normalize(backbone.preset)(torch.from_numpy(crops))
        logits, features = backbone.logits_and_quality_features(x)
        if backbone.features_id == LINEAR_INPUT_FEATURES:  # one 1x1 level: no spread over space
            mean = features.mean(1)
            return logits.numpy(), features.numpy(), torch.stack([mean, torch.zeros_like(mean)], 1).numpy()
        levels = backbone.features.levels(x)
        summary = torch.stack(
            [s for level in levels for s in (level.mean(dim=(2, 3)).mean(1), level.std(dim=(2, 3)).mean(1))],
            dim=1,
        )
    return logits.numpy(), features.numpy(), summary.numpy()


def _largest_scaled_difference(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))


@pytest.mark.parametrize(
    "name",
    ["tiny", "torchvision:mobilenet_v3_small", pytest.param("efficientnet_lite0", marks=pytest.mark.slow)],
    ids=["tiny", "torchvision", "lite0"],
)
def test_the_feature_graph_equals_torch_on_photos(tmp_path, photos, name):
    """The two differ by fp32 reassociation only (the largest difference measured: docs/performance.md),
    far below 1e-4 of the largest value, which a wrong normalisation, pooling or level order exceeds by
    orders of magnitude. A
    ``torchvision:`` network's quality features are its final Linear's input, not the level statistics."""
    from fitguard.backbones import build_backbone
    from fitguard.feature_graph import FeatureGraph

    backbone = build_backbone(name, "random" if name.startswith("torchvision:") else "default")
    crops = _crops(photos, backbone.preset)
    # lite0: the graph the build exported into the user's cache (the same stamp), else exported now.
    graph = FeatureGraph(backbone, cache=None if name == "efficientnet_lite0" else tmp_path)
    out = graph(crops[:3])  # a batch size other than the export's
    for got, want in zip(
        (out.logits, out.quality_features, out.level_summary),
        _torch_outputs(backbone, crops[:3]),
        strict=True,
    ):
        assert got.shape == want.shape
        assert _largest_scaled_difference(got, want) < 1e-4
    in_parts = np.concatenate([graph(crops[:2]).logits, graph(crops[2:3]).logits])
    assert np.array_equal(in_parts.argmax(1), out.logits.argmax(1))  # batching does not change answers


def test_the_graph_is_exported_once_per_stamp(tmp_path):
    from fitguard.backbones import build_backbone
    from fitguard.feature_graph import FeatureGraph, graph_stamp

    backbone = build_backbone("tiny")
    first = FeatureGraph(backbone, cache=tmp_path)
    written = first.path.stat().st_mtime_ns
    again = FeatureGraph(build_backbone("tiny"), cache=tmp_path)
    assert again.path == first.path and again.path.stat().st_mtime_ns == written
    assert graph_stamp(build_backbone("efficientnet_lite0", weights="random")) != graph_stamp(
        build_backbone("efficientnet_lite0")
    )


def test_the_trunk_is_named_without_the_head(tmp_path) -> None:
    """A head fine-tuned alone keeps the trunk's name (its quality features are cached once), even where
    ``features`` holds the head as EfficientNet-Lite0's does; another trunk tensor changes it."""
    import torch

    from fitguard.backbones import build_backbone
    from fitguard.feature_graph import trunk_id

    net = build_backbone("efficientnet_lite0")
    state = {k: v.clone() for k, v in torch.nn.Sequential(net.features).state_dict().items()}
    state = {k.removeprefix("0.model."): v for k, v in state.items()}
    state["_fc.weight"] = torch.zeros(3, state["_fc.weight"].shape[1])
    state["_fc.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "head.pth")
    tuned = build_backbone("efficientnet_lite0", weights=str(tmp_path / "head.pth"), num_classes=3)
    assert tuned.weights_id != net.weights_id and trunk_id(tuned) == trunk_id(net)
    state["_bn1.bias"] = state["_bn1.bias"] + 1.0
    torch.save(state, tmp_path / "trunk.pth")
    other = build_backbone("efficientnet_lite0", weights=str(tmp_path / "trunk.pth"), num_classes=3)
    assert trunk_id(other) != trunk_id(net)
