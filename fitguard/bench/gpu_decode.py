"""JPEG decode and the preprocess cuts: the Python step on every CPU core against torchvision on the GPU.

CPU: :func:`fitguard.preprocess.prepare` (decode, classifier crop, P patches) in a process pool, one
worker per core. GPU: ``torchvision.io.decode_jpeg(device=...)`` on a batch, then an antialiased
bilinear resize of the shorter side, the centre crop and the P patch cuts per image on the device. Both
produce the tensors the models take, from the same JPEG files, per image size.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from fitguard.contract import INPUT_SIZE
from fitguard.preprocess import patch_grid, prepare
from fitguard.presets import Preset


def jpeg_variants(photos: Sequence[np.ndarray], longer_side: int, quality: int = 90) -> list[bytes]:
    """Each photo scaled so its longer side is ``longer_side`` px (Pillow, antialiased), as JPEG."""
    from PIL import Image

    out = []
    for rgb in photos:
        img = Image.fromarray(rgb)
        scale = longer_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def _prepare_chunk(args: tuple[list[bytes], Preset, int]) -> int:
    images, preset, patches = args
    for data in images:
        prepare(data, preset, patches)
    return len(images)


def cpu_rate(
    images: Sequence[bytes], preset: Preset, patches: int, workers: int, seconds: float
) -> dict[str, Any]:
    """images/s of the Python preprocess step over ``workers`` processes (the work split evenly)."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        chunk = [(list(images), preset, patches)] * workers
        list(pool.map(_prepare_chunk, chunk))  # start the workers and warm their imports
        done, start = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - start < seconds:
            done += sum(pool.map(_prepare_chunk, chunk))
        wall = time.perf_counter() - start
    return {"workers": workers, "images": done, "images_per_s": round(done / wall, 2)}


def _patch_offsets(height: int, width: int, patches: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of the P patches, as :func:`fitguard.preprocess.iqa_patches` places them."""
    rows, cols = patch_grid(patches, height, width)
    out = []
    for i in range(patches):
        r, c = divmod(i, cols)
        top = min(max(int(round((r + 0.5) * height / rows - size / 2)), 0), height - size)
        left = min(max(int(round((c + 0.5) * width / cols - size / 2)), 0), width - size)
        out.append((top, left))
    return out


def gpu_prepare(batch: Sequence[Any], preset: Preset, patches: int, device: str) -> tuple[Any, Any]:
    """Encoded JPEGs (uint8 CPU tensors) -> (crops [B, 3, crop, crop], patches [B, P, 3, 224, 224]) on
    ``device``."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg

    decoded = decode_jpeg(list(batch), device=device)
    crops, cuts = [], []
    for img in decoded:
        h, w = img.shape[1:]
        short = min(h, w)
        size = (preset.resize * h // short, preset.resize * w // short)
        resized = F.interpolate(
            img[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
        )
        top, left = round((size[0] - preset.crop) / 2), round((size[1] - preset.crop) / 2)
        crops.append(resized[0, :, top : top + preset.crop, left : left + preset.crop])
        if short < INPUT_SIZE:  # upscale like the Python step: shorter side to one patch
            grown = (INPUT_SIZE * h // short, INPUT_SIZE * w // short)
            img = F.interpolate(img[None].float(), size=grown, mode="bicubic")[0].clamp(0, 255).byte()
            h, w = img.shape[1:]
        cuts.append(
            torch.stack(
                [
                    img[:, t : t + INPUT_SIZE, s : s + INPUT_SIZE]
                    for t, s in _patch_offsets(h, w, patches, INPUT_SIZE)
                ]
            )
        )
    return torch.stack(crops).round().clamp(0, 255).byte(), torch.stack(cuts)


def gpu_rate(
    images: Sequence[bytes], preset: Preset, patches: int, device: str, seconds: float, batch: int = 64
) -> dict[str, Any]:
    """images/s of :func:`gpu_prepare` on batches of ``batch`` images (host bytes in, device tensors out)."""
    import torch

    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in images]
    batches = [tensors[i : i + batch] for i in range(0, len(tensors), batch)]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    gpu_prepare(batches[0], preset, patches, device)
    sync()
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < seconds:
        for chunk in batches:
            gpu_prepare(chunk, preset, patches, device)
            done += len(chunk)
        sync()
    wall = time.perf_counter() - start
    return {"batch": batch, "images": done, "images_per_s": round(done / wall, 2)}


def decode_rates(
    photos: Sequence[np.ndarray],
    preset: Preset,
    *,
    patches: int,
    device: str,
    sizes: Sequence[int],
    seconds: float,
    workers: int | None = None,
    batch: int = 64,
) -> dict[str, Any]:
    """Per longer-side size: the CPU Python step on all cores and the GPU path, images/s."""
    workers = workers or os.cpu_count() or 1
    out: dict[str, Any] = {}
    for side in sizes:
        images = jpeg_variants(photos, side)
        out[str(side)] = {
            "cpu_pillow": cpu_rate(images, preset, patches, workers, seconds),
            "gpu_torchvision": gpu_rate(images, preset, patches, device, seconds, batch),
            "mean_jpeg_bytes": int(np.mean([len(b) for b in images])),
        }
    return out
