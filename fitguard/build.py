"""``fitguard build``: what ships, in one command.

Quality head (DTNIQ-f on the scenes set, distorted and labelled offline, fitted once) -> the fit = right
detector (fitted once on the labelled objects) -> verified ONNX export -> Triton repository. Nothing is
evaluated here: ``make report`` runs the evaluations that the README and docs cite. Each step is
skipped when its output exists and was made with the same arguments and inputs, so ``make demo`` and
``make test`` build once and a detector change rebuilds only the detector and the export.
``build.json`` records arguments and timings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fitguard.classifier_spec import ClassifierSpec
from fitguard.contract import DEFAULT_PATCHES, PATCHES_MODE, QUALITY_MODES, SHARED_MODE
from fitguard.repository import MANIFEST_NAME

BUILD_FILE = "build.json"
# What makes the repository out of the model files: a change here re-exports (seconds).
EXPORT_CODE: tuple[str, ...] = (
    "fitguard.export.onnx_export",
    "fitguard.export.repository",
    "fitguard.export.configs",
    "fitguard.preprocess",
    "fitguard.contract",
)


def configure(parser: argparse.ArgumentParser) -> None:
    from fitguard.classifier_spec import add_classifier_arguments

    add_classifier_arguments(parser)
    parser.add_argument(
        "--labelled",
        default=None,
        help="the team's labelled photos for the detector (photos/<class name>/... or a labels file "
        "'<file> <class> [<group>]'); needed with --classes (docs/custom.md)",
    )
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
        default=SHARED_MODE,
        help="shared: the classifier's pass gives the quality features (one backbone pass per image); "
        "patches: the paper's DTNIQ-f on P patches (docs/iqa.md compares the two)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="build", help="build folder")
    parser.add_argument("--force", action="store_true", help="rebuild every step")


def run(args: argparse.Namespace) -> int:
    from fitguard.classifier_spec import checked_spec
    from fitguard.training.data.labelled import LabelledError
    from fitguard.training.fit.custom import load_labelled_set

    spec = checked_spec(args, "fitguard build")
    if spec is None:
        return 2
    try:  # before any step, so a bad set writes nothing
        load_labelled_set(spec, args.labelled)
    except LabelledError as exc:
        print(f"fitguard build: error: {exc}", file=sys.stderr)
        return 2
    result = build(
        Path(args.out),
        classifier=spec,
        labelled=args.labelled,
        photos=args.photos,
        patches=args.patches,
        quality_features=args.quality_features,
        seed=args.seed,
        force=args.force,
    )
    print(f"repository: {result['repository']}")
    return 0


def _stamp(args: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]


def _code_version(*modules: str) -> str:
    """A hash of these modules' source: a step reruns when the code that makes its output changes."""
    import importlib.util

    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(name)
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()[:16]


def _sources_version() -> str:
    """A hash of the committed ``model_repository/`` (configs, Python backends): the export copies them,
    so a change there re-exports."""
    from fitguard.export.repository import SOURCE

    digest = hashlib.sha256()
    for path in sorted(p for p in SOURCE.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(SOURCE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


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
    from fitguard.training.data.scenes import prepare_scenes

    return prepare_scenes().name


def _objects_version() -> str:
    """The prepared labelled objects' folder name: it changes with the packages and the recipe."""
    from fitguard.training.data.objects import prepare_objects

    return prepare_objects().name


def _labelled_version(spec: ClassifierSpec, labelled: str | Path) -> str:
    """The team's labelled photos by content: the detector refits when a photo, class or group changes."""
    from fitguard.training.data.labelled import labelled_digest
    from fitguard.training.fit.custom import load_labelled_set

    return labelled_digest(load_labelled_set(spec, labelled))


def _iqa_args(common: dict[str, Any], *, dataset: str) -> dict[str, Any]:
    """Stamps hold every setting that changes a step's output, so a changed default retrains."""
    from fitguard.backbones import QUALITY_FEATURES
    from fitguard.training.quality.data import SYNTHETIC_IMAGES, SYNTHETIC_PER_VIEW
    from fitguard.training.quality.head import default_head_config

    return {
        **common,
        "dataset": dataset if dataset != "scenes" else _scenes_version(),
        "fit": "once",
        "features": QUALITY_FEATURES,
        "images": (SYNTHETIC_IMAGES, SYNTHETIC_PER_VIEW),
        "head_config": asdict(default_head_config(dataset)),
    }


def _detector_args(record: _Record, models: dict[str, Any], iqa_args: dict[str, Any]) -> dict[str, Any]:
    """The detector step's stamp: the head it reads, the population and the recipe's settings."""
    from fitguard.detector import DETECTOR_FORMAT, FEATURE_SETS, FIT_SET
    from fitguard.training.fit.population import PopulationConfig

    return {
        **iqa_args,
        "head": record.stamp("iqa"),
        "fit": "right",
        "population": asdict(PopulationConfig(seed=models["seed"])),
        "objects": _objects_version(),
        "format": DETECTOR_FORMAT,
        "features": FEATURE_SETS[FIT_SET],
        "code": _code_version(
            "fitguard.detector", "fitguard.training.fit.recipes", "fitguard.training.fit.train"
        ),
    }


def _detector_and_export(
    record: _Record, out: Path, *, models: dict[str, Any], det_args: dict[str, Any], quality_features: str
) -> None:
    """The detector step (fitted once on the labelled objects) and the verified export."""
    from fitguard.export import export_repository
    from fitguard.training.fit.custom import train_custom_detector
    from fitguard.training.fit.population import PopulationConfig

    head, detector, repository = out / "iqa_head.pt", out / "detector.joblib", out / "model_repository"
    spec = models["classifier"]
    record.step(
        "detector",
        detector,
        det_args,
        lambda: train_custom_detector(
            detector,
            classifier=spec,
            labelled=models["labelled"],
            head=head,
            config=PopulationConfig(seed=models["seed"]),
            patches=models["patches"],
            cache=out / "cache",
        ),
    )
    record.step(
        "export",
        repository / MANIFEST_NAME,
        {
            **det_args,
            "detector": _file_hash(detector),
            "code": _code_version(*EXPORT_CODE),
            "sources": _sources_version(),
        },
        lambda: export_repository(
            repository,
            head=head,
            detector=detector,
            quality_features=quality_features,
            classifier=spec,
            patches=models["patches"],
        ),
    )


def build(
    out: Path,
    *,
    backbone: str = "efficientnet_lite0",
    weights: str | None = "default",
    photos: str | None = None,
    patches: int = DEFAULT_PATCHES,
    quality_features: str = SHARED_MODE,
    seed: int = 0,
    force: bool = False,
    classifier: ClassifierSpec | None = None,
    labelled: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or reuse) every step; returns the build record (also written to ``out/build.json``).

    ``classifier`` (a :class:`fitguard.classifier_spec.ClassifierSpec`) names the classifier instead of
    ``backbone`` and ``weights``; ``labelled``, the team's photos its detector is fitted on.
    """
    from fitguard.training.quality.train import train_iqa

    spec = classifier or ClassifierSpec(backbone, weights)
    out.mkdir(parents=True, exist_ok=True)
    record = _Record(out / BUILD_FILE, force)
    # A plain spec adds nothing, so the default build's stamps stay as they were.
    common = {
        "backbone": spec.name,
        "weights": spec.weights,
        "photos": photos,
        "patches": patches,
        "seed": seed,
    }
    common.update(spec.stamp())
    if quality_features != PATCHES_MODE:  # stamps of patch-mode builds stay as they were
        common["quality_features"] = quality_features
    head, repository = out / "iqa_head.pt", out / "model_repository"
    models = {"backbone": spec.name, "weights": spec.weights, "patches": patches, "seed": seed}
    # The quality head trains on the scenes set unless a photo folder is given.
    dataset = "synthetic" if photos else "scenes"
    iqa_args = _iqa_args(common, dataset=dataset)
    record.step(
        "iqa",
        head,
        iqa_args,
        lambda: train_iqa(
            **models,
            classifier=spec,
            dataset=dataset,
            photos=photos,
            out=head,
            splits=0,
            cache_dir=None,  # the shared feature cache: keyed by the trunk, so builds of one trunk share it
            quality_features=quality_features,
        ),
    )
    det_args = _detector_args(record, models, iqa_args)
    if labelled is not None:
        det_args["labelled"] = _labelled_version(spec, labelled)
        # A team's detector is fitted (and its held-out photos written) by the custom module.
        det_args["custom_code"] = _code_version("fitguard.training.fit.custom")
    models = {**models, "classifier": spec, "labelled": labelled}
    _detector_and_export(record, out, models=models, det_args=det_args, quality_features=quality_features)
    record.data["repository"] = str(repository)
    record.write()
    return record.data
