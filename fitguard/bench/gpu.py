"""The backbone alone on a CUDA device, in the best runtimes available: torch (fp32, fp16 channels-last)
and ONNX Runtime with the TensorRT (fp16) and CUDA execution providers when onnxruntime-gpu is installed.

Inputs are uint8 pixels as served (normalisation is inside the graph); ONNX Runtime timings include
the host-to-device copy of the uint8 batch, as a served request would.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.bench.load import time_calls


def _torch_runs(
    model: Any, device: str, batches: Sequence[int], seconds: float, sync: Callable[[], None]
) -> dict[str, Any]:
    """torch fp32, and fp16 (bf16 on the CPU) autocast with channels-last memory."""
    import torch

    from fitguard.contract import INPUT_SIZE

    half = torch.float16 if device.startswith("cuda") else torch.bfloat16
    low = "fp16" if device.startswith("cuda") else "bf16"
    runs: dict[str, Any] = {}
    for name, fp16, channels_last in (
        ("torch-fp32", False, False),
        (f"torch-{low}-channels-last", True, True),
    ):
        m = model.to(memory_format=torch.channels_last) if channels_last else model
        per_batch = {}
        for b in batches:
            x = torch.randint(0, 256, (b, 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.uint8, device=device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            ctx = torch.autocast(device.split(":")[0], dtype=half) if fp16 else contextlib.nullcontext()

            def step(m: Any = m, x: Any = x, ctx: Any = ctx) -> None:
                with torch.inference_mode(), ctx:
                    m(x)

            per_batch[str(b)] = time_calls(step, batch=b, seconds=seconds, sync=sync, warmup=3)
        runs[name] = per_batch
    return runs


def _onnx_candidates(available: set[str], cuda: bool, cache: str, batches: Sequence[int]) -> list[Any]:
    """(runtime name, providers) to try: TensorRT fp16 and CUDA on a GPU, the CPU provider otherwise."""
    from fitguard.contract import CLASSIFIER_INPUT, INPUT_SIZE

    if not cuda:
        return [("onnxruntime-cpu-fp32", ["CPUExecutionProvider"])]
    candidates: list[tuple[str, list[Any]]] = []
    if "TensorrtExecutionProvider" in available:
        largest = f"{CLASSIFIER_INPUT}:{max(batches)}x3x{INPUT_SIZE}x{INPUT_SIZE}"
        trt = (
            "TensorrtExecutionProvider",
            {
                "trt_fp16_enable": True,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": cache,
                "trt_profile_min_shapes": f"{CLASSIFIER_INPUT}:1x3x{INPUT_SIZE}x{INPUT_SIZE}",
                "trt_profile_max_shapes": largest,
                "trt_profile_opt_shapes": largest,
            },
        )
        candidates.append(("onnxruntime-tensorrt-fp16", [trt, "CUDAExecutionProvider"]))
    candidates.append(("onnxruntime-cuda-fp32", ["CUDAExecutionProvider"]))
    return candidates


def _onnx_runs(path: Path, ort: Any, cuda: bool, batches: Sequence[int], seconds: float) -> dict[str, Any]:
    """The served classifier graph (a repository's ``model.onnx``) in ONNX Runtime, per execution provider
    that loads."""
    from fitguard.contract import CLASSIFIER_INPUT, INPUT_SIZE

    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:  # TensorRT's engine cache
        for name, providers in _onnx_candidates(set(ort.get_available_providers()), cuda, tmp, batches):
            try:
                sess = ort.InferenceSession(str(path), providers=providers)
            except Exception as exc:  # a missing TensorRT library must not cost the CUDA figure
                runs[name] = {"error": f"{exc.__class__.__name__}: {exc}"}
                continue
            per_batch = {}
            rng = np.random.default_rng(0)
            for b in batches:
                x = rng.integers(0, 256, (b, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.uint8)
                per_batch[str(b)] = time_calls(
                    lambda s=sess, x=x: s.run(None, {CLASSIFIER_INPUT: x}), batch=b, seconds=seconds, warmup=3
                )
            runs[name] = per_batch
    return runs


def _best(runtimes: dict[str, Any]) -> dict[str, Any]:
    best_name, best = None, None
    for name, per_batch in runtimes.items():
        for r in per_batch.values():
            if (
                isinstance(r, dict)
                and "throughput" in r
                and (best is None or r["throughput"] > best["throughput"])
            ):
                best_name, best = name, r
    return {"runtime": best_name, **(best or {})}


def gpu_backbone(
    backbone: str,
    weights: str | None,
    batches: Sequence[int],
    seconds: float = 3.0,
    device: str = "cuda",
    classifier_graph: Path | None = None,
) -> dict[str, Any]:
    """images/s and latency of the classifier per runtime and batch size on ``device``: torch, and ONNX
    Runtime on ``classifier_graph`` (the served graph of a repository of this backbone) where given.

    ``device="cpu"`` runs the same code path on the CPU (bf16 autocast instead of fp16, ONNX Runtime's
    CPU provider), so the GPU command is exercised where no GPU is available.
    """
    import torch

    from fitguard.backbones import build_backbone
    from fitguard.bench.flops import torch_flops
    from fitguard.classifier import ServedClassifier
    from fitguard.contract import INPUT_SIZE

    model = ServedClassifier(build_backbone(backbone, weights)).eval()
    example = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8)
    results: dict[str, Any] = {
        "backbone": backbone,
        "weights": weights,
        "device": device,
        "flops_per_image": torch_flops(model, example),
        "runtimes": {},
    }
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    results["runtimes"].update(_torch_runs(model.to(device), device, batches, seconds, sync))
    model.cpu()  # the GPU copy goes before ONNX Runtime takes the device
    if cuda:
        torch.cuda.empty_cache()
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    available = set(ort.get_available_providers()) if ort else set()
    if classifier_graph is None:
        results["onnxruntime_note"] = "no repository of this backbone: ONNX Runtime not measured"
    elif "CUDAExecutionProvider" in available or (not cuda and ort is not None):
        results["runtimes"].update(_onnx_runs(classifier_graph, ort, cuda, batches, seconds))
    else:
        results["onnxruntime_note"] = "onnxruntime-gpu not installed: ONNX Runtime CUDA/TensorRT not measured"
    results["best"] = _best(results["runtimes"])
    return results
