"""One GPU run, one JSON: model throughput per precision, decode CPU vs GPU (the Python repository's
preprocessing), the DALI repository's preprocessing (validating step and pipeline), and the ceiling.

Made for a bare GPU machine with PyTorch and CUDA only (no Triton, no onnxruntime-gpu, no network):
ResNet-152 weights are random there (throughput does not depend on them), photos come from a folder the
repository carries (``--save-photos`` writes one where scikit-image is installed) or, failing that, are
synthetic. ``--dry-run`` runs the same code on the CPU with tiny sizes and writes the same schema, so
the command is tested where no GPU is. Figures are compared in the same run with a large bf16 matrix
product (the device's dense bf16 peak as measured) and with MLPerf's ResNet-50 result scaled by FLOPs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.photos import sample_photos

SCHEMA = "fitguard.gpu_check/1"
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
# MLPerf Inference v4.1 datacenter, ResNet-50 offline, one H200 (INT8, TensorRT, pre-decoded inputs).
MLPERF_RESNET50_H200 = {
    "samples_per_s": 95_000,
    "precision": "int8",
    "source": "MLPerf Inference, ResNet-50 offline",
}


@dataclass(frozen=True)
class CheckConfig:
    device: str = "cuda"
    backbone: str = "resnet152"
    patches: int = 5
    batches: tuple[int, ...] = (1, 8, 32, 64, 128, 256)
    seconds: float = 0.8  # per (variant, batch)
    matmul_size: int = 8192
    decode_sizes: tuple[int, ...] = (224, 400, 600, 800)
    decode_seconds: float = 3.0
    decode_batch: int = 64
    workers: int | None = None  # CPU decode processes (None: every core)
    budget_s: float = 330.0  # the model sweep stops in time for decode, DALI and the JSON (8 min in all)
    images: str | None = None
    dry_run: bool = False


DRY_RUN = CheckConfig(
    device="cpu",
    backbone="tiny",
    patches=3,
    batches=(1, 2),
    seconds=0.02,
    matmul_size=256,
    decode_sizes=(160, 320),
    decode_seconds=0.05,
    decode_batch=2,
    workers=2,
    budget_s=120.0,
    dry_run=True,
)


def save_photos(folder: str) -> list[str]:
    """Write the package photos as JPEG q95 into ``folder`` (for a machine without scikit-image)."""
    from PIL import Image

    from fitguard.photos import package_photos

    Path(folder).mkdir(parents=True, exist_ok=True)
    written = []
    for name, rgb in package_photos().items():
        path = Path(folder) / f"{name}.jpg"
        Image.fromarray(rgb).save(path, quality=95)
        written.append(str(path))
    return written


def matmul_peak(device: str, size: int, repeats: int = 10) -> dict[str, Any]:
    """Dense bf16 matrix product (size^3) on ``device``: the best of ``repeats`` timed calls, FLOP/s."""
    import torch

    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        torch.mm(a, b)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        sync()
        best = min(best, (time.perf_counter() - t0) / 4)
    rate = 2.0 * size**3 / best
    return {"dtype": "bf16", "size": size, "flops_per_s": rate, "tflops": round(rate / 1e12, 3)}


def _flops(cfg: CheckConfig, classifier: Any, quality: Any) -> dict[str, float]:
    import torch
    from torchvision.models import resnet50

    from fitguard.bench.flops import torch_flops
    from fitguard.bench.gpu_models import example

    with torch.device("meta"):  # shapes only: counting needs no arithmetic
        anchor = resnet50(weights=None).eval()
    return {
        "classifier": torch_flops(classifier, example("classifier", 1, cfg.patches, "cpu")),
        "quality_per_image": torch_flops(quality, example("quality", 1, cfg.patches, "cpu")),
        "resnet50": torch_flops(anchor, torch.zeros(1, 3, 224, 224, device="meta")),
    }


def ceiling(
    models: dict[str, Any], decode: dict[str, Any], flops: dict[str, float], patches: int
) -> dict[str, Any]:
    """Per precision: images/s of classifier + P x quality (their times add), and min(decode, models)."""
    from fitguard.bench.gpu_models import best

    pipeline_flops = flops["classifier"] + flops["quality_per_image"]
    anchor = MLPERF_RESNET50_H200["samples_per_s"] * flops["resnet50"] / pipeline_flops
    out: dict[str, Any] = {
        "anchor": {
            **MLPERF_RESNET50_H200,
            "resnet50_flops": flops["resnet50"],
            "pipeline_flops_per_image": pipeline_flops,
            "scaled_images_per_s": round(anchor, 1),
        },
        "per_precision": {},
    }
    for precision in PRECISIONS:
        clf, q = best(models["classifier"], precision), best(models["quality"], precision)
        if clf is None or q is None:
            out["per_precision"][precision] = {"skipped": "no measurement"}
            continue
        model_rate = 1.0 / (1.0 / clf["images_per_s"] + 1.0 / q["images_per_s"])
        limits = {}
        for side, entry in decode.items():
            gpu, cpu = entry["gpu_torchvision"]["images_per_s"], entry["cpu_pillow"]["images_per_s"]
            limits[side] = {
                "with_gpu_decode": round(min(gpu, model_rate), 2),
                "with_cpu_decode": round(min(cpu, model_rate), 2),
            }
        out["per_precision"][precision] = {
            "classifier_best": {
                "variant": clf["variant"],
                "batch": clf["batch"],
                "images_per_s": clf["images_per_s"],
            },
            "quality_best": {"variant": q["variant"], "batch": q["batch"], "images_per_s": q["images_per_s"]},
            "models_images_per_s": round(model_rate, 2),
            "share_of_anchor": float(f"{model_rate / anchor:.3g}"),
            "ceiling_images_per_s": limits,
        }
    return out


def _environment(cfg: CheckConfig) -> dict[str, Any]:
    import torch

    from fitguard.bench.machine import machine_info

    info = machine_info(threads=torch.get_num_threads())
    info["torch"] = torch.__version__
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info["python"] = platform.python_version()
    if cfg.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info["device"] = {
            "name": props.name,
            "sm_count": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
        }
    return info


def _preprocessing(
    cfg: CheckConfig, photos: list[np.ndarray], lap: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both repositories' preprocessing: the Python step (and torchvision on the GPU), then DALI's."""
    from fitguard.bench.gpu_dali import dali_figures
    from fitguard.bench.gpu_decode import decode_rates
    from fitguard.presets import preset_for

    sizes = {"sizes": cfg.decode_sizes, "seconds": cfg.decode_seconds, "batch": cfg.decode_batch}
    preset = preset_for(cfg.backbone)
    decode = decode_rates(
        photos, preset, patches=cfg.patches, device=cfg.device, workers=cfg.workers, **sizes
    )
    lap("decode")
    dali = dali_figures(photos, preset, patches=cfg.patches, device=cfg.device, **sizes)
    lap("dali")
    return decode, dali


def _notes(cfg: CheckConfig, photo_source: str) -> list[str]:
    """What the figures are and are not: random weights, inputs on the device, a dry run."""
    return [
        f"{cfg.backbone} with random weights: throughput only "
        "(no weights can be downloaded on the GPU machine)",
        "inputs are uint8 pixels already on the device; a quality image is P patches",
        f"photos: {photo_source}",
        "dry run: CPU, tiny sizes; the figures mean nothing"
        if cfg.dry_run
        else "measured on the device named above",
    ]


def run_check(cfg: CheckConfig) -> dict[str, Any]:
    """Everything, in budget order: peak, models, decode, ceiling. Returns the JSON document."""
    import torch

    from fitguard.bench.gpu_models import build_models, measure_model

    start = time.monotonic()
    phases: dict[str, float] = {}

    def lap(name: str) -> None:
        phases[name] = round(time.monotonic() - start - sum(phases.values()), 1)

    torch.backends.cudnn.benchmark = True
    photos, photo_source = sample_photos(cfg.images, limit=16 if not cfg.dry_run else 3)
    classifier, quality = build_models(cfg.backbone, cfg.patches)
    flops = _flops(cfg, classifier, quality)
    lap("setup")
    peak = matmul_peak(cfg.device, cfg.matmul_size)
    deadline = start + cfg.budget_s
    models = {}
    for kind, model, per_image in (
        ("classifier", classifier, flops["classifier"]),
        ("quality", quality, flops["quality_per_image"]),
    ):
        models[kind] = measure_model(
            model,
            kind,
            device=cfg.device,
            batches=cfg.batches,
            patches=cfg.patches,
            seconds=cfg.seconds,
            flops_per_image=per_image,
            peak_flops=peak["flops_per_s"],
            deadline=deadline,
        )
        model.cpu()
        lap(kind)
    decode, dali = _preprocessing(cfg, photos, lap)
    return {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(cfg),
        "environment": _environment(cfg),
        "notes": _notes(cfg, photo_source),
        "flops_per_image": flops,
        "bf16_matmul_peak": peak,
        "models": models,
        "decode": decode,
        "dali": dali,
        "ceiling": ceiling(models, decode, flops, cfg.patches),
        "phases_s": phases,
        "runtime_s": round(time.monotonic() - start, 1),
    }


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="build/gpu_check.json", help="JSON result file")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the command, not the GPU")
    p.add_argument("--images", help="folder of photos (.jpg/.png); default: package photos, else synthetic")
    p.add_argument(
        "--save-photos", metavar="DIR", help="only write the package photos as JPEG into DIR, then exit"
    )
    p.add_argument("--patches", type=int, help="IQA patches per image (P; default 5)")
    p.add_argument("--batches", type=_ints, help="comma-separated batch sizes (default 1,8,32,64,128,256)")
    p.add_argument("--seconds", type=float, help="timing per variant and batch (default 0.8)")
    p.add_argument("--budget", type=float, help="seconds for the model sweep before decode (default 360)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.save_photos:
        print("\n".join(save_photos(args.save_photos)))
        return 0
    cfg = DRY_RUN if args.dry_run else CheckConfig()
    overrides = {
        "patches": args.patches,
        "batches": args.batches,
        "seconds": args.seconds,
        "budget_s": args.budget,
        "images": args.images,
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if not cfg.dry_run:
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu_check: no CUDA device (use --dry-run to check the command on the CPU)", file=sys.stderr
            )
            return 2
    result = run_check(cfg)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"gpu_check: wrote {args.out} in {result['runtime_s']} s")
    return 0
