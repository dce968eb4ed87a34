"""The build's forward passes on ONNX Runtime: one graph per backbone, exported once and cached.

Every forward pass of the build and the evaluations (the scenes' quality features, the detector's
population, the groups of the paper's protocol, the accuracy sheet) runs this graph: uint8 crops in,
and out of one backbone pass the logits, the quality features the DTNIQ-f head reads
(:meth:`fitguard.backbones.Backbone.quality_features`) and a per-level summary of the feature maps. The
module is the same torch code the served graphs are exported from, so the build computes what the
server computes, several times faster than eager torch on the CPU (docs/performance.md). Torch stays for
what needs gradients (universal perturbations, fooling images) and for the reference pipeline.

The ONNX file is cached under ``<cache>/graphs/`` by a stamp of everything that makes it: the backbone,
its weights, preset, quality features, this module's source and the torch version.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fitguard.cache import cache_root

if TYPE_CHECKING:
    from fitguard.backbones import Backbone

GRAPH_VERSION = "feature-graph/1"  # bump when the graph's outputs change in a way the stamp does not see
IMAGES, LOGITS, FEATURES, SUMMARY = "images", "logits", "quality_features", "level_summary"


@dataclass(frozen=True)
class FeatureOutputs:
    """One backbone pass: logits [N, C], quality features [N, D], level summary [N, 2L] (per level the
    channel mean of the spatial mean, then of the spatial standard deviation)."""

    logits: np.ndarray
    quality_features: np.ndarray
    level_summary: np.ndarray


def _module(backbone: Backbone) -> Any:
    import torch
    from torch import nn

    from fitguard.backbones import UInt8Normalize

    class FeatureNet(nn.Module):
        """uint8 [N, 3, S, S] -> (logits, quality features, level summary) of one backbone pass."""

        def __init__(self) -> None:
            super().__init__()
            self.normalize = UInt8Normalize(backbone.preset)
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            levels = self.backbone.features.levels(self.normalize(x))
            parts, summary = [], []
            for level in levels:
                std, mean = torch.std_mean(level, dim=(2, 3))
                parts += [mean, std]
                summary += [mean.mean(1), std.mean(1)]
            # The classifier pools the deepest level by its spatial mean: parts[-2].
            return self.backbone.fc(parts[-2]), torch.cat(parts, dim=1), torch.stack(summary, dim=1)

    return FeatureNet().eval()


def _linear_input_module(backbone: Backbone) -> Any:
    import torch
    from torch import nn

    from fitguard.backbones import UInt8Normalize

    class LinearInputNet(nn.Module):
        """uint8 [N, 3, S, S] -> (logits, the final Linear's input, level summary) of one pass.

        Such a network has one level, the pooled vector as a 1x1 map: its summary is the channel mean and
        a spread over space of zero (``torch.std`` of one value would be NaN).
        """

        def __init__(self) -> None:
            super().__init__()
            self.normalize = UInt8Normalize(backbone.preset)
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            logits, pooled = self.backbone.logits_and_quality_features(self.normalize(x))
            mean = pooled.mean(1)
            return logits, pooled, torch.stack([mean, torch.zeros_like(mean)], dim=1)

    return LinearInputNet().eval()


def _factory(backbone: Backbone) -> Any:
    """The graph module's maker: the levelled statistics, or the Linear's input (``torchvision:``)."""
    from fitguard.backbones import LINEAR_INPUT_FEATURES

    return _linear_input_module if backbone.features_id == LINEAR_INPUT_FEATURES else _module


def trunk_id(backbone: Backbone) -> str:
    """Names the weights of ``backbone.features`` by content, the head left out: a classifier fine-tuned
    in its head alone computes the quality features of the network it came from."""
    digest = getattr(backbone, "_trunk_id", None)
    if digest is None:
        h = hashlib.sha256()
        head = {t.data_ptr() for t in backbone.fc.state_dict().values()}  # ``features`` may hold it too
        for name, tensor in sorted(backbone.features.state_dict().items()):
            if tensor.data_ptr() in head:
                continue
            h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digest = f"trunk:{h.hexdigest()[:16]}"
        backbone._trunk_id = digest  # type: ignore[attr-defined]
    return digest


def graph_stamp(backbone: Backbone, *, trunk_only: bool = False) -> str:
    """Names the cached graph: anything that changes its outputs changes this. ``trunk_only``: what
    changes its quality features (the head's weights left out)."""
    import torch

    ident = {
        "version": GRAPH_VERSION,
        "backbone": backbone.name,
        "weights_id": trunk_id(backbone) if trunk_only else backbone.weights_id,
        "preset": backbone.preset.to_dict(),
        "features": backbone.features_id,
        "torch": torch.__version__,
        "code": hashlib.sha256(inspect.getsource(_factory(backbone)).encode()).hexdigest()[:16],
    }
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return f"{backbone.name}-{digest}"


def export_feature_graph(backbone: Backbone, path: Path) -> Path:
    """Export the feature graph of ``backbone`` to ``path`` (written whole, then renamed)."""
    import torch

    from fitguard.torch_onnx import torch_export

    size = backbone.preset.crop
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    model = torch_export(
        _factory(backbone)(backbone), example, IMAGES, (LOGITS, FEATURES, SUMMARY), {0: "batch"}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, path)
    return path


class FeatureGraph:
    """The cached feature graph of one backbone on ONNX Runtime; call it on uint8 [N, 3, S, S] batches."""

    def __init__(self, backbone: Backbone, cache: Path | None = None) -> None:
        import onnxruntime as ort

        self.stamp = graph_stamp(backbone)
        self.path = (cache or cache_root() / "graphs") / f"{self.stamp}.onnx"
        if not self.path.exists():
            export_feature_graph(backbone, self.path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        options.log_severity_level = 3
        providers = [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()
        ]
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)

    def __call__(self, images: np.ndarray) -> FeatureOutputs:
        logits, features, summary = self.session.run(
            [LOGITS, FEATURES, SUMMARY], {IMAGES: np.ascontiguousarray(images, dtype=np.uint8)}
        )
        return FeatureOutputs(logits, features, summary)

    @property
    def num_classes(self) -> int:
        return int(self.session.get_outputs()[0].shape[1])


_GRAPHS: dict[str, FeatureGraph] = {}


def feature_graph(backbone: Backbone) -> FeatureGraph:
    """The feature graph of ``backbone`` (one session per process and model)."""
    stamp = graph_stamp(backbone)
    if stamp not in _GRAPHS:
        _GRAPHS[stamp] = FeatureGraph(backbone)
    return _GRAPHS[stamp]
