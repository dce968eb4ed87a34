"""``fitguard bench``: the served ensemble under bounded load, against what the same cores can do.

One run measures, on the same images and cores: the served ensemble per concurrency (throughput,
latency p50/p90/p99, Triton's per-model statistics naming the slowest step), the in-process ONNX
pipeline (same model files and preprocessing, no server), the naive pipeline (PyTorch eager one image at
a time + scikit-learn SVM), and the machine's limit (backbone FLOPs x images/s against an fp32 GEMM peak
measured in the same run). It writes JSON (with ``ratios`` and library versions) and a PNG plot.

With ``--device cuda`` it also times the backbone alone on the GPU (torch fp32/fp16, ONNX Runtime CUDA
and TensorRT when onnxruntime-gpu is installed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fitguard import contract
from fitguard.bench.config import BenchConfig
from fitguard.bench.inputs import load_images, repository_backbone, repository_patches, served
from fitguard.repository import model_path

SCHEMA = "fitguard.bench/1"


def _served_levels(cfg: BenchConfig, url: str, images: list[bytes]) -> dict[str, Any]:
    from fitguard.bench import load, stats

    steps = contract.MODELS
    load.wait_ready(cfg.protocol, url, (contract.ENSEMBLE, *steps))
    # warm every instance and batch shape before the first measured level
    load.run_level(
        cfg.protocol,
        url,
        images,
        max(cfg.concurrency),
        cfg.batch,
        requests=2 * max(cfg.concurrency),
        deadline_s=cfg.level_deadline,
        warmup=0,
    )
    time.sleep(0.5)  # let the server fold the warm-up requests into its statistics first
    levels = []
    for c in cfg.concurrency:
        before = stats.normalise(load.server_statistics(cfg.protocol, url))
        result = load.run_level(
            cfg.protocol,
            url,
            images,
            c,
            cfg.batch,
            requests=cfg.requests,
            duration_s=cfg.duration,
            deadline_s=cfg.level_deadline,
            warmup=0,  # warmed above; the statistics window then holds exactly the measured requests
        )
        after = stats.normalise(load.server_statistics(cfg.protocol, url))
        window = stats.diff(before, after)
        level = result.to_dict()
        level["server_stats"] = stats.summarise(window, steps)
        level["server_ensemble"] = stats.ensemble_summary(window, contract.ENSEMBLE)
        levels.append(level)
        print(
            f"[bench] served c={c}: {level['throughput']:.2f} img/s, p50 {level['latency_ms']['p50']} ms, "
            f"errors {level['errors']}",
            file=sys.stderr,
            flush=True,
        )
        if result.requests == 0:
            raise RuntimeError(f"no request succeeded at concurrency {c}: {result.first_error}")
    return {"protocol": cfg.protocol, "url": url, "batch": cfg.batch, "levels": levels}


# ------------------------------------------------------------------------------------------------ run


def _baseline(cfg: BenchConfig, repo: Path, images: list[bytes]) -> dict[str, Any]:
    """This repository against ``cfg.baseline_repository``, served side by side in alternating rounds."""
    from fitguard.bench import baseline

    print(f"[bench] {repo} against baseline {cfg.baseline_repository}", file=sys.stderr, flush=True)
    return baseline.compare_two_servers(
        repo,
        cfg.baseline_repository,
        images,
        concurrency=cfg.concurrency,
        requests=cfg.requests,
        duration=cfg.duration,
        rounds=cfg.baseline_rounds,
        protocol=cfg.protocol,
        batch=cfg.batch,
        deadline_s=cfg.level_deadline,
    )


def _references(
    cfg: BenchConfig, repo: Path, images: list[bytes], threads: int, result: dict[str, Any]
) -> None:
    """The in-process ONNX Runtime pipeline, the backbone alone and the naive eager pipeline."""
    from fitguard.bench import references

    n = cfg.reference_requests
    print("[bench] in-process ONNX pipeline", file=sys.stderr, flush=True)
    result["inprocess"] = references.inprocess(repo, images, n, threads=threads, batch=cfg.batch)
    print("[bench] backbone alone", file=sys.stderr, flush=True)
    batches = sorted({1, max(cfg.batch, 8)})
    result["backbone_alone"] = references.backbone_alone(
        model_path(repo, contract.CLASSIFIER), batches, threads=threads
    )
    if cfg.naive:
        print("[bench] naive PyTorch eager pipeline", file=sys.stderr, flush=True)
        try:
            result["naive"] = references.naive(repo, images, cfg.naive_requests, threads)
        except (FileNotFoundError, KeyError) as exc:
            result["notes"].append(f"naive pipeline skipped: the repository lacks its sources ({exc})")


def _served_and_flops(
    cfg: BenchConfig, repo: Path | None, images: list[bytes], result: dict[str, Any]
) -> None:
    """The served levels, then the pipeline's FLOPs from the repository's graphs (when there is one)."""
    with served(cfg) as url:
        assert url is not None
        patches = repository_patches(cfg.model_repository, cfg.protocol, url)
        result["served"] = _served_levels(cfg, url, images)
    if repo and patches:
        from fitguard.bench.flops import pipeline_flops

        result["flops"] = pipeline_flops(
            model_path(repo, contract.CLASSIFIER),
            model_path(repo, contract.QUALITY_MODEL),
            patches,
        )
    elif not repo:
        result["notes"].append("no --model-repository: FLOPs and in-process references need the model files")


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run every measurement ``cfg`` asks for and return the result (the JSON document)."""
    from fitguard.bench import machine, report

    threads = cfg.threads or machine.usable_cores()
    images, image_source = load_images(cfg.images, cfg.max_images)
    backbone, weights = repository_backbone(cfg.model_repository)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.machine_info(threads),
        "versions": machine.library_versions(),
        "config": {k: v for k, v in asdict(cfg).items() if k != "notes"},
        "images": {
            "count": len(images),
            "source": image_source,
            "mean_bytes": sum(map(len, images)) // len(images),
        },
        "backbone": cfg.backbone or backbone,
        "weights": cfg.weights or weights,
        "notes": list(cfg.notes),
    }
    repo = Path(cfg.model_repository) if cfg.model_repository else None

    # The peak first, before a server holds any thread pool.
    print("[bench] measuring the fp32 GEMM peak", file=sys.stderr, flush=True)
    result["gemm_peak"] = machine.gemm_peak(threads, size=cfg.gemm_size)

    if cfg.url or repo:
        _served_and_flops(cfg, repo, images, result)

    if repo and cfg.baseline_repository:
        result["baseline"] = _baseline(cfg, repo, images)

    if repo and cfg.references:
        _references(cfg, repo, images, threads, result)

    if cfg.device == "cuda" or cfg.backbone_alone:
        from fitguard.bench.gpu import gpu_backbone

        print(f"[bench] backbone alone per runtime on {cfg.device}", file=sys.stderr, flush=True)
        if cfg.device == "cuda":
            result["gpu_gemm_peak"] = machine.cuda_gemm_peak()
        name = cfg.backbone or backbone or "resnet152"
        result["backbone_runtimes"] = gpu_backbone(
            name,
            cfg.weights or "random",
            cfg.gpu_batches,
            seconds=cfg.runtime_seconds,
            device=cfg.device,
            classifier_graph=model_path(repo, contract.CLASSIFIER) if repo and name == backbone else None,
        )

    result["ratios"] = report.ratios(result)
    result["targets"] = report.targets(result["ratios"])
    return result


# ------------------------------------------------------------------------------------------------ CLI


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="a running server (host:port of its gRPC or HTTP endpoint)")
    target.add_argument(
        "--model-repository",
        metavar="DIR",
        help="start the embedded server on DIR; also the model files for the references",
    )
    parser.add_argument(
        "--reference-repository",
        metavar="DIR",
        help="with --url: the local copy of the served repository, for the reference points",
    )
    parser.add_argument(
        "--baseline-repository",
        metavar="DIR",
        help="with --model-repository: also serve DIR and compare in alternating rounds "
        "(served_vs_baseline: throughput ratio; p50_vs_baseline)",
    )
    parser.add_argument(
        "--baseline-rounds", type=int, default=3, help="alternating rounds for --baseline-repository"
    )


def _add_load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", metavar="DIR", help="folder of images (default: package-shipped photos)")
    parser.add_argument(
        "--max-images", type=int, default=16, help="use at most this many images (default 16)"
    )
    parser.add_argument("--concurrency", type=_ints, default=(1, 2, 4, 8), help="levels, e.g. 1,2,4,8")
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--requests", type=int, help="requests measured per concurrency level (default 64)")
    bound.add_argument("--duration", type=float, help="seconds measured per concurrency level")
    parser.add_argument("--batch", type=int, default=1, help="images per request (default 1)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")


def _add_reference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, default=0, help="threads for the references (default: all cores)"
    )
    parser.add_argument(
        "--reference-requests", type=int, default=16, help="images through the in-process pipeline"
    )
    parser.add_argument("--naive-requests", type=int, default=8, help="images through the naive pipeline")
    parser.add_argument("--no-references", action="store_true", help="served load only")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive PyTorch pipeline")
    parser.add_argument(
        "--gemm-size", type=int, default=2048, help="matrix side for the GEMM peak (default 2048)"
    )
    parser.add_argument("--level-deadline", type=float, default=600.0, help="hard stop per level, seconds")


def _add_backbone_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: also time the backbone alone on the GPU",
    )
    parser.add_argument(
        "--backbone", help="backbone for --device cuda (default: the repository's, else resnet152)"
    )
    parser.add_argument("--weights", help="weights for --device cuda (default random: timing only)")
    parser.add_argument(
        "--gpu-batches", type=_ints, default=(1, 8, 32, 64), help="batches for the backbone alone"
    )
    parser.add_argument(
        "--backbone-alone",
        action="store_true",
        help="time the backbone per runtime (torch fp32/low precision, ONNX Runtime) on --device",
    )
    parser.add_argument("--runtime-seconds", type=float, default=3.0, help="seconds per runtime and batch")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--perf-analyzer-data",
        metavar="OUT.json",
        help="also write perf_analyzer's --input-data file for these images and print its command",
    )
    parser.add_argument("--json", metavar="OUT", help="write the full result as JSON")
    parser.add_argument(
        "--markdown", metavar="OUT.md", help="write the results table (date, machine, ratios)"
    )
    parser.add_argument("--plot", metavar="OUT.png", help="write latency vs throughput as PNG")


def configure(parser: argparse.ArgumentParser) -> None:
    _add_target_arguments(parser)
    _add_load_arguments(parser)
    _add_reference_arguments(parser)
    _add_backbone_runtime_arguments(parser)
    _add_output_arguments(parser)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    if args.batch < 1 or args.batch > 16:
        raise SystemExit("--batch must be between 1 and the ensemble's max_batch_size (16)")
    if args.reference_repository and not args.url:
        raise SystemExit("--reference-repository goes with --url")
    if args.baseline_repository and not args.model_repository:
        raise SystemExit("--baseline-repository goes with --model-repository")
    cfg = BenchConfig(
        url=args.url,
        model_repository=args.model_repository or args.reference_repository,
        images=args.images,
        max_images=args.max_images,
        concurrency=args.concurrency,
        requests=None if args.duration else (args.requests or 64),
        duration=args.duration,
        batch=args.batch,
        protocol=args.protocol,
        threads=args.threads,
        reference_requests=args.reference_requests,
        naive_requests=args.naive_requests,
        references=not args.no_references,
        naive=not args.no_naive,
        gemm_size=args.gemm_size,
        level_deadline=args.level_deadline,
        device=args.device,
        backbone=args.backbone,
        weights=args.weights,
        gpu_batches=args.gpu_batches,
        backbone_alone=args.backbone_alone,
        runtime_seconds=args.runtime_seconds,
        baseline_repository=args.baseline_repository,
        baseline_rounds=args.baseline_rounds,
    )
    if not (
        cfg.url
        or cfg.model_repository
        or cfg.device == "cuda"
        or cfg.backbone_alone
        or args.perf_analyzer_data
    ):
        raise SystemExit("give --url or --model-repository (or --device cuda / --backbone-alone)")
    return cfg


def run(args: argparse.Namespace) -> int:
    from fitguard.bench import report

    cfg = config_from_args(args)
    if cfg.url and cfg.model_repository:
        cfg.notes.append(f"served at {cfg.url}; references from {cfg.model_repository}")
    if args.perf_analyzer_data:
        from fitguard.bench import perf_analyzer

        images, _ = load_images(cfg.images, cfg.max_images)
        path = perf_analyzer.write_input_data(images, args.perf_analyzer_data)
        url = cfg.url or ("localhost:8001" if cfg.protocol == "grpc" else "localhost:8000")
        print("equivalent perf_analyzer command (Triton SDK):")
        print(
            "  "
            + perf_analyzer.command(path, url, cfg.protocol, cfg.concurrency, cfg.batch, cfg.requests or 64)
        )
        if not (cfg.url or cfg.model_repository or cfg.device == "cuda" or cfg.backbone_alone):
            return 0
    result = run_bench(cfg)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.plot:
        report.plot(result, args.plot)
    if args.markdown:
        Path(args.markdown).write_text(report.markdown(result) + "\n", encoding="utf-8")
    print(report.summary_text(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fitguard bench", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
