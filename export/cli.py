"""``fitguard export``: the three models to a verified Triton repository (thin: repository.py works)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fitguard.classifier_spec import add_classifier_arguments, spec_from_args
from fitguard.contract import DEFAULT_PATCHES, QUALITY_MODES
from fitguard.export.accelerators import ACCELERATORS
from fitguard.export.configs import PREPROCESS_STEPS
from fitguard.export.monitoring import MONITORING
from fitguard.export.overload import (
    DEFAULT_IN_FLIGHT_PER_INSTANCE,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_QUEUE_TIMEOUT_MS,
)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """What is exported: the classifier, the trained files, the target folder and the graph settings."""
    add_classifier_arguments(parser, required=True)
    parser.add_argument("--iqa-head", required=True, help="quality-head file from `fitguard train iqa`")
    parser.add_argument("--detector", required=True, help="detector file from `fitguard train detector`")
    parser.add_argument(
        "--out", required=True, help="repository folder to write (replaced if it is an earlier export)"
    )
    parser.add_argument("--patches", type=int, default=DEFAULT_PATCHES, help="IQA patches per image (P)")
    parser.add_argument("--precision", default="fp32", help="graph precision (fp32)")


def _add_serving_arguments(parser: argparse.ArgumentParser) -> None:
    """How the models are served: target, instances, preprocess step and verdict metrics."""
    parser.add_argument("--accelerator", default="none", choices=ACCELERATORS, help="deployment target")
    parser.add_argument("--instances", type=int, default=1, help="instances per model")
    parser.add_argument(
        "--preprocess",
        default="python",
        choices=PREPROCESS_STEPS,
        help="preprocess step: python (default, any server) or dali (the NGC image's DALI backend; "
        "on the GPU with a GPU accelerator)",
    )
    parser.add_argument(
        "--monitoring",
        default="on",
        choices=MONITORING,
        help="verdict metrics on /metrics (a monitor step after the detector); default on",
    )


def _add_overload_arguments(parser: argparse.ArgumentParser) -> None:
    """The queue policy and admission limit (set directly, or from a bench run and a latency budget)."""
    parser.add_argument(
        "--max-queue-size",
        type=int,
        default=DEFAULT_MAX_QUEUE_SIZE,
        help="requests the entry step (preprocess) queues before refusing more at once "
        f"(0: unbounded; default {DEFAULT_MAX_QUEUE_SIZE})",
    )
    parser.add_argument(
        "--queue-timeout-ms",
        type=int,
        default=DEFAULT_QUEUE_TIMEOUT_MS,
        help=f"longest wait in a model's queue before refusal (0: none; default {DEFAULT_QUEUE_TIMEOUT_MS})",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="images admitted into the ensemble at once; more are refused at once (default 0: no "
        f"admission control; the CPU builds were measured with {DEFAULT_IN_FLIGHT_PER_INSTANCE} per "
        "instance, docs/operations.md)",
    )
    parser.add_argument(
        "--latency-budget-ms",
        type=int,
        default=None,
        help="answered p99 to keep under any overload: sets --max-in-flight from --bench (the bench level "
        "with the highest throughput whose p99 met the budget)",
    )
    parser.add_argument("--bench", default=None, help="a `fitguard bench --json` file of this repository")


def configure(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    _add_serving_arguments(parser)
    _add_overload_arguments(parser)
    parser.add_argument(
        "--quality-features",
        default=None,
        choices=QUALITY_MODES,
        help="shared: the classifier's pass over the centre crop gives the quality features, one backbone "
        "pass per image; patches: DTNIQ-f runs the backbone on P patches (the paper's method); default: "
        "the mode the quality head was trained for",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads for export and checks")


def queue_policy(args: argparse.Namespace) -> Any:
    """The :class:`QueuePolicy` the arguments ask for (with ``--bench``, the limit comes from that run)."""
    from fitguard.export.overload import QueuePolicy, policy_from_bench

    base = QueuePolicy(args.max_queue_size, args.queue_timeout_ms, max_in_flight=args.max_in_flight)
    if args.latency_budget_ms is None and args.bench is None:
        return base
    if args.latency_budget_ms is None or args.bench is None or args.max_in_flight is not None:
        raise ValueError("--latency-budget-ms and --bench go together (and set --max-in-flight themselves)")
    bench = json.loads(Path(args.bench).read_text(encoding="utf-8"))
    return policy_from_bench(bench, budget_ms=args.latency_budget_ms, base=base)


def run(args: argparse.Namespace) -> int:
    import torch

    from fitguard.backbones import WeightsUnavailableError
    from fitguard.detector import BadDetectorError
    from fitguard.export.onnx_export import ExportError
    from fitguard.export.repository import export_repository
    from fitguard.export.verify import ParityError
    from fitguard.quality import BadHeadError, load_head

    torch.set_num_threads(args.threads)
    try:
        spec = spec_from_args(args)
        mode = args.quality_features or load_head(args.iqa_head)[1]["mode"]
        export_repository(
            args.out,
            classifier=spec,
            head=args.iqa_head,
            detector=args.detector,
            patches=args.patches,
            precision=args.precision,
            accelerator=args.accelerator,
            instances=args.instances,
            preprocess=args.preprocess,
            monitoring=args.monitoring,
            queue=queue_policy(args),
            quality_features=mode,
        )
    except (BadHeadError, BadDetectorError, ParityError, ExportError, WeightsUnavailableError) as exc:
        print(f"fitguard export: error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as exc:
        print(f"fitguard export: error: {exc}", file=sys.stderr)
        return 2
    return 0
