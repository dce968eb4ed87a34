"""The classifier crop and DTNIQ-f on P patches through torch on one device, per precision and batch.

Each variant is a precision (fp32 with TF32 off, tf32, bf16, fp16 through autocast), a memory format
(NCHW or channels_last) and an execution mode (eager, or one CUDA graph replayed per call). Inputs are
uint8 pixels already on the device, as the served graphs take them (normalisation is inside the model);
a quality "image" is P patches. Weights are random: throughput does not depend on their values.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fitguard.bench.load import time_calls
from fitguard.contract import INPUT_SIZE


@dataclass(frozen=True)
class Variant:
    precision: str  # fp32 | tf32 | bf16 | fp16
    channels_last: bool
    graph: bool  # one CUDA graph per batch size (GPU only)

    @property
    def name(self) -> str:
        return (
            f"{self.precision}-{'cl' if self.channels_last else 'nchw'}-{'graph' if self.graph else 'eager'}"
        )


# NCHW against channels_last at each low precision, and CUDA graphs where launches may dominate.
VARIANTS: tuple[Variant, ...] = (
    Variant("fp32", False, False),
    Variant("tf32", False, False),
    Variant("tf32", True, False),
    Variant("bf16", False, False),
    Variant("bf16", True, False),
    Variant("bf16", True, True),
    Variant("fp16", True, False),
    Variant("fp16", True, True),
)


def build_models(backbone: str, patches: int) -> tuple[Any, Any]:
    """(classifier, quality model) on the CPU in eval mode, random weights."""
    import torch

    from fitguard.backbones import build_backbone
    from fitguard.classifier import Classifier
    from fitguard.quality import QualityHead, QualityModel

    net = build_backbone(backbone, None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = QualityHead(net.quality_dim)
    return Classifier(net).eval(), QualityModel(net, head).eval()


def example(model_kind: str, batch: int, patches: int, device: str) -> Any:
    import torch

    shape = (
        (batch, 3, INPUT_SIZE, INPUT_SIZE)
        if model_kind == "classifier"
        else (batch, patches, 3, INPUT_SIZE, INPUT_SIZE)
    )
    return torch.randint(0, 256, shape, dtype=torch.uint8, device=device)


@contextlib.contextmanager
def precision_mode(variant: Variant, device: str) -> Iterator[None]:
    """TF32 switches and autocast for ``variant``, restored afterwards."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = variant.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(variant.precision)
    autocast = (
        torch.autocast(device.split(":")[0], dtype=dtype, cache_enabled=False)
        if dtype
        else contextlib.nullcontext()
    )
    try:
        with torch.inference_mode(), autocast:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _runner(model: Any, x: Any, variant: Variant, device: str) -> Callable[[], object]:
    """A no-argument call that runs ``model`` on ``x`` once (replaying a captured graph when asked)."""
    import torch

    if not variant.graph:
        return lambda: model(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up cuDNN autotuning outside the capture
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(x)
    return graph.replay


def measure_model(
    model: Any,
    model_kind: str,
    *,
    device: str,
    batches: Sequence[int],
    patches: int,
    seconds: float,
    flops_per_image: float,
    peak_flops: float | None,
    deadline: float,
    variants: Sequence[Variant] = VARIANTS,
) -> dict[str, Any]:
    """Per variant and batch: images/s, latency and the share of ``peak_flops`` (FLOP/s) achieved."""
    import torch

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out: dict[str, Any] = {}
    for variant in variants:
        if variant.graph and not cuda:
            out[variant.name] = {"skipped": "CUDA graphs need a CUDA device"}
            continue
        fmt = torch.channels_last if variant.channels_last else torch.contiguous_format
        m = model.to(device=device, memory_format=fmt)
        per_batch: dict[str, Any] = {}
        for batch in batches:
            if time.monotonic() > deadline:
                per_batch[str(batch)] = {"skipped": "time budget spent"}
                continue
            x = example(model_kind, batch, patches, device)
            if variant.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            try:
                with precision_mode(variant, device):
                    r = time_calls(
                        _runner(m, x, variant, device), batch=batch, seconds=seconds, sync=sync, warmup=2
                    )
                    r["images_per_s"] = r.pop("throughput")
            except torch.cuda.OutOfMemoryError as exc:  # report and go on: the other figures still count
                per_batch[str(batch)] = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
                torch.cuda.empty_cache()
                continue
            achieved = r["images_per_s"] * flops_per_image
            r["tflops"] = round(achieved / 1e12, 3)
            r["share_of_bf16_peak"] = float(f"{achieved / peak_flops:.3g}") if peak_flops else None
            per_batch[str(batch)] = r
            del x
        out[variant.name] = {"variant": asdict(variant), "batches": per_batch}
        if cuda:
            torch.cuda.empty_cache()
    return out


def best(results: dict[str, Any], precision: str) -> dict[str, Any] | None:
    """The fastest (variant, batch) of one precision in :func:`measure_model`'s results."""
    found = None
    for name, entry in results.items():
        if entry.get("variant", {}).get("precision") != precision:
            continue
        for r in entry["batches"].values():
            if "images_per_s" in r and (found is None or r["images_per_s"] > found["images_per_s"]):
                found = {"variant": name, **r}
    return found
