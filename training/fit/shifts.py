"""Domain shift inside the offline data: the fit = right methods trained on one part of the labelled
objects and scored on another that differs in what the photos show, where they stand, or how they were
compressed.

- ``categories``: train on the stamps of :data:`SHIFT_TRAIN_CATEGORIES` (the stamp folder), test on
  every other category's;
- ``backgrounds``: train on one half of the stamps shown on one half of the scenes, test on the other
  half of the stamps on the other scenes (rows of the two mixed quarters are left out);
- ``compression``: train on one half of the stamps with the clean images sent as JPEG, test on the other
  half with the clean images sent as WebP.

Fooling images (no stamp, no scene) split in halves. Each shift reports the clean, natural and paper
mixes: AURC with stamp-bootstrap intervals and Table V at thresholds read from the training side.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fitguard.training.fit.population import CLEAN
from fitguard.training.fit.protocol import MIXES, restrict, score_all, table_v, thresholds
from fitguard.training.fit.signals import bootstrap, metric

SHIFT_TRAIN_CATEGORIES: tuple[str, ...] = ("animals", "food")


def _halves(values: np.ndarray, seed: int) -> np.ndarray:
    """Mask of the rows whose value falls in a seeded half of the distinct non-empty values."""
    ids = np.unique(values[values != ""])
    first = np.random.default_rng(seed).permutation(ids)[: len(ids) // 2]
    return np.isin(values, first)


def shift_splits(
    pop: Any, scenes: np.ndarray, stamps: np.ndarray, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """Per shift: (train mask, test mask, what each side holds)."""
    fool = stamps == ""
    fool_train = np.zeros(len(stamps), bool)
    fool_train[np.flatnonzero(fool)[::2]] = True  # every other row: both fooling kinds on both sides
    category = np.asarray([s.split("/")[0] for s in stamps])
    by_category = np.isin(category, SHIFT_TRAIN_CATEGORIES) & ~fool
    stamp_a, scene_a = _halves(stamps, seed), _halves(scenes, seed + 1)
    jpeg = np.char.startswith(pop.kind.astype(str), "jpeg")
    clean = pop.group == CLEAN
    return {
        "categories": (
            by_category | fool_train,
            ~by_category & ~fool_train,
            {
                "train": list(SHIFT_TRAIN_CATEGORIES),
                "test": sorted(set(category[~by_category & ~fool].tolist())),
            },
        ),
        "backgrounds": (
            (stamp_a & scene_a) | fool_train,
            (~stamp_a & ~scene_a & ~fool) | (fool & ~fool_train),
            {"train": sorted(set(scenes[scene_a].tolist())), "test": sorted(set(scenes[~scene_a & ~fool]))},
        ),
        "compression": (
            (stamp_a & (~clean | jpeg)) | fool_train,
            (~stamp_a & ~fool & (~clean | ~jpeg)) | (fool & ~fool_train),
            {"train": "clean images as JPEG", "test": "clean images as WebP"},
        ),
    }


def evaluate_shift(
    *,
    pop: Any,
    signals: dict,
    untrained: dict,
    right: np.ndarray,
    stamps: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    draws: int,
) -> dict[str, Any]:
    """Every method fitted on the ``train`` rows and scored on the ``test`` rows."""
    conf, calib = score_all(signals, untrained, right, pop, stamps, train)
    thr = thresholds(calib, right, train & (pop.group == CLEAN))
    idx = np.flatnonzero(test)
    rep = {
        "conf": {m: c[idx] for m, c in conf.items()},
        "right": right[idx],
        "stamps": np.where(stamps[idx] == "", np.char.add("fool", idx.astype(str)), stamps[idx]),
        "group": pop.group[idx],
        "threshold": thr,
    }
    methods = list(conf)
    out: dict[str, Any] = {"n_train": int(train.sum()), "n_test": int(test.sum())}
    for mix in ("clean", "natural", "paper"):
        sub = restrict([rep], MIXES[mix])
        out[mix] = {"aurc": bootstrap(sub, methods, metric("aurc"), draws=draws)}
        out[mix]["table_v"] = table_v(sub, methods, MIXES[mix])
    return out


def domain_shifts(
    *,
    pop: Any,
    scenes: np.ndarray,
    signals: dict,
    untrained: dict,
    right: np.ndarray,
    stamps: np.ndarray,
    draws: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Every shift of the module docstring: its sides and :func:`evaluate_shift`'s figures."""
    out = {}
    for name, (train, test, sides) in shift_splits(pop, scenes, stamps, seed).items():
        common = {"pop": pop, "signals": signals, "untrained": untrained, "right": right, "stamps": stamps}
        out[name] = {**sides, **evaluate_shift(**common, train=train, test=test, draws=draws)}
    return out
