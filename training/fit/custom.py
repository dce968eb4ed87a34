"""The detector of a team's classifier: its spec, its labelled photos, a fit part and a held-out part.

``fitguard train detector`` and ``fitguard build`` come here with a classifier spec
(:mod:`fitguard.classifier_spec`) and, for a classifier of its own classes, ``--labelled`` photos
(:mod:`fitguard.training.data.labelled`). The population (:mod:`fitguard.training.fit.population`) is
made from those photos and against that classifier; an answer is right when top-1 is the photo's class.
The photos are split by group as ``fitguard evaluate-fit`` splits by stamp
(:func:`fitguard.training.fit.protocol.stamp_split`): the fit part sets the veto's percentiles and the
threshold, the held-out part is what the report and the release gate judge.

A plain spec on the labelled objects (a registered name and its ImageNet head) is
:func:`fitguard.training.fit.train.train_fit_detector` itself, so the default build is unchanged.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.contract import DEFAULT_PATCHES
from fitguard.training.fit.population import PopulationConfig
from fitguard.training.fit.train import FitData

log = logging.getLogger(__name__)


def spec_classes(classifier: Any) -> tuple[str, ...]:
    """The names of the classifier's outputs: its classes file's, else ImageNet's."""
    if classifier.classes is not None:
        return tuple(classifier.classes)
    from fitguard.labels import imagenet_classes

    return tuple(c.name for c in imagenet_classes())


def load_labelled_set(classifier: Any, labelled: str | Path | None) -> Any:
    """The data the detector learns on: the labelled photos, or the labelled objects for an ImageNet head.

    Raises:
        LabelledError: no ``labelled`` for a classifier of its own classes, or a bad labelled set.
    """
    from fitguard.training.data.labelled import LabelledError, load_labelled

    if labelled is not None:
        return load_labelled(labelled, spec_classes(classifier))
    if classifier.classes is not None:
        raise LabelledError(
            f"{classifier.classes_file}: a classifier of its own classes needs --labelled photos/ "
            "(photos/<class name>/... or a labels file) to fit its detector"
        )
    from fitguard.training.data import load_dataset

    return load_dataset("objects")


def load_custom_fit_data(
    *,
    classifier: Any,
    head: str | Path,
    config: PopulationConfig,
    labelled: str | Path | None = None,
    patches: int = DEFAULT_PATCHES,
    cache: Path | None = None,
) -> FitData:
    """:class:`FitData` of the spec's classifier on its labelled set (groups stand where stamps do)."""
    from fitguard.training.fit.train import population_fit_data
    from fitguard.training.paper.features import load_feature_models

    def load() -> tuple[Any, Any]:
        dataset = load_labelled_set(classifier, labelled)  # a bad set fails before the models load
        return load_feature_models(classifier.name, head, classifier.weights, classifier=classifier), dataset

    return population_fit_data(load, config=config, patches=patches, cache=cache)


def fit_part(data: FitData, seed: int) -> np.ndarray:
    """The rows that fit the detector: a seeded half of the groups (and of the fooling images), as each
    repeat of ``fitguard evaluate-fit`` splits; the other half is held out."""
    from fitguard.training.fit.protocol import stamp_split

    return stamp_split(data.stamps, seed)


def train_custom_detector(
    out: Path,
    *,
    classifier: Any,
    head: str | Path,
    config: PopulationConfig,
    labelled: str | Path | None = None,
    patches: int = DEFAULT_PATCHES,
    cache: Path | None = None,
    recipe: str | None = None,
) -> dict[str, Any]:
    """Fit the detector of ``classifier`` and write it; returns its meta (see the module docstring)."""
    from fitguard.training.fit.train import train_fit_detector

    if labelled is None and classifier.is_plain:
        return train_fit_detector(
            out,
            backbone=classifier.name,
            head=head,
            config=config,
            patches=patches,
            cache=cache,
            weights=classifier.weights,
            recipe=recipe,
        )
    data = load_custom_fit_data(
        classifier=classifier, head=head, config=config, labelled=labelled, patches=patches, cache=cache
    )
    return _fit_and_save(out, data, classifier=classifier, config=config, patches=patches, recipe=recipe)


def _fit_and_save(
    out: Path, data: FitData, *, classifier: Any, config: PopulationConfig, patches: int, recipe: str | None
) -> dict[str, Any]:
    from fitguard.detector import save_detector
    from fitguard.training.fit.protocol import cv_groups, fit_recipe
    from fitguard.training.fit.signals import SHIPPED, signal_groups

    t = time.perf_counter()
    rows = fit_part(data, config.seed)
    x = signal_groups(data.feats)[SHIPPED][rows]
    groups = cv_groups(data.stamps)[rows]
    det, _ = fit_recipe(
        x, data.right[rows], groups=groups, group=data.pop.group[rows], recipe=recipe or SHIPPED
    )
    held_out = sorted(set(data.stamps[~rows].tolist()) - {""})
    det.meta.update(
        {
            "backbone": classifier.name,
            "weights_id": data.models.backbone.weights_id,
            "head_key": data.models.key,
            "classifier": {**classifier.to_dict(), **classifier.stamp()},
            "patches": patches,
            "seed": config.seed,
            "population": config.__dict__,
            "labelled": data.dataset.provenance.get("labelled"),
            "rows": int(rows.sum()),
            "held_out_rows": int((~rows).sum()),
            "held_out_groups": held_out,
            "right_share": float(data.right[rows].mean()),
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if data.dataset.provenance.get("labelled"):  # the file records where its held-out photos are listed
        det.meta["held_out_labels"] = str(write_held_out_labels(out, data.dataset, set(held_out)))
    save_detector(out, det)
    seconds = {**data.seconds, "fit": time.perf_counter() - t}
    return {**det.meta, "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def held_out_labels_path(detector: Path) -> Path:
    """Beside the detector file: the labelled photos it never saw (``detector.held_out.txt``)."""
    return detector.with_name(f"{detector.stem}.held_out.txt")


def write_held_out_labels(detector: Path, dataset: Any, groups: set[str]) -> Path:
    """The held-out groups' photos as a labels file that ``fitguard calibrate --labels`` reads, paths
    relative to the labelled folder (``--images``): the photos the detector never fitted on, so a
    calibration on them is checked on what nothing was tuned on."""
    path = held_out_labels_path(detector)
    lines = [f"{it.name}\t{it.meta['class']}\t{it.group}" for it in dataset if it.group in groups]
    root = dataset.provenance["labelled"]
    header = f"# the photos of {root} that {detector.name} held out: <file> <class> <group>\n"
    path.write_text(header + "".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ CLI


def configure(parser: argparse.ArgumentParser) -> None:
    """``fitguard train detector``: the recipes of :mod:`fitguard.training.fit.train`, the classifier
    spec, and ``--labelled``."""
    from fitguard.training.fit.train import configure as train_configure

    train_configure(parser)
    parser.add_argument(
        "--labelled",
        default=None,
        help="the team's labelled photos: photos/<class name>/... or a labels file "
        "(<file> <class> [<group>])",
    )


def run(args: argparse.Namespace) -> int:
    from fitguard.classifier_spec import checked_spec
    from fitguard.training.data.labelled import LabelledError
    from fitguard.training.fit.train import PAPER_RECIPE
    from fitguard.training.fit.train import run as train_run

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not Path(args.iqa_head).is_file():
        print(f"fitguard train detector: error: quality head {args.iqa_head} not found", file=sys.stderr)
        return 2
    spec = checked_spec(args, "fitguard train detector")
    if spec is None:
        return 2
    if args.recipe == PAPER_RECIPE or (spec.is_plain and args.labelled is None):
        return train_run(args)
    try:
        meta = train_custom_detector(
            Path(args.out),
            classifier=spec,
            head=args.iqa_head,
            config=PopulationConfig(seed=args.seed),
            labelled=args.labelled,
            patches=args.patches,
            cache=Path(args.cache) if args.cache else None,
            recipe=args.recipe,
        )
    except LabelledError as exc:
        print(f"fitguard train detector: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: {meta['rows']} rows fitted ({meta['right_share']:.1%} right), "
        f"{meta['held_out_rows']} held out, {meta['seconds']}"
    )
    return 0
