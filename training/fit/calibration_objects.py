"""A deployment's sample made from the labelled objects, for ``fitguard calibrate`` (its tests and
docs/calibration.md): each item as a user sends it (:func:`fitguard.training.fit.population.as_sent`),
written as a lossless PNG of exactly what the server decodes, with a labels file that names its
acceptable classes and its stamp as the group, so a split keeps every stamp on one side."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

LABELS_NAME = "labels.txt"


def _file_name(name: str) -> str:
    return name.replace("/", "_").replace("#", "-") + ".png"


def write_objects_sample(
    folder: str | Path, stamps: Iterable[str] | None = None, per_stamp: int | None = None, seed: int = 0
) -> Path:
    """Write the objects of ``stamps`` (all by default; at most ``per_stamp`` items each) to ``folder``
    with ``labels.txt`` (``<file>\\t<classes>\\t<stamp>``); returns the labels file.

    Raises:
        ValueError: no item of the objects set matches.
    """
    from fitguard.training.data import load_dataset
    from fitguard.training.fit.population import as_sent

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset("objects")
    chosen = set(dataset.groups() if stamps is None else stamps)
    rng = np.random.default_rng(seed)
    seen: dict[str, int] = {}
    lines = []
    for item in dataset:
        if item.group not in chosen or not item.labels:
            continue
        if per_stamp is not None and seen.get(item.group, 0) >= per_stamp:
            continue
        seen[item.group] = seen.get(item.group, 0) + 1
        rgb, _ = as_sent(item.image(), rng)
        Image.fromarray(rgb).save(folder / _file_name(item.name))
        classes = ",".join(str(c) for c in sorted(item.labels))
        lines.append(f"{_file_name(item.name)}\t{classes}\t{item.group}\n")
    if not lines:
        raise ValueError("no labelled object matches the chosen stamps")
    labels = folder / LABELS_NAME
    labels.write_text("".join(lines), encoding="utf-8")
    return labels


def repeated_splits(
    conf: np.ndarray,
    wrong: np.ndarray,
    groups: np.ndarray,
    *,
    target: float,
    delta: float,
    splits: int,
    calibration_groups: int,
    modes: tuple[str, ...] = ("one per stamp", "all images"),
) -> dict:
    """The guarantee checked on repeated splits of a scored sample: ``splits`` times, calibrate on
    ``calibration_groups`` random groups (stamps) and measure the risk of what passes on the others; with
    one image per group (``fitguard calibrate``'s default) and with every image (``--all-images``)."""
    from fitguard.guarantee import CalibrationError, certify_risk

    stamps = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in stamps}
    out = {}
    for mode in modes:
        rng = np.random.default_rng(7)
        coverage, risks, none = [], [], 0
        for _ in range(splits):
            order = rng.permutation(stamps)
            chosen = [
                members[g] if mode == "all images" else [rng.choice(members[g])]
                for g in order[:calibration_groups]
            ]
            cal = np.concatenate(chosen)
            held = np.concatenate([members[g] for g in order[calibration_groups:]])
            try:
                threshold = certify_risk(conf[cal], wrong[cal], target, delta).threshold
            except CalibrationError:
                none += 1
                continue
            passed = conf[held] >= threshold
            coverage.append(float(passed.mean()))
            risks.append(float(wrong[held][passed].mean()) if passed.any() else 0.0)
        risks_arr = np.array(risks)
        out[mode] = {
            "splits": splits,
            "no_threshold": none / splits,
            "held_out_risk_above_target": float(np.sum(risks_arr > target) / splits),
            "held_out_risk_mean": float(risks_arr.mean()),
            "held_out_risk_q90": float(np.quantile(risks_arr, 0.9)),
            "held_out_coverage_mean": float(np.mean(coverage)),
        }
    return out
