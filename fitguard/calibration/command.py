"""``fitguard calibrate``: set the detector's threshold from a deployment's own photos, with a guarantee.

The sample is scored (in-process, or through a running server with ``--url``), split into a
calibration part and a held-out check part (whole groups on one side), and the threshold is chosen on
the calibration part (:mod:`fitguard.guarantee`): with labels, the largest coverage whose selective risk
is at most ``--target-risk`` with probability at least ``1 - --delta``; without, the quantile that
passes ``--target-pass-rate``, with its interval. The result is a copy of the repository with a new
detector version (:mod:`fitguard.export.calibrated`) and a report beside it
(:mod:`fitguard.calibration.report`). No model is retrained.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.calibration.sample import ScoredSample, read_sample, score_in_process
from fitguard.guarantee import (
    PROJECTION_SHARE,
    CalibrationError,
    PassRateGuarantee,
    RiskGuarantee,
    certify_risk,
    needed_images,
    pass_rate_images,
    pass_rate_threshold,
    rate_interval,
    risk_curve,
)

REPORT_FORMAT = "fitguard.calibration/1"
DEFAULT_DELTA = 0.1
DEFAULT_HOLDOUT = 0.25
# Warn when the pass-rate interval is wider than this either side of the target.
PASS_RATE_HALF_WIDTH = 0.05


@dataclass(frozen=True)
class Target:
    """What to guarantee: ``risk`` (labelled sample) or ``pass_rate`` (any sample), at ``delta``."""

    risk: float | None = None
    pass_rate: float | None = None
    delta: float = DEFAULT_DELTA

    def __post_init__(self) -> None:
        if (self.risk is None) == (self.pass_rate is None):
            raise CalibrationError("give exactly one of a target risk and a target pass rate")
        for name, value in (("target", self.risk or self.pass_rate), ("delta", self.delta)):
            if not 0.0 < float(value or 0.0) < 1.0:
                raise CalibrationError(f"{name} must lie strictly between 0 and 1, got {value}")

    @property
    def mode(self) -> str:
        return "risk" if self.risk is not None else "pass_rate"

    def to_dict(self) -> dict[str, float]:
        return {"risk": self.risk} if self.risk is not None else {"pass_rate": float(self.pass_rate or 0)}


def describe(guarantee: RiskGuarantee | PassRateGuarantee) -> str:
    """The guarantee in words (recorded in the configs, the manifest and the report)."""
    if isinstance(guarantee, RiskGuarantee):
        return (
            f"selective risk <= {guarantee.target_risk:g} with probability >= {1 - guarantee.delta:g} "
            f"({guarantee.n} calibration images)"
        )
    low, high = guarantee.interval
    return (
        f"pass rate {guarantee.target_pass_rate:g}, in [{low:.3f}, {high:.3f}] with probability >= "
        f"{1 - guarantee.delta:g} ({guarantee.n} calibration images)"
    )


def check_figures(check: ScoredSample, threshold: float, delta: float) -> dict[str, Any] | None:
    """Coverage (and, labelled, risk) of ``threshold`` on the held-out part, with their intervals."""
    if len(check) == 0:
        return None
    passed = check.confidence >= threshold
    k = int(passed.sum())
    out: dict[str, Any] = {
        "n": len(check),
        "passed": k,
        "coverage": k / len(check),
        "coverage_interval": rate_interval(k, len(check), delta),
    }
    if check.labelled:
        errors = int(check.wrong[passed].sum())
        out |= {
            "errors": errors,
            "risk": errors / k if k else None,
            "risk_interval": rate_interval(errors, k, delta),
        }
    return out


def _group_warning(cal: ScoredSample) -> list[str]:
    groups = {im.group for im in cal.images}
    if len(groups) == len(cal):
        return []
    return [
        f"the bounds use {len(cal)} images of {len(groups)} groups: they count images as independent "
        "draws, which images of one group (one object, scene or user) are not, so they are too narrow; "
        "leave out --all-images to use one image per group"
    ]


def _warnings(cal: ScoredSample, target: Target, holdout: float, guarantee: Any) -> tuple[list[str], Any]:
    """Whether the images the bounds use are independent and enough for the guarantee; the number needed."""
    size, needed = _size_warning(cal, target, holdout, guarantee)
    return _group_warning(cal) + size, needed


def _size_warning(cal: ScoredSample, target: Target, holdout: float, guarantee: Any) -> tuple[list[str], Any]:
    share = 1.0 - holdout
    if target.risk is not None:
        curve = risk_curve(cal.confidence, cal.wrong)
        needed = needed_images(curve, target.risk, target.delta)
        if needed is None or needed <= len(cal):
            return [], needed
        reached = f"coverage {guarantee.coverage:.1%}" if guarantee is not None else "no threshold"
        before = f" ({int(np.ceil(needed / share))} before the {holdout:.0%} check part)" if holdout else ""
        return [
            f"the sample is too small for this guarantee: {len(cal)} calibration images certify {reached}; "
            f"about {needed} independent calibration images{before} would certify the coverage where this "
            f"sample's risk is {PROJECTION_SHARE:g} of the target"
        ], needed
    low, high = guarantee.interval
    if max(high - target.pass_rate, target.pass_rate - low) <= PASS_RATE_HALF_WIDTH:
        return [], None
    needed = pass_rate_images(float(target.pass_rate), target.delta, PASS_RATE_HALF_WIDTH)
    return [
        f"the sample is too small for a tight pass rate: its interval is [{low:.3f}, {high:.3f}]; about "
        f"{needed} independent calibration images ({int(np.ceil(needed / share))} with the check part) "
        f"would keep it within +-{PASS_RATE_HALF_WIDTH:g}"
    ], needed


def _score(repository: Path, sample: list, url: str | None, protocol: str, log: Callable) -> ScoredSample:
    if url is None:
        return score_in_process(repository, sample, log=log)
    import onnx

    from fitguard.calibration.sample import score_with_server, served_threshold
    from fitguard.export.calibrated import detector_file, graph_threshold, served_version

    expected = graph_threshold(onnx.load(str(detector_file(repository, served_version(repository)))))
    served = served_threshold(url, protocol)
    if abs(served - expected) > 1e-6 * (1.0 + abs(expected)):
        raise CalibrationError(
            f"the server at {url} answers with threshold {served:g} but {repository} serves {expected:g}: "
            "calibrate the repository the server serves"
        )
    return score_with_server(url, sample, threshold=served, protocol=protocol)


def _served(repository: Path) -> tuple[int, float]:
    """The detector version the repository serves and its threshold."""
    import onnx

    from fitguard.export.calibrated import detector_file, graph_threshold, served_version

    version = served_version(repository)
    return version, graph_threshold(onnx.load(str(detector_file(repository, version))))


def _report(
    target: Target, sample: dict[str, Any], served: tuple[int, float], guarantee: Any
) -> dict[str, Any]:
    """The report before anything is written (``guarantee`` None where no threshold meets the target)."""
    return {
        "format": REPORT_FORMAT,
        "id": None,
        "mode": target.mode,
        "target": target.to_dict(),
        "delta": target.delta,
        "guarantee": describe(guarantee) if guarantee is not None else "none: no threshold meets the target",
        "sample": sample,
        "calibration": guarantee.to_dict() if guarantee is not None else None,
        "check": None,
        "threshold": {"new": None, "previous": served[1]},
        "detector_version": {"new": None, "previous": served[0]},
    }


def _choose(cal: ScoredSample, target: Target) -> RiskGuarantee | PassRateGuarantee:
    if target.risk is not None:
        return certify_risk(cal.confidence, cal.wrong, target.risk, target.delta)
    return pass_rate_threshold(cal.confidence, float(target.pass_rate), target.delta)


@dataclass(frozen=True)
class Options:
    """How to calibrate, besides the target (the command's options of the same names)."""

    labels: str | Path | None = None
    holdout: float = DEFAULT_HOLDOUT
    seed: int = 0
    all_images: bool = False
    url: str | None = None
    protocol: str = "grpc"
    report: str | Path | None = None
    force: bool = False


def _sample(
    repository: Path, images: str | Path, target: Target, options: Options, log: Callable | None
) -> tuple[dict[str, Any], ScoredSample, ScoredSample]:
    """Read, score and split the sample: (its description, the images the bounds use, the check part)."""
    if not 0.0 <= options.holdout < 1.0:
        raise CalibrationError(f"holdout must lie in [0, 1), got {options.holdout}")
    from fitguard.labels import ClassTable

    classes = ClassTable.of_repository(repository)
    listed = read_sample(images, options.labels, labelled=target.risk is not None, classes=classes)
    scored = _score(repository, listed, options.url, options.protocol, log)
    cal, check = scored.split(options.holdout, options.seed)
    used = cal if options.all_images else cal.one_per_group(options.seed)
    description = {
        "images": len(listed),
        "judged": len(scored),
        "failed": [{"path": p, "reason": r} for p, r in scored.failures[:20]],
        "calibration": len(cal),
        "calibration_used": len(used),
        "check": len(check),
        "holdout": options.holdout,
        "seed": options.seed,
        "scored_by": options.url or "in-process",
    }
    return description, used, check


def calibrate_repository(
    repository: str | Path,
    images: str | Path,
    out: str | Path,
    target: Target,
    options: Options = Options(),
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Calibrate ``repository`` on the images under ``images`` and write the copy to ``out`` and the
    report to ``options.report`` (default: ``<out>.calibration`` beside it). Returns the report.

    Raises:
        CalibrationError: bad sample or target, or no threshold meets the target (the report is written).
        RepositoryIntegrityError, CalibratedRepositoryError, FileExistsError: unusable source or target.
    """
    from fitguard.export.calibrated import write_calibrated
    from fitguard.manifest import verify_repository

    repository, out = Path(repository), Path(out)
    folder = Path(options.report) if options.report is not None else out.parent / f"{out.name}.calibration"
    verify_repository(repository)
    served = _served(repository)
    sample, cal, check = _sample(repository, images, target, options, log)
    try:
        guarantee = _choose(cal, target)
    except CalibrationError:
        if target.risk is not None:  # the curve shows why
            failed = _report(target, sample, served, None)
            failed["warnings"], failed["needed_images"] = _warnings(cal, target, options.holdout, None)
            write_report_files(folder, failed, cal)
        raise
    result = _report(target, sample, served, guarantee)
    result["warnings"], result["needed_images"] = _warnings(cal, target, options.holdout, guarantee)
    record = {
        "guarantee": result["guarantee"],
        "mode": target.mode,
        **target.to_dict(),
        "delta": target.delta,
    }
    written = write_calibrated(
        repository,
        out,
        threshold=guarantee.threshold,
        record={**record, "sample": sample},
        force=options.force,
    )
    versions = {"new": written["detector_version"], "previous": written["previous_detector_version"]}
    result |= {
        "id": written["id"],
        "check": check_figures(check, written["threshold"], target.delta),
        "threshold": {"new": written["threshold"], "previous": written["previous_threshold"]},
        "detector_version": versions,
        "out": str(out),
        "repository": str(repository),
    }
    write_report_files(folder, result, cal)
    return result | {"report": str(folder)}


def write_report_files(folder: Path, report: dict[str, Any], cal: ScoredSample) -> None:
    from fitguard.calibration.report import write_report

    write_report(folder, report, cal.confidence, cal.wrong if cal.labelled else None)


# ------------------------------------------------------------------------------------------------ command


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-repository", required=True, metavar="DIR", help="the repository to calibrate"
    )
    parser.add_argument("--images", required=True, metavar="FOLDER", help="the deployment's sample of images")
    parser.add_argument(
        "--labels",
        metavar="FILE",
        help="lines '<image file> <class>[,<more>] [<group>]', a class being a name of the repository's "
        "labels file, an index, or for ImageNet's classes a WordNet id (paths relative to --images; 'none' "
        "for no acceptable class); without it a labelled sample is a folder per class",
    )
    goal = parser.add_mutually_exclusive_group(required=True)
    goal.add_argument(
        "--target-risk", type=float, metavar="R", help="share of wrong answers among passed ones"
    )
    goal.add_argument(
        "--target-pass-rate", type=float, metavar="P", help="share of images passed (no labels)"
    )
    parser.add_argument(
        "--delta", type=float, default=DEFAULT_DELTA, help="the guarantee fails with probability at most this"
    )
    parser.add_argument(
        "--out", required=True, metavar="NEWDIR", help="the calibrated copy of the repository"
    )
    parser.add_argument("--report", metavar="FOLDER", help="report folder (default: NEWDIR.calibration)")
    parser.add_argument(
        "--holdout", type=float, default=DEFAULT_HOLDOUT, help="share of the sample kept to check the result"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration / check split")
    parser.add_argument(
        "--all-images",
        action="store_true",
        help="bound on every calibration image, not one per group (the groups of --labels)",
    )
    parser.add_argument("--url", help="score through a running server (host:port) instead of in-process")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--force", action="store_true", help="replace NEWDIR if it is a fitguard repository")


def run(args: argparse.Namespace) -> int:
    from fitguard.client import FitguardError
    from fitguard.export.calibrated import CalibratedRepositoryError
    from fitguard.manifest import RepositoryIntegrityError

    try:
        target = Target(args.target_risk, args.target_pass_rate, args.delta)
        options = Options(
            labels=args.labels,
            holdout=args.holdout,
            seed=args.seed,
            all_images=args.all_images,
            url=args.url,
            protocol=args.protocol,
            report=args.report,
            force=args.force,
        )
        result = calibrate_repository(
            args.model_repository,
            args.images,
            args.out,
            target,
            options,
            log=lambda line: print(line, file=sys.stderr),
        )
    except (CalibrationError, CalibratedRepositoryError, RepositoryIntegrityError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FitguardError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # scipy (bounds), matplotlib (plot): not in the serve extra
        print(f"error: fitguard calibrate needs {exc.name}: pip install 'fitguard[train]'", file=sys.stderr)
        return 2
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{result['id']}: {result['guarantee']}")
    print(
        f"threshold {result['threshold']['previous']:.6g} -> {result['threshold']['new']:.6g}, detector "
        f"version {result['detector_version']['new']}; wrote {result['out']} and {result['report']}"
    )
    return 0
