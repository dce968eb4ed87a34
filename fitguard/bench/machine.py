"""What the numbers were measured on, and the machine's GEMM peak measured in the same run."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np

_PACKAGES = (
    "fitguard",
    "numpy",
    "Pillow",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "torch",
    "torchvision",
    "scikit-learn",
    "skl2onnx",
    "tritonclient",
    "nvidia-pytriton",
)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector-ISA flags that decide which kernels run (AVX2/AVX-512/VNNI/BF16/AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    keep = ("avx2", "fma", "avx512", "amx", "vnni")
                    return sorted(fl for fl in flags if fl.startswith(keep) or "vnni" in fl)
    except OSError:
        pass
    return []


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def gpu_info() -> dict[str, Any] | None:
    """Name and memory of the first CUDA device through torch, or None (no torch, no GPU)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
    }


def machine_info(threads: int) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": usable_cores(),
        "threads_used": threads,
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load],
        "gpu": gpu_info(),
    }


def _best_rate(fn: Callable[[], object], flops: float, repeats: int, budget_s: float) -> float:
    """Best-of-N GFLOP/s: the peak is what the cores can do, so noise from neighbours is discarded."""
    fn()  # warm up caches and thread pools
    best = float("inf")
    deadline = time.perf_counter() + budget_s
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
    return flops / best / 1e9


def gemm_peak(threads: int, size: int = 2048, repeats: int = 10, budget_s: float = 6.0) -> dict[str, Any]:
    """fp32 GEMM throughput of the same cores through each BLAS a pipeline here could use.

    Measured with ``threads`` threads and with one thread (scaled by ``threads``: what independent
    single-threaded sessions can reach, and robust to thread-pool contention); numpy (OpenBLAS), torch
    (oneDNN/MKL) and ONNX Runtime's MLAS (a one-node MatMul graph). The peak is the best of all: the
    strictest denominator for ``backbone_vs_gemm_peak``.
    """
    flops = 2.0 * size**3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    rates: dict[str, float] = {}
    for t in sorted({threads, 1}, reverse=True):
        scale = threads / t  # one thread's rate stands for `threads` independent threads
        suffix = "" if t == threads else f" (1 thread x {threads})"
        try:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=t):
                rates["numpy" + suffix] = scale * _best_rate(lambda: a @ b, flops, repeats, budget_s / 2)
        except ImportError:
            pass
        try:
            import torch

            before = torch.get_num_threads()
            torch.set_num_threads(t)
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            with torch.inference_mode():
                rates["torch" + suffix] = scale * _best_rate(
                    lambda ta=ta, tb=tb: torch.mm(ta, tb), flops, repeats, budget_s / 2
                )
            torch.set_num_threads(before)
        except ImportError:
            pass
        try:
            sess = _ort_matmul_session(size, t)
            rates["onnxruntime" + suffix] = scale * _best_rate(
                lambda sess=sess: sess.run(None, {"A": a, "B": b}), flops, repeats, budget_s / 2
            )
        except ImportError:
            pass

    best = max(rates, key=rates.__getitem__)
    return {
        "dtype": "fp32",
        "size": size,
        "threads": threads,
        "gflops": {k: round(v, 1) for k, v in rates.items()},
        "peak_gflops": round(rates[best], 1),
        "peak_library": best,
        "per_core_gflops": round(rates[best] / threads, 1),
    }


def _ort_matmul_session(size: int, threads: int) -> Any:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])],
        "gemm",
        [
            helper.make_tensor_value_info("A", TensorProto.FLOAT, [size, size]),
            helper.make_tensor_value_info("B", TensorProto.FLOAT, [size, size]),
        ],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def cuda_gemm_peak(size: int = 8192, repeats: int = 10) -> dict[str, Any]:
    """GEMM peak of the first CUDA device (fp32 with TF32 off, fp16, bf16) through torch."""
    import torch

    rates: dict[str, float] = {}
    flops = 2.0 * size**3
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
            a = torch.randn(size, size, device="cuda", dtype=dtype)
            b = torch.randn(size, size, device="cuda", dtype=dtype)

            def mm(a: Any = a, b: Any = b) -> None:
                torch.mm(a, b)
                torch.cuda.synchronize()

            rates[name] = _best_rate(mm, flops, repeats, budget_s=10.0)
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return {"device": "cuda", "size": size, "gflops": {k: round(v, 1) for k, v in rates.items()}}
