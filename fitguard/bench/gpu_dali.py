"""The DALI repository's preprocessing figures: the validating step's cost per image and the DALI pipeline.

The Python repository's preprocessing is the Python step (:func:`fitguard.bench.gpu_decode.cpu_rate`);
the DALI repository's is the validating step (:func:`fitguard.dali_check.check_header`, on the CPU, one
image at a time as the step makes it) followed by the DALI pipeline on batches, on the GPU ("mixed"
decode) where there is one, else on the CPU. Both quality modes: P patches, and the crop only (shared).
Where DALI is not installed (a bare GPU machine), the pipeline entries say so instead of a figure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from fitguard.preprocess import DEFAULT_LIMITS, Limits


def check_cost(
    images: Sequence[bytes], *, repeats: int = 20, limits: Limits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """Microseconds per image of the validating step's check, median over ``repeats`` passes."""
    from fitguard.dali_check import check_header

    per_pass = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        for data in images:
            check_header(data, limits)
        per_pass.append((time.perf_counter() - start) / len(images) * 1e6)
    return {
        "images": len(images),
        "repeats": repeats,
        "us_per_image_median": round(statistics.median(per_pass), 1),
        "us_per_image_max": round(max(per_pass), 1),
    }


def dali_rate(
    images: Sequence[bytes], geometry: Any, *, device: str, seconds: float, batch: int = 64
) -> dict[str, Any]:
    """images/s of the DALI pipeline on batches of ``batch`` encoded images (host bytes in, device out)."""
    try:
        from fitguard.dali_preprocess import preprocess_pipeline
    except ImportError as exc:  # pragma: no cover - depends on the install
        return {"skipped": str(exc)}
    from fitguard.contract import IMAGE

    on_gpu = device.startswith("cuda")
    try:
        pipe = preprocess_pipeline(
            geometry,
            device="gpu" if on_gpu else "cpu",
            batch_size=batch,
            num_threads=4,
            device_id=0 if on_gpu else None,
        )
        pipe.build()
    except (ImportError, RuntimeError) as exc:
        return {"skipped": f"DALI pipeline unavailable: {str(exc).splitlines()[0]}"}
    arrays = [np.frombuffer(b, np.uint8) for b in images]
    feed = (arrays * (batch // len(arrays) + 1))[:batch]  # one full batch, the images repeated

    def step() -> int:
        pipe.feed_input(IMAGE, feed)
        pipe.run()
        return batch

    step()  # warm-up: the first run allocates the buffers
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < seconds:
        done += step()
    wall = time.perf_counter() - start
    return {
        "device": "gpu" if on_gpu else "cpu",
        "batch": batch,
        "images": done,
        "images_per_s": round(done / wall, 2),
    }


def dali_figures(
    photos: Sequence[np.ndarray],
    preset: Any,
    *,
    patches: int,
    device: str,
    sizes: Sequence[int],
    seconds: float,
    batch: int = 64,
) -> dict[str, Any]:
    """Per longer-side size: the validating step's cost and the pipeline's rate in both quality modes."""
    from fitguard.bench.gpu_decode import jpeg_variants
    from fitguard.dali_preprocess import Geometry

    out: dict[str, Any] = {}
    for side in sizes:
        images = jpeg_variants(photos, side)
        entry: dict[str, Any] = {"check": check_cost(images)}
        for mode, count in (("patches", patches), ("shared", 0)):
            geometry = Geometry(preset.resize, preset.crop, preset.interpolation, count)
            entry[f"dali_{mode}"] = dali_rate(images, geometry, device=device, seconds=seconds, batch=batch)
        out[str(side)] = entry
    return out
