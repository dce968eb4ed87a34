"""The paper's pair protocol: splits that never cut a pair (or a photo), repeats, and their summaries.

Universal-perturbation adversarial images (label 0, unfit) and their originals (label 1, fit); 50% of the
pairs train, the rest test, ten repeats. When originals are several views of a few photos, whole photos
are kept on one side (``split_by="photo"``), which keeps every pair together and also keeps
near-duplicate views out of the test half.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fitguard.detector import FIT_LABEL, UNFIT_LABEL
from fitguard.training.image_groups import ADVERSARIAL, DISTORTED, ORIGINALS, UNFIT_GROUPS, ImageGroup
from fitguard.training.metrics import auroc, detection_at_far
from fitguard.training.paper.features import GroupFeatures
from fitguard.training.paper.svm import DEFAULT_TARGET_FAR, fit_detector

REPEATS = 10
# What the evaluation compares (unfit scores: higher = more unfit) and at which clean false-alarm rates.
METHODS: tuple[str, ...] = ("detector", "detector_all", "svm_top5", "quality", "msp", "energy")
FARS: tuple[float, ...] = (0.05, 0.0857)  # 0.0857: the paper's detector passes 91.43% of clean originals
QUALITY_THRESHOLD = 0.3  # baseline-2: unfit when predicted MOS < 0.3
COVERAGES: tuple[float, ...] = (0.8, 0.9, 0.95)


def pair_splits(
    groups: np.ndarray, repeats: int = REPEATS, train_fraction: float = 0.5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Ten random halvings of the unique ``groups`` ids (pairs or photos): (train ids, test ids) each.

    Every row carrying one id lands on the same side, so a pair (or a photo's views) is never split.
    """
    ids = np.unique(np.asarray(groups))
    if len(ids) < 2:
        raise ValueError(f"need at least 2 pair groups to split, got {len(ids)}")
    rng = np.random.default_rng(seed)
    n_train = min(max(1, int(round(train_fraction * len(ids)))), len(ids) - 1)
    out = []
    for _ in range(repeats):
        perm = rng.permutation(ids)
        out.append((np.sort(perm[:n_train]), np.sort(perm[n_train:])))
    return out


def training_rows(
    originals: GroupFeatures,
    adversarial: GroupFeatures,
    pair_groups: np.ndarray,
    columns: slice | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack originals (fit) over their adversarial twins (unfit): features, labels, group ids."""
    x = np.concatenate([originals.features, adversarial.features])
    if columns is not None:
        x = x[:, columns]
    y = np.concatenate(
        [np.full(len(originals.quality), FIT_LABEL), np.full(len(adversarial.quality), UNFIT_LABEL)]
    )
    return x, y, np.concatenate([pair_groups, pair_groups])


def split_groups(originals: ImageGroup, split_by: str) -> np.ndarray:
    """Group id per original for the protocol: its photo (``photo``) or itself (``pair``)."""
    if split_by == "photo":
        return originals.sources.copy()
    if split_by == "pair":
        return originals.pairs.copy()
    raise ValueError(f"split_by must be 'photo' or 'pair', got {split_by!r}")


def run_protocol(
    originals: ImageGroup,
    orig_feats: GroupFeatures,
    adv_feats: GroupFeatures,
    repeats: int = REPEATS,
    seed: int = 0,
    split_by: str = "photo",
    target_far: float | None = DEFAULT_TARGET_FAR,
    columns: slice | None = None,
    grid: dict[str, list[float]] | None = None,
    progress: str | None = "detector protocol",
) -> list[dict[str, Any]]:
    """The paper's ten repeats: per repeat the fitted detector, the split and held-out adversarial results."""
    gid = split_groups(originals, split_by)
    splits = pair_splits(gid, repeats, 0.5, seed)
    out = []
    for train_ids, test_ids in tqdm(splits, desc=progress, disable=progress is None, leave=False):
        train = np.isin(gid, train_ids)
        test = ~train

        def rows(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            index = np.flatnonzero(mask)
            return training_rows(orig_feats.subset(index), adv_feats.subset(index), gid[mask], columns)

        x, y, g = rows(train)
        det = fit_detector(x, y, g, target_far, grid)
        xt, yt, _ = rows(test)
        fit = det.fit_verdict(xt)
        clean, adv = fit[yt == FIT_LABEL], fit[yt == UNFIT_LABEL]
        adv_top1 = adv_feats.top1[test]
        labels = originals.labels[test]
        dec = -det.pipeline.decision_function(xt)
        out.append(
            {
                "detector": det,
                "train_ids": train_ids,
                "test_ids": test_ids,
                "test_mask": test,
                "n_test_pairs": int(test.sum()),
                "adv_detection_rate": float(np.mean(~adv)),
                "clean_pass_rate": float(np.mean(clean)),
                "adv_accuracy_fit": float(np.mean(adv_top1[adv] == labels[adv]))
                if adv.any()
                else float("nan"),
                "auroc": auroc(dec[yt == FIT_LABEL], dec[yt == UNFIT_LABEL]),
            }
        )
    return out


def extra_ids(group: ImageGroup, split_by: str) -> np.ndarray:
    """Split ids for an extra unfit group: its source photo where it has one, else an id of its own."""
    own = -1_000_000 - np.arange(len(group))  # fooling images: each its own group, never a photo's
    ids = group.sources if split_by == "photo" else group.pairs
    return np.where(ids >= 0, ids, own)


def with_extra_unfit(
    x: np.ndarray, y: np.ndarray, g: np.ndarray, extra: list[tuple[ImageGroup, GroupFeatures]], split_by: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, gs = [x], [y], [g]
    for group, feats in extra:
        xs.append(feats.features)
        ys.append(np.full(len(group), UNFIT_LABEL))
        gs.append(extra_ids(group, split_by))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)


def mixed_held_out(
    *,
    x: np.ndarray,
    y: np.ndarray,
    g: np.ndarray,
    groups: dict[str, ImageGroup],
    feats: dict[str, GroupFeatures],
    extra: list[str],
    gid: np.ndarray,
    seed: int,
    target_far: float | None,
    split_by: str,
) -> dict[str, Any]:
    """One 50% split by split id: the mixed detector held out, beside quality alone and max softmax.

    ``at_threshold``: rates at the detector's own operating threshold. ``far_0.05``: detection rate of each
    method (detector score, quality, max softmax probability) at the same 5% false-alarm rate on the
    held-out originals, the comparison that says whether the detector earns its place.
    """
    ((train_ids, _),) = pair_splits(g, 1, 0.5, seed)
    train = np.isin(g, train_ids)
    det = fit_detector(x[train], y[train], g[train], target_far)
    names = [ORIGINALS, ADVERSARIAL, *extra]
    ids = {ORIGINALS: gid, ADVERSARIAL: gid, **{n: extra_ids(groups[n], split_by) for n in extra}}
    scores: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        f = feats[name].features[~np.isin(ids[name], train_ids)]
        scores[name] = {"detector": det.score(f), "quality": f[:, -1], "msp": f[:, 0]}  # higher = fitter
    out: dict[str, Any] = {"n": {n: int(len(scores[n]["quality"])) for n in names}}
    clean = scores[ORIGINALS]
    out["at_threshold"] = {"originals_passed_as_fit": float(np.mean(clean["detector"] >= 0))}
    out["at_threshold"].update({n: float(np.mean(scores[n]["detector"] < 0)) for n in names[1:]})
    far: dict[str, dict[str, float]] = {}
    for method in ("detector", "quality", "msp"):
        far[method] = {n: detection_at_far(clean[method], scores[n][method], 0.05) for n in names[1:]}
    out["far_0.05"] = far
    return out


def summarize(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation and count over repeats, ignoring NaN (a repeat with nothing to measure)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if not len(arr):
        return {"mean": float("nan"), "std": float("nan"), "n_repeats": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=0)), "n_repeats": int(len(arr))}


def collapse(node: Any) -> Any:
    """Lists over repeats -> {mean, std, n_repeats, per_repeat}; dicts recurse."""
    if isinstance(node, dict):
        return {k: collapse(v) for k, v in node.items()}
    return {**summarize(node), "per_repeat": [float(v) for v in node]}


class Accumulator:
    """Values per repeat under a path of keys: ``add(("detector", "distorted", "auroc"), 0.9)``."""

    def __init__(self) -> None:
        self.tree: dict[str, Any] = {}

    def add(self, path: tuple[str, ...], value: float) -> None:
        node = self.tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node.setdefault(path[-1], []).append(value)


def test_rows(
    name: str, group: ImageGroup, gid: np.ndarray, test_ids: np.ndarray, fool_test: np.ndarray | None = None
) -> np.ndarray:
    """Rows of ``group`` in a repeat's test half.

    Originals and adversarial images by their own split id, distorted images by their original's; for
    fooling images the ``fool_test`` mask (the half the all-groups detector did not train on), else all.
    """
    if name in (ORIGINALS, ADVERSARIAL):
        return np.flatnonzero(np.isin(gid, test_ids))
    if name == DISTORTED:
        return np.flatnonzero(np.isin(gid[group.pairs], test_ids))
    return np.arange(len(group)) if fool_test is None else np.flatnonzero(fool_test)


def fit_all_groups(
    groups: dict[str, ImageGroup],
    x: dict[str, np.ndarray],
    gid: np.ndarray,
    train_ids: np.ndarray,
    fool_test: dict[str, np.ndarray],
    target_far: float | None,
    unfit: tuple[str, ...] = UNFIT_GROUPS,
) -> Any:
    """A detector trained on the train half of the ``unfit`` groups (label 0) against train-half originals."""
    xs, ys, gs = [], [], []
    for g in [ORIGINALS, *[u for u in UNFIT_GROUPS if u in groups and u in unfit]]:
        if g in fool_test:
            rows = np.flatnonzero(~fool_test[g])
            ids = -1_000_000 - rows  # each fooling image is its own split group
        else:
            src = gid if g in (ORIGINALS, ADVERSARIAL) else gid[groups[g].pairs]
            rows = np.flatnonzero(np.isin(src, train_ids))
            ids = src[rows]
        xs.append(x[g][rows])
        ys.append(np.full(len(rows), FIT_LABEL if g == ORIGINALS else UNFIT_LABEL))
        gs.append(ids)
    return fit_detector(np.concatenate(xs), np.concatenate(ys), np.concatenate(gs), target_far)
