"""The calibration in docs/calibration.md: ``fitguard calibrate`` on the build with labelled objects, its
threshold checked on stamps it never saw through the real server, and its guarantee over repeated splits.

    python scripts/calibrate_objects.py --build build --target-risk 0.3 --out docs/calibration

120 stamps (all their objects; the bounds use one per stamp) form the deployment's sample, the other 40
stamps are held out; every object as a user sends it (:mod:`fitguard.training.fit.calibration_objects`).
Writes ``report.*`` (the command's report), ``heldout.json`` (the served check, the repeated splits).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = 500
CALIBRATION_STAMPS = 120


def served_check(repository: Path, held: Path, old: float, new: float, delta: float) -> dict[str, Any]:
    """The held-out stamps through the real server with the calibrated repository; the old threshold's
    verdicts on the same images follow from FIT_SCORE (confidence - new) + new - old."""
    from fitguard.calibration.sample import read_sample
    from fitguard.client import FitClient
    from fitguard.client.calibration import read_calibration
    from fitguard.guarantee import rate_interval
    from fitguard.serve import EmbeddedServer

    sample = read_sample(held, held / "labels.txt")
    with EmbeddedServer(repository, http_port=0, grpc_port=0, metrics_port=0) as server:
        served = read_calibration(server.grpc_url)
        with FitClient(server.grpc_url) as client:
            verdicts = client.classify_many([im.path for im in sample])
    wrong = np.array([v.class_id not in im.labels for v, im in zip(verdicts, sample, strict=True)])
    score = np.array([v.fit_score for v in verdicts])
    out: dict[str, Any] = {
        "images": len(sample),
        "served_calibration": served.id,
        "detector": served.detector_version,
    }
    for name, passed in (("calibrated", score >= 0), ("previous", score + new - old >= 0)):
        k, errors = int(passed.sum()), int(wrong[passed].sum())
        out[name] = {
            "passed": k,
            "coverage": k / len(sample),
            "coverage_interval": rate_interval(k, len(sample), delta),
            "errors": errors,
            "risk": errors / k if k else None,
            "risk_interval": rate_interval(errors, k, delta),
            "risk_refused": float(wrong[~passed].mean()) if k < len(sample) else None,
        }
    return out


def _calibrate(args: argparse.Namespace, *, repository: Path, work: Path) -> tuple[list[str], float]:
    """``fitguard calibrate`` on the sample; returns the command and its seconds. The report it writes
    names ``$WORK`` rather than the temporary folder, which means nothing to a reader."""
    from fitguard.cli import main as fitguard

    start = time.perf_counter()
    command = [
        *("calibrate", "--model-repository", str(repository), "--images", str(work / "sample")),
        *("--labels", str(work / "sample/labels.txt"), "--target-risk", str(args.target_risk)),
        *("--delta", str(args.delta), "--out", str(work / "calibrated"), "--report", str(args.out)),
    ]
    if fitguard(command) != 0:
        raise SystemExit("fitguard calibrate failed")
    seconds = time.perf_counter() - start
    for name in ("report.json", "report.md"):
        path = args.out / name
        path.write_text(path.read_text(encoding="utf-8").replace(str(work), "$WORK"), encoding="utf-8")
    return command, seconds


def _repeated_splits(args: argparse.Namespace, *, repository: Path, work: Path) -> dict[str, Any]:
    """The guarantee over repeated splits of all the stamps, every object scored in process by the build."""
    from fitguard.calibration.sample import read_sample, score_in_process
    from fitguard.training.fit.calibration_objects import repeated_splits

    everything = [*read_sample(work / "sample", work / "sample/labels.txt")]
    everything += read_sample(work / "held", work / "held/labels.txt")
    scored = score_in_process(repository, everything, log=None)
    groups = np.array([im.group for im in scored.images])
    return repeated_splits(
        scored.confidence,
        scored.wrong,
        groups,
        target=args.target_risk,
        delta=args.delta,
        splits=SPLITS,
        calibration_groups=CALIBRATION_STAMPS,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=Path("build"))
    parser.add_argument("--target-risk", type=float, default=0.3)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path("docs/calibration"))
    args = parser.parse_args()

    from fitguard.manifest import read_manifest
    from fitguard.training.data import load_dataset
    from fitguard.training.fit.calibration_objects import write_objects_sample

    repository = args.build / "model_repository"
    work = Path(tempfile.mkdtemp(prefix="calibrate-objects-"))
    stamps = np.random.default_rng(0).permutation(load_dataset("objects").groups()).tolist()
    write_objects_sample(work / "sample", stamps[:CALIBRATION_STAMPS], seed=1)
    write_objects_sample(work / "held", stamps[CALIBRATION_STAMPS:], seed=2)
    command, seconds = _calibrate(args, repository=repository, work=work)
    report = json.loads((args.out / "report.json").read_text())
    old, new = report["threshold"]["previous"], report["threshold"]["new"]
    check = served_check(work / "calibrated", work / "held", old, new, args.delta)
    splits = _repeated_splits(args, repository=repository, work=work)
    manifest = read_manifest(repository)
    result = {
        "build": {
            "created": manifest["created"],
            "detector_sha256": manifest["files"]["detector/1/model.onnx"],
        },
        "command": "fitguard " + " ".join(command).replace(str(work), "$WORK"),
        "command_seconds": round(seconds, 1),
        "held_out_stamps": len(stamps) - CALIBRATION_STAMPS,
        "served_check": check,
        "repeated_splits": splits,
    }
    (args.out / "heldout.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
