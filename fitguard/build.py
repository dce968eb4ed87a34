"""``fitguard build``: the whole offline chain in one command.

Quality head (DTNIQ-f on the scenes set, distorted and labelled offline) -> detector data and SVM ->
verified ONNX export -> Triton repository. Each step is skipped when its output exists and was made
with the same arguments, so ``make demo`` and ``make test`` build once. ``build.json`` records
arguments, timings and metrics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fitguard.contract import DEFAULT_PATCHES, PATCHES_MODE, QUALITY_MODES
from fitguard.repository import MANIFEST_NAME

BUILD_FILE = "build.json"
FIT_REPORT = "fit_report"  # the shipped detector's held-out evaluation (report.md, report.json, plots)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="default", help="backbone weights (see fitguard export --help)")
    parser.add_argument(
        "--photos",
        default=None,
        help="folder of reference photos for the quality head (default: the scenes set); the detector "
        "learns on the labelled objects",
    )
    parser.add_argument("--patches", type=int, default=DEFAULT_PATCHES, help="IQA patches per image")
    parser.add_argument(
        "--quality-features",
        choices=QUALITY_MODES,
        default=PATCHES_MODE,
        help="patches: DTNIQ-f on P patches; shared: the classifier's pass gives the quality features "
        "(one backbone pass per image; docs/iqa.md compares the two)",
    )
    parser.add_argument("--splits", type=int, default=10, help="IQA evaluation splits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="build", help="build folder")
    parser.add_argument("--force", action="store_true", help="rebuild every step")


def run(args: argparse.Namespace) -> int:
    result = build(
        Path(args.out),
        backbone=args.backbone,
        weights=args.weights,
        photos=args.photos,
        patches=args.patches,
        quality_features=args.quality_features,
        splits=args.splits,
        seed=args.seed,
        force=args.force,
    )
    print(f"repository: {result['repository']}")
    return 0


def _stamp(args: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]


def _file_hash(path: Path) -> str:
    """Downstream steps key on their inputs' content, so a retrained head or detector is re-exported."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class _Record:
    """``build.json``: per step its argument stamp, output, time and result; a step whose stamp and output
    are unchanged is skipped."""

    def __init__(self, path: Path, force: bool) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() and not force else {}
        self.data.setdefault("steps", {})

    def write(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2, default=str))

    def stamp(self, name: str) -> str:
        return self.data["steps"][name]["stamp"]

    def step(self, name: str, output: Path, args: dict[str, Any], fn: Callable[[], Any]) -> None:
        stamp = _stamp(args)
        done = self.data["steps"].get(name, {})
        if output.exists() and done.get("stamp") == stamp:
            print(f"[build] {name}: up to date ({output})")
            return
        print(f"[build] {name} ...", flush=True)
        t0 = time.perf_counter()
        result = fn()
        self.data["steps"][name] = {
            "stamp": stamp,
            "output": str(output),
            "seconds": round(time.perf_counter() - t0, 1),
            "result": result if isinstance(result, dict) else None,
        }
        self.write()
        print(f"[build] {name}: {self.data['steps'][name]['seconds']} s", flush=True)


def _scenes_version() -> str:
    """The prepared scenes set's folder name: it changes with the packages, the scene list and the recipe."""
    from fitguard.training.datasets.scenes import prepare_scenes

    return prepare_scenes().name


def _objects_version() -> str:
    """The prepared labelled objects' folder name: it changes with the packages and the recipe."""
    from fitguard.training.datasets.objects import prepare_objects

    return prepare_objects().name


def _iqa_args(common: dict[str, Any], *, dataset: str, splits: int) -> dict[str, Any]:
    """Stamps hold every setting that changes a step's output, so a changed default retrains."""
    from fitguard.backbones import QUALITY_FEATURES
    from fitguard.training.iqa_data import SYNTHETIC_IMAGES, SYNTHETIC_PER_VIEW
    from fitguard.training.iqa_eval import EVALUATION, SPLIT_SCHEME
    from fitguard.training.iqa_head import default_head_config

    return {
        **common,
        "dataset": dataset if dataset != "scenes" else _scenes_version(),
        "splits": splits,
        "split_scheme": SPLIT_SCHEME,
        "evaluation": EVALUATION,
        "features": QUALITY_FEATURES,
        "images": (SYNTHETIC_IMAGES, SYNTHETIC_PER_VIEW),
        "head_config": asdict(default_head_config(dataset)),
    }


def _detector_step(
    record: _Record, models: dict[str, Any], *, out: Path, iqa_args: dict[str, Any]
) -> dict[str, Any]:
    """Train (or reuse) the shipped detector and its held-out evaluation; returns its stamp arguments.

    Fit means the classifier's answer is right: the detector learns right against wrong answers on the
    labelled objects (clean as users send them, distorted, universal perturbations, fooling images), and
    ``evaluate-fit`` measures the same recipe held out by stamp (``fit_report/``, docs/fit_right.md).
    """
    from fitguard.detector import DETECTOR_FORMAT, FEATURE_SETS, FIT_SET
    from fitguard.training.fit_detector import C_GRID, FOOLING_REFUSAL, FOOLING_WEIGHTS, PASS_RATE
    from fitguard.training.fit_evaluate import REPORT_VERSION, evaluate_fit
    from fitguard.training.fit_population import PopulationConfig
    from fitguard.training.fit_right import REPEATS
    from fitguard.training.selective import SHIPPED

    head, detector = out / "iqa_head.pt", out / "detector.joblib"
    config = PopulationConfig(seed=models["seed"])
    det_args = {
        **iqa_args,
        "head": record.stamp("iqa"),
        "fit": "right",
        "population": asdict(config),
        "objects": _objects_version(),
        "format": DETECTOR_FORMAT,
        "features": FEATURE_SETS[FIT_SET],
        "learner": ("logistic", C_GRID, FOOLING_WEIGHTS, FOOLING_REFUSAL),
        "pass_rate": PASS_RATE,
        "repeats": REPEATS,
        "report": REPORT_VERSION,
    }

    def train() -> dict[str, Any]:
        rep = evaluate_fit(
            backbone=models["backbone"],
            weights=models["weights"],
            head=head,
            report=out / FIT_REPORT,
            config=config,
            patches=models["patches"],
            cache=out / "cache",
            detector_out=detector,
        )
        kept = (SHIPPED, "msp", "quality")  # what build.json keeps of the report
        aurc = {mix: {m: res["aurc"][m] for m in kept} for mix, res in rep["results"].items()}
        return {"aurc": aurc, "seconds": rep["seconds"]}

    record.step("detector", detector, det_args, train)
    return det_args


def build(
    out: Path,
    *,
    backbone: str = "efficientnet_lite0",
    weights: str | None = "default",
    photos: str | None = None,
    patches: int = DEFAULT_PATCHES,
    quality_features: str = PATCHES_MODE,
    splits: int = 10,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Run (or reuse) every step; returns the build record (also written to ``out/build.json``)."""
    from fitguard.export import export_repository
    from fitguard.training.iqa import train_iqa

    out.mkdir(parents=True, exist_ok=True)
    record = _Record(out / BUILD_FILE, force)
    common = {"backbone": backbone, "weights": weights, "photos": photos, "patches": patches, "seed": seed}
    if quality_features != PATCHES_MODE:  # stamps of patch-mode builds stay as they were
        common["quality_features"] = quality_features
    head, detector, repository = out / "iqa_head.pt", out / "detector.joblib", out / "model_repository"
    models = {"backbone": backbone, "weights": weights, "patches": patches, "seed": seed}
    # The quality head trains on the scenes set unless a photo folder is given.
    dataset = "synthetic" if photos else "scenes"
    iqa_args = _iqa_args(common, dataset=dataset, splits=splits)
    record.step(
        "iqa",
        head,
        iqa_args,
        lambda: train_iqa(
            **models,
            dataset=dataset,
            photos=photos,
            out=head,
            splits=splits,
            cache_dir=out / "cache",
            quality_features=quality_features,
        ),
    )
    det_args = _detector_step(record, models, out=out, iqa_args=iqa_args)
    record.step(
        "export",
        repository / MANIFEST_NAME,
        {**det_args, "detector": _file_hash(detector)},
        lambda: export_repository(
            repository,
            backbone=backbone,
            weights=weights,
            head=head,
            detector=detector,
            patches=patches,
            quality_features=quality_features,
        ),
    )
    record.data["repository"] = str(repository)
    record.write()
    return record.data
