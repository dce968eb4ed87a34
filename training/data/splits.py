"""Group-respecting splits: every item of one group (stamp, scene, reference) lands on one side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fitguard.training.data.items import Item


def group_split(
    items: Sequence[Item], test_fraction: float = 0.25, seed: int = 0
) -> tuple[list[Item], list[Item]]:
    """(train, test) with a seeded share of the groups (at least one, never all) held out whole."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    groups = sorted({it.group for it in items})
    if len(groups) < 2:
        raise ValueError(f"a group-respecting split needs at least 2 groups, got {len(groups)}")
    count = min(len(groups) - 1, max(1, round(test_fraction * len(groups))))
    held = set(np.random.default_rng(seed).permutation(groups)[:count].tolist())
    return [it for it in items if it.group not in held], [it for it in items if it.group in held]


def group_folds(items: Sequence[Item], folds: int = 5, seed: int = 0) -> list[tuple[list[Item], list[Item]]]:
    """K (train, test) pairs: the groups dealt into ``folds`` seeded folds, each held out once."""
    groups = sorted({it.group for it in items})
    if not 2 <= folds <= len(groups):
        raise ValueError(f"need 2 <= folds <= {len(groups)} groups, got {folds}")
    order = np.random.default_rng(seed).permutation(groups).tolist()
    fold_of = {g: i % folds for i, g in enumerate(order)}
    return [
        ([it for it in items if fold_of[it.group] != k], [it for it in items if fold_of[it.group] == k])
        for k in range(folds)
    ]
