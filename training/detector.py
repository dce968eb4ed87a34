"""``fitguard train detector``: image features, the paper's pair protocol, and the SVM detector file.

Features of an image are computed exactly as the server computes them: the canvas goes through
:func:`fitguard.preprocess.classifier_crop` (backbone preset) and :func:`fitguard.preprocess.iqa_patches`
(P patches), then the torch classifier (probabilities) and DTNIQ-f (quality), and
:func:`fitguard.detector.detector_features` makes the 6-d vector [top-5 sorted probabilities, quality].

Training follows the paper: universal-perturbation adversarial images (label 0, unfit) and their
originals (label 1, fit); 50% of the pairs train, the rest test, a pair is never split, ten repeats.
When originals are several views of a few photos, whole photos are kept on one side (``split_by =
"photo"``), which keeps every pair together and also keeps near-duplicate views out of the test half.

The pipeline is ``StandardScaler`` + RBF ``SVC``; C and gamma are chosen by grouped cross-validation
(AUROC) on the training pairs. Operating threshold: the out-of-fold decision values of the training
originals are collected with the chosen C and gamma, and the threshold is their ``target_far``
quantile, so that share of clean training images would be flagged unfit (``target_far=None`` keeps
the SVM's own boundary, threshold 0). The shipped file is fitted on all pairs; its meta records the
ten-repeat held-out results that estimate how it performs.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from tqdm.auto import tqdm

from fitguard.contract import DEFAULT_PATCHES, TOP_K
from fitguard.detector import FIT_LABEL, UNFIT_LABEL, Detector, detector_features, save_detector
from fitguard.training.groups import GroupConfig, ImageGroup, default_cache_dir, stable_key

if TYPE_CHECKING:
    from fitguard.backbones import Backbone
    from fitguard.quality import QualityModel

log = logging.getLogger(__name__)

# Features are standardised, so gamma is on the scale of 1 / (6 features). The smooth end of the grid
# (gamma 0.01, C 0.1) matters: with few photos a narrow kernel passes what lies far from every training
# image; it lifted the shipped detector's held-out distorted detection at 5% false alarms from 0.90 to
# 0.96 (5 splits). The quality weight scales the standardised quality against the five probabilities:
# clean photos differ in confidence as much as degraded ones do, and an RBF kernel weighs every feature
# alike unless told otherwise (`fitguard evaluate`, distorted images at 5% false alarms: 0.895 -> 0.967).
DEFAULT_GRID: dict[str, list[float]] = {
    "svc__C": [0.1, 1.0, 10.0, 100.0],
    "svc__gamma": [0.01, 0.05, 0.2, 0.8],
    "weight__quality": [1.0, 2.0, 4.0, 8.0],
}
HYPERPARAMETERS: tuple[str, ...] = ("C", "gamma", "quality_weight", "cv_auroc")  # what a fit records
DEFAULT_TARGET_FAR = 0.05
REPEATS = 10


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------


@dataclass
class GroupFeatures:
    """What the served models say about each image of a group: logits [N, 1000] and quality [N]."""

    logits: np.ndarray
    quality: np.ndarray

    @property
    def probs(self) -> np.ndarray:
        z = self.logits - self.logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    @property
    def top1(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def features(self) -> np.ndarray:
        return detector_features(self.probs, self.quality)

    def subset(self, index: np.ndarray) -> GroupFeatures:
        return GroupFeatures(self.logits[index], self.quality[index])


@dataclass
class Models:
    """The torch models features come from, and an id of everything that changes their outputs."""

    backbone: Backbone
    quality: QualityModel
    head_info: dict[str, Any]
    key: str


def load_models(backbone: str, head: str | Path, weights: str | None = "default") -> Models:
    """Backbone by name and the DTNIQ-f head file, ready for feature extraction (eval mode)."""
    from fitguard.backbones import build_backbone
    from fitguard.quality import QualityModel, load_head

    bb = build_backbone(backbone, weights)
    head_module, info = load_head(head, bb)
    key = stable_key("models/1", bb.name, bb.weights_id, Path(head).read_bytes().__len__(),
                     stable_key(np.frombuffer(Path(head).read_bytes(), np.uint8)))  # fmt: skip
    return Models(bb, QualityModel(bb, head_module).eval(), info, key)


def compute_features(
    models: Models,
    group: ImageGroup,
    patches: int = DEFAULT_PATCHES,
    batch_size: int = 8,
    cache: Path | None = None,
) -> GroupFeatures:
    """Classifier logits and quality for every canvas of ``group``, through serving preprocessing."""
    import torch

    from fitguard.preprocess import classifier_crop, iqa_patches
    from fitguard.training.groups import predict_logits

    key = stable_key("features/1", models.key, patches, stable_key(group.images))
    path = None if cache is None else Path(cache) / "detector_features" / f"{group.name}-{key}.npz"
    if path is not None and path.exists():
        with np.load(path) as z:
            return GroupFeatures(z["logits"], z["quality"])
    preset = models.backbone.preset
    # classifier_crop on a canvas is the centre crop predict_logits takes; asserted once here.
    if len(group):
        crop = classifier_crop(group.images[0], preset)
        o = (group.images.shape[1] - preset.crop) // 2
        assert np.array_equal(
            crop, group.images[0, o : o + preset.crop, o : o + preset.crop].transpose(2, 0, 1)
        )
    logits = predict_logits(models.backbone, group.images, desc=f"{group.name}: classifier")
    quality = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(group), batch_size), desc=f"{group.name}: quality", leave=False):
            batch = np.stack([iqa_patches(img, patches) for img in group.images[i : i + batch_size]])
            quality.append(models.quality(torch.from_numpy(batch)).reshape(-1).float().numpy())
    feats = GroupFeatures(logits.astype(np.float32), np.concatenate(quality).astype(np.float32))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, logits=feats.logits, quality=feats.quality)
    return feats


# --------------------------------------------------------------------------------------------------
# Pair protocol and SVM
# --------------------------------------------------------------------------------------------------


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


class QualityWeight(TransformerMixin, BaseEstimator):
    """Multiplies the last (quality) column of standardised features by ``quality``; a grid parameter.

    Only used while searching: :func:`bake_quality_weight` folds the weight into the scaler, so the
    detector file holds a plain scaler + SVC that skl2onnx converts.
    """

    def __init__(self, quality: float = 1.0) -> None:
        self.quality = quality

    def fit(self, x: np.ndarray, y: Any = None) -> QualityWeight:
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        out = np.array(x, dtype=np.float64, copy=True)
        out[:, -1] *= self.quality
        return out


def make_pipeline(c: float = 1.0, gamma: float | str = "scale", quality: float = 1.0) -> Any:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return Pipeline([
        ("scaler", StandardScaler()),
        ("weight", QualityWeight(quality)),
        ("svc", SVC(kernel="rbf", C=c, gamma=gamma)),
    ])  # fmt: skip


def bake_quality_weight(pipeline: Any) -> Any:
    """The same decision function as scaler + weight + SVC, as a plain scaler + SVC.

    ``w * (x - mean) / scale == (x - mean) / (scale / w)``: the weight moves into the scaler's last scale.
    """
    import copy

    from sklearn.pipeline import Pipeline

    steps = dict(pipeline.steps)
    scaler = copy.deepcopy(steps["scaler"])
    scaler.scale_ = scaler.scale_.copy()
    scaler.scale_[-1] /= steps["weight"].quality
    return Pipeline([("scaler", scaler), ("svc", steps["svc"])])


def fit_detector(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    target_far: float | None = DEFAULT_TARGET_FAR,
    grid: dict[str, list[float]] | None = None,
    folds: int = 5,
) -> Detector:
    """Scaler + RBF SVC with (C, gamma) by grouped CV, and the operating threshold (see module doc)."""
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_predict

    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    cv = GroupKFold(n_splits=max(2, min(folds, n_groups)))
    grid = dict(grid or DEFAULT_GRID)
    if x.shape[1] != TOP_K + 1:  # no quality column (the top-5-only baseline): nothing to weigh
        grid.pop("weight__quality", None)
    search = GridSearchCV(make_pipeline(), grid, scoring="roc_auc", cv=cv, n_jobs=1, refit=True)
    search.fit(x, y, groups=groups)
    threshold = 0.0
    if target_far is not None:
        oof = cross_val_predict(clone(search.best_estimator_), x, y, groups=groups, cv=cv,
                                method="decision_function")  # fmt: skip
        threshold = float(np.quantile(oof[y == FIT_LABEL], target_far))
    meta = {
        "C": float(search.best_params_["svc__C"]),
        "gamma": float(search.best_params_["svc__gamma"]),
        "quality_weight": float(search.best_params_.get("weight__quality", 1.0)),
        "cv_auroc": float(search.best_score_),
        "target_far": target_far,
        "threshold_rule": "quantile of out-of-fold training-original scores" if target_far is not None
        else "SVM boundary (0)",
        "n_train": int(len(y)),
        "n_train_groups": int(n_groups),
    }  # fmt: skip
    return Detector(bake_quality_weight(search.best_estimator_), threshold, meta)


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


def auroc(clean_scores: np.ndarray, unfit_scores: np.ndarray) -> float:
    """AUROC of an unfit score (higher = more unfit) separating unfit from clean images."""
    from sklearn.metrics import roc_auc_score

    y = np.concatenate([np.zeros(len(clean_scores)), np.ones(len(unfit_scores))])
    return float(roc_auc_score(y, np.concatenate([clean_scores, unfit_scores])))


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
    """The paper's ten repeats: per repeat the fitted detector, the split, and held-out adversarial results."""
    gid = split_groups(originals, split_by)
    out = []
    for train_ids, test_ids in tqdm(pair_splits(gid, repeats, 0.5, seed), desc=progress, disable=progress is None,
                                    leave=False):  # fmt: skip
        train = np.isin(gid, train_ids)
        test = ~train
        x, y, g = training_rows(orig_feats.subset(np.flatnonzero(train)), adv_feats.subset(np.flatnonzero(train)),
                                gid[train], columns)  # fmt: skip
        det = fit_detector(x, y, g, target_far, grid)
        xt, yt, _ = training_rows(orig_feats.subset(np.flatnonzero(test)), adv_feats.subset(np.flatnonzero(test)),
                                  gid[test], columns)  # fmt: skip
        fit = det.fit_verdict(xt)
        clean, adv = fit[yt == FIT_LABEL], fit[yt == UNFIT_LABEL]
        adv_top1 = adv_feats.top1[test]
        labels = originals.labels[test]
        dec = -det.pipeline.decision_function(xt)
        out.append({
            "detector": det,
            "train_ids": train_ids,
            "test_ids": test_ids,
            "test_mask": test,
            "n_test_pairs": int(test.sum()),
            "adv_detection_rate": float(np.mean(~adv)),
            "clean_pass_rate": float(np.mean(clean)),
            "adv_accuracy_fit": float(np.mean(adv_top1[adv] == labels[adv])) if adv.any() else float("nan"),
            "auroc": auroc(dec[yt == FIT_LABEL], dec[yt == UNFIT_LABEL]),
        })  # fmt: skip
    return out


def _extra_ids(group: ImageGroup, split_by: str) -> np.ndarray:
    """Split ids for an extra unfit group: its source photo where it has one, else an id of its own."""
    own = -1_000_000 - np.arange(len(group))  # fooling images: each its own group, never a photo's
    ids = group.sources if split_by == "photo" else group.pairs
    return np.where(ids >= 0, ids, own)


def _with_extra_unfit(
    x: np.ndarray, y: np.ndarray, g: np.ndarray, extra: list[tuple[ImageGroup, GroupFeatures]], split_by: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, gs = [x], [y], [g]
    for group, feats in extra:
        xs.append(feats.features)
        ys.append(np.full(len(group), UNFIT_LABEL))
        gs.append(_extra_ids(group, split_by))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)


def _mixed_held_out(
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
    names = ["originals", "adversarial", *extra]
    ids = {"originals": gid, "adversarial": gid, **{n: _extra_ids(groups[n], split_by) for n in extra}}
    scores: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        f = feats[name].features[~np.isin(ids[name], train_ids)]
        scores[name] = {"detector": det.score(f), "quality": f[:, -1], "msp": f[:, 0]}  # higher = fitter
    out: dict[str, Any] = {"n": {n: int(len(scores[n]["quality"])) for n in names}}
    out["at_threshold"] = {"originals_passed_as_fit": float(np.mean(scores["originals"]["detector"] >= 0))}
    out["at_threshold"].update({n: float(np.mean(scores[n]["detector"] < 0)) for n in names[1:]})
    far: dict[str, dict[str, float]] = {}
    for method in ("detector", "quality", "msp"):
        thr = np.quantile(scores["originals"][method], 0.05)
        far[method] = {n: float(np.mean(scores[n][method] < thr)) for n in names[1:]}
    out["far_0.05"] = far
    return out


def summarize(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if not len(arr):
        return {"mean": float("nan"), "std": float("nan"), "n_repeats": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=0)), "n_repeats": int(len(arr))}


# --------------------------------------------------------------------------------------------------
# Library entry point and CLI
# --------------------------------------------------------------------------------------------------


def prepare_training_data(
    models: Models,
    images: str | Path | None,
    config: GroupConfig,
    patches: int,
    cache: Path | None,
    names: tuple[str, ...] = ("originals", "adversarial"),
) -> tuple[dict[str, ImageGroup], dict[str, GroupFeatures]]:
    from fitguard.training.groups import build_groups

    groups = build_groups(models.backbone, images, names, config, cache)
    feats = {n: compute_features(models, g, patches, cache=cache) for n, g in groups.items()}
    return groups, feats


def train_detector(
    backbone: str,
    head: str | Path,
    out: str | Path,
    images: str | Path | None = None,
    weights: str | None = "default",
    patches: int = DEFAULT_PATCHES,
    target_far: float | None = DEFAULT_TARGET_FAR,
    repeats: int = REPEATS,
    split_by: str = "photo",
    seed: int = 0,
    cache: str | Path | None = None,
    config: GroupConfig | None = None,
    unfit_groups: tuple[str, ...] = ("adversarial",),
) -> dict[str, Any]:
    """Build the groups, run the ten-repeat protocol, fit on all pairs, write ``out`` and ``out``.json.

    ``unfit_groups`` names the groups the shipped detector learns as unfit. The paper uses adversarial
    images alone (the default); adding ``distorted`` and the fooling groups makes a detector that also
    refuses what it was never shown in the paper's protocol. The ten-repeat protocol always runs on the
    adversarial pairs; with more groups, one extra photo-level split measures the mixed detector held out.

    Returns:
        The summary written beside the detector (arguments, sizes, fooling rate, held-out results).
    """
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.perf_counter()
    config = config or GroupConfig(seed=seed)
    cache_dir = Path(cache) if cache is not None else default_cache_dir()
    models = load_models(backbone, head, weights)
    extra = [n for n in unfit_groups if n != "adversarial"]
    names = ("originals", "adversarial", *extra)  # one pass: the extra groups derive from the same originals
    groups, feats = prepare_training_data(models, images, config, patches, cache_dir, names)
    originals, adversarial = groups["originals"], groups["adversarial"]
    t_data = time.perf_counter() - t0
    runs = run_protocol(
        originals, feats["originals"], feats["adversarial"], repeats, seed, split_by, target_far
    )
    gid = split_groups(originals, split_by)
    x, y, g = training_rows(feats["originals"], feats["adversarial"], gid)
    if "adversarial" not in unfit_groups:  # originals alone as the fit class
        x, y, g = x[y == FIT_LABEL], y[y == FIT_LABEL], g[y == FIT_LABEL]
    mixed_held_out = None
    if extra:
        x, y, g = _with_extra_unfit(x, y, g, [(groups[n], feats[n]) for n in extra], split_by)
        mixed_held_out = _mixed_held_out(x, y, g, groups, feats, extra, gid, seed, target_far, split_by)
    det = fit_detector(x, y, g, target_far)
    held_out = {k: summarize([r[k] for r in runs])
                for k in ("adv_detection_rate", "clean_pass_rate", "adv_accuracy_fit", "auroc")}  # fmt: skip
    summary = {
        "args": {
            "backbone": backbone, "iqa_head": str(head), "images": None if images is None else str(images),
            "weights": weights, "patches": patches, "target_far": target_far, "repeats": repeats,
            "split_by": split_by, "seed": seed, "groups": asdict(config),
        },
        "weights_id": models.backbone.weights_id,
        "features": f"top-{TOP_K} sorted probabilities + quality",
        "originals": originals.meta,
        "adversarial": adversarial.meta,
        "n_pairs": len(originals),
        "hyperparameters": {k: det.meta[k] for k in HYPERPARAMETERS},
        "threshold": det.threshold,
        "held_out": held_out,
        "unfit_groups": list(unfit_groups),
        "mixed_held_out": mixed_held_out,
        "seconds": {"data": round(t_data, 1), "total": round(time.perf_counter() - t0, 1)},
    }  # fmt: skip
    det.meta.update({
        "backbone": backbone, "weights_id": models.backbone.weights_id, "patches": patches, "split_by": split_by,
        "repeats": repeats, "seed": seed, "head_key": models.key, "held_out": held_out,
        "fooling_rate": adversarial.meta.get("fooling_rate"), "unfit_groups": list(unfit_groups),
        "mixed_held_out": mixed_held_out,
    })  # fmt: skip
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_detector(out, det)
    out.with_name(out.name + ".json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", required=True, help="resnet152, efficientnet_lite0 or tiny")
    parser.add_argument("--iqa-head", required=True, help="quality head file (fitguard train iqa)")
    parser.add_argument(
        "--out", required=True, help="detector file to write (a .json summary goes beside it)"
    )
    parser.add_argument("--images", default=None,
                        help="ImageNet-style labelled folder (val.txt/labels.txt or <wnid>/ folders) or any "
                             "photo folder; default: the package-shipped photos")  # fmt: skip
    parser.add_argument("--labels", default=None, help="labels file: '<file> <index or wnid>' per line")
    parser.add_argument(
        "--limit", type=int, default=None, help="use a seeded subset of this many labelled images"
    )
    parser.add_argument("--weights", default="default", help="backbone weights (see fitguard.backbones)")
    parser.add_argument(
        "--patches", type=int, default=DEFAULT_PATCHES, help="IQA patches per image (as served)"
    )
    parser.add_argument(
        "--target-far",
        type=float,
        default=DEFAULT_TARGET_FAR,
        help="share of clean training images the threshold may flag; negative: SVM boundary",
    )
    parser.add_argument("--views", type=int, default=GroupConfig.views, help="views per unlabelled photo")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="protocol repeats")
    parser.add_argument(
        "--split-by",
        choices=("photo", "pair"),
        default="photo",
        help="keep whole photos (all their views) or single pairs on one side of a split",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--unfit-groups",
        default="adversarial",
        help="comma-separated groups learnt as unfit: adversarial (the paper), distorted, fool_gd, fool_ev",
    )
    parser.add_argument(
        "--cache", default=None, help="cache folder (default $FITGUARD_CACHE or ~/.cache/fitguard)"
    )


def config_from_args(args: argparse.Namespace) -> GroupConfig:
    return GroupConfig(views=args.views, labels_file=args.labels, limit=args.limit, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = train_detector(
        args.backbone, args.iqa_head, args.out, args.images, args.weights, args.patches,
        None if args.target_far < 0 else args.target_far, args.repeats, args.split_by, args.seed, args.cache,
        config_from_args(args), tuple(n.strip() for n in args.unfit_groups.split(",") if n.strip()),
    )  # fmt: skip
    h = summary["held_out"]
    print(
        f"wrote {args.out}: {summary['n_pairs']} pairs, UAP fooling rate {summary['adversarial']['fooling_rate']:.3f}, "
        f"held-out over {args.repeats} repeats: adversarial detection {h['adv_detection_rate']['mean']:.3f} "
        f"+- {h['adv_detection_rate']['std']:.3f}, clean passed {h['clean_pass_rate']['mean']:.3f}, "
        f"AUROC {h['auroc']['mean']:.3f}; {summary['seconds']['total']:.0f} s"
    )
    return 0
