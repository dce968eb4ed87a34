"""The reference points the served ensemble is compared with, measured on the same images and cores.

- in-process: the repository's own ``model.onnx`` files in ONNX Runtime with the served preprocessing
  (:class:`fitguard.reference.OnnxPipeline`), no server;
- naive: what a user writes first, PyTorch eager one image at a time plus the scikit-learn SVM
  (:class:`fitguard.reference.ReferencePipeline`);
- backbone alone: the classifier graph by itself, the part that the machine limit is about.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.bench.load import latency_summary, time_calls


def measure(
    fn: Callable[[Any], object],
    items: Sequence[Any],
    count: int,
    warmup: int = 2,
    images_per_call: int = 1,
    max_seconds: float = 600.0,
) -> dict[str, Any]:
    """Call ``fn`` on ``items`` in turn, ``count`` times after ``warmup`` calls; sequential, one caller."""
    for i in range(warmup):
        fn(items[i % len(items)])
    latencies: list[float] = []
    start = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        fn(items[i % len(items)])
        latencies.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > max_seconds:
            break
    wall = time.perf_counter() - start
    return {
        "calls": len(latencies),
        "images_per_call": images_per_call,
        "wall_s": round(wall, 3),
        "throughput": round(len(latencies) * images_per_call / wall, 3),
        "latency_ms": latency_summary(latencies),
    }


def _batches(images: Sequence[bytes], batch: int) -> list[list[bytes]]:
    return [[images[(i + j) % len(images)] for j in range(batch)] for i in range(len(images))]


def inprocess(
    repository: str | Path,
    images: Sequence[bytes],
    count: int,
    threads: int = 0,
    batch: int = 1,
    max_seconds: float = 600.0,
) -> dict[str, Any]:
    """The ONNX pipeline in-process, one image at a time and in batches of ``batch`` when > 1.

    Each ONNX Runtime thread count in {1, ``threads``} is tried and the best kept (fastest throughput,
    lowest single-image latency), so the served ensemble is compared with the best the same files can do
    without a server. Also splits one image's time into preprocessing and the three graphs, the
    in-process analogue of Triton's per-model statistics.
    """
    from fitguard.reference import OnnxPipeline

    # whole passes over the images, so the in-process mix of image sizes is the served one
    count = -(-max(count, 1) // len(images)) * len(images)
    runs: dict[str, dict[str, Any]] = {}
    pipes = {}
    for t in sorted({1, threads or 1}):
        pipe = OnnxPipeline.from_repository(repository, threads=t)
        run: dict[str, Any] = {
            "batch1": measure(
                lambda img, pipe=pipe: pipe.predict([img]), list(images), count, max_seconds=max_seconds
            )
        }
        if batch > 1:
            groups = _batches(images, batch)
            n = max(count // batch, 2)
            run[f"batch{batch}"] = measure(
                pipe.predict, groups, n, images_per_call=batch, max_seconds=max_seconds
            )
        runs[f"threads{t}"] = run
        pipes[t] = pipe
    out: dict[str, Any] = {"runs": runs}
    for key in {k for run in runs.values() for k in run}:
        # strict: the served numbers are compared with the best in-process setting for each measure
        out[key] = min((run[key] for run in runs.values()), key=lambda r: r["latency_ms"]["p50"])
        out[key] = {**out[key], "threads": next(t for t, run in runs.items() if run[key] is out[key])}
    fastest = max(
        ((t, r) for t, run in runs.items() for r in run.values()), key=lambda tr: tr[1]["throughput"]
    )
    out["best"] = {
        "throughput": fastest[1]["throughput"],
        "images_per_call": fastest[1]["images_per_call"],
        "threads": fastest[0],
    }
    best_threads = int(out["batch1"]["threads"].removeprefix("threads"))
    out["split_ms_per_image"] = _split(pipes[best_threads], images, min(count, 2 * len(images)))
    return out


def _split(pipe: Any, images: Sequence[bytes], count: int) -> dict[str, float]:
    from fitguard.contract import (
        CLASSIFIER,
        CLASSIFIER_INPUT,
        DETECTOR,
        ENERGY,
        IQA_FEATURES,
        IQA_PATCHES,
        PROBS,
        QUALITY_MODEL,
        QUALITY_SCORE,
    )

    totals = {"preprocess": 0.0, CLASSIFIER: 0.0, QUALITY_MODEL: 0.0, DETECTOR: 0.0}
    for i in range(count):
        t0 = time.perf_counter()
        crop, patches = pipe.settings.prepare_batch([images[i % len(images)]])
        t1 = time.perf_counter()
        if patches is None:  # shared quality mode: the classifier's pass also gives the quality features
            probs, energy, features = pipe.sessions[CLASSIFIER].run(
                [PROBS, ENERGY, IQA_FEATURES], {CLASSIFIER_INPUT: crop}
            )
            quality_input = {IQA_FEATURES: features}
        else:
            probs, energy = pipe.sessions[CLASSIFIER].run([PROBS, ENERGY], {CLASSIFIER_INPUT: crop})
            quality_input = {IQA_PATCHES: patches}
        t2 = time.perf_counter()
        (quality,) = pipe.sessions[QUALITY_MODEL].run([QUALITY_SCORE], quality_input)
        t3 = time.perf_counter()
        pipe.sessions[DETECTOR].run(None, {PROBS: probs, ENERGY: energy, QUALITY_SCORE: quality})
        t4 = time.perf_counter()
        for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            totals[key] += dt
    split = {k: round(v / count * 1e3, 3) for k, v in totals.items()}
    split["preprocess_share"] = round(totals["preprocess"] / sum(totals.values()), 4)
    return split


def naive(repository: str | Path, images: Sequence[bytes], count: int, threads: int) -> dict[str, Any]:
    """PyTorch eager + scikit-learn, one image at a time, rebuilt from the repository's source files.

    Run with torch's thread count set to ``threads`` (what a user gets by default) and to 1; the faster
    is reported (strict: the served pipeline must beat the naive one at its best), both are kept.
    """
    import torch

    from fitguard.reference import ReferencePipeline

    before = torch.get_num_threads()
    pipe = ReferencePipeline.from_repository(repository)
    runs = {}
    try:
        for t in sorted({threads or before, 1}, reverse=True):
            torch.set_num_threads(t)
            runs[f"threads{t}"] = measure(lambda img: pipe.predict([img]), list(images), count)
    finally:
        torch.set_num_threads(before)
    best = max(runs, key=lambda k: runs[k]["throughput"])
    return {**runs[best], "threads": best, "runs": runs}


def backbone_alone(
    classifier_onnx: str | Path,
    batches: Sequence[int],
    threads: int = 0,
    seconds: float = 3.0,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> dict[str, Any]:
    """The classifier graph alone in ONNX Runtime per batch size (random uint8 pixels), best of the
    thread counts {1, ``threads``}."""
    import onnxruntime as ort

    from fitguard.contract import CLASSIFIER_INPUT, INPUT_SIZE

    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"batches": {}}
    for t in sorted({1, threads or 1}):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = t
        sess = ort.InferenceSession(str(classifier_onnx), opts, providers=list(providers))
        out["runtime"] = f"onnxruntime {ort.__version__} {sess.get_providers()[0]}"
        for b in batches:
            x = rng.integers(0, 256, (b, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.uint8)
            r = time_calls(
                lambda x=x, sess=sess: sess.run(None, {CLASSIFIER_INPUT: x}), batch=b, seconds=seconds
            )
            r["threads"] = t
            if str(b) not in out["batches"] or r["throughput"] > out["batches"][str(b)]["throughput"]:
                out["batches"][str(b)] = r
    out["best"] = max(out["batches"].values(), key=lambda r: r["throughput"])
    return out
