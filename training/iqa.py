"""``fitguard train iqa``: train the DTNIQ-f quality head on cached backbone features.

Steps: load a dataset (TID2013, KADID-10k, or synthetic distortions of reference photos labelled by a
full-reference metric), compute the frozen backbone's features of every patch once (cached on disk),
then train :class:`fitguard.quality.QualityHead` with cross-entropy over 70 score bins. ``--splits``
splits by reference image (repeated k-fold) measure SRCC/PLCC on held-out scenes; the head written to
``--out`` is then trained on all references. torch is imported inside functions only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.contract import DEFAULT_PATCHES, PATCHES_MODE, QUALITY_BINS, QUALITY_MODES, SHARED_MODE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadConfig:
    """Training settings of the quality head (the defaults are the ones measured in docs/iqa.md)."""

    hidden: int = 2048  # the paper's FC-2048 layers
    epochs: int = 12
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 1e-3
    dropout: float = 0.5
    input_dropout: float = 0.5  # of the standardised input features (see QualityHead)
    label_sigma: float = 4.0  # soft labels: Gaussian over bins, in bins; 0 = one-hot
    patience: int = 3
    val_fraction: float = 0.15  # of the training references, for early stopping


# --------------------------------------------------------------------------------------------------
# Labels, metrics, splits (numpy only)
# --------------------------------------------------------------------------------------------------


def score_to_bins(scores: np.ndarray, bins: int = QUALITY_BINS, sigma: float = 2.0) -> np.ndarray:
    """Scores in [0, 1] -> target distributions over bins 1..B ([N, B]).

    Bin j (1-based) stands for score (j - 1) / (B - 1), matching :func:`fitguard.quality.expected_quality`.
    ``sigma`` > 0 gives a Gaussian around the exact (fractional) position, so neighbouring bins are not
    counted as wholly wrong; ``sigma`` = 0 gives one-hot labels at the nearest bin.
    """
    pos = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0) * (bins - 1)
    j = np.arange(bins, dtype=np.float64)
    if sigma <= 0:
        out = np.zeros((len(pos), bins))
        out[np.arange(len(pos)), np.rint(pos).astype(int)] = 1.0
        return out.astype(np.float32)
    w = np.exp(-0.5 * ((j[None, :] - pos[:, None]) / sigma) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def correlations(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(SRCC, PLCC). PLCC is on the raw predictions, without the logistic fit some papers apply first."""
    from scipy.stats import pearsonr, spearmanr

    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if len(pred) < 3 or np.ptp(pred) == 0 or np.ptp(true) == 0:
        return float("nan"), float("nan")
    return float(spearmanr(pred, true)[0]), float(pearsonr(pred, true)[0])


# Names how :func:`reference_splits` draws splits; build stamps record it, so a new scheme retrains.
SPLIT_SCHEME = "repeated-kfold/1"


def reference_splits(
    references: np.ndarray, splits: int, test_fraction: float = 0.2, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``splits`` (train, test) index pairs; each reference lies wholly on one side.

    About ``test_fraction`` of the references (at least one) are held out per split, as in the usual
    80/20 protocol on TID2013. The splits are repeated k-fold over shuffled references (k = the
    number of references over those held out per split: 5 at 20%): within a repeat every reference is
    held out exactly once, so ten splits of ten photos test each photo twice. Independent random draws
    would not: with ten photos, ten draws of two held-out photos repeat a pair and skip some photos
    entirely, and the mean then rests on whichever scenes were drawn.
    """
    refs = np.unique(references)
    if len(refs) < 3:
        raise ValueError(f"need at least 3 reference images to split, got {len(refs)}")
    n_test = min(len(refs) - 2, max(1, int(round(test_fraction * len(refs)))))
    folds = max(2, len(refs) // n_test)
    rng = np.random.default_rng(seed)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    seen: set[frozenset[str]] = set()
    while len(out) < splits:
        for _ in range(100):  # a repeat whose folds all differ from earlier ones, where there is one
            parts = [frozenset(f) for f in np.array_split(rng.permutation(refs), folds)]
            if not seen & set(parts):
                break
        seen.update(parts)
        for fold in parts:
            test = np.isin(references, list(fold))
            out.append((np.flatnonzero(~test), np.flatnonzero(test)))
    return out[:splits]


# --------------------------------------------------------------------------------------------------
# Head training on features (torch)
# --------------------------------------------------------------------------------------------------


def _rows(features: np.ndarray, unique: np.ndarray, idx: np.ndarray, scores: np.ndarray):
    """Per-patch training rows of images ``idx``: duplicates of a patch within an image are dropped."""
    mask = unique[idx]
    x = features[idx][mask]
    y = np.repeat(scores[idx], mask.sum(axis=1))
    return x, y


def predict(head: Any, features: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Image scores: the mean over P patches of the head's expected quality (as the exported graph does)."""
    import torch

    from fitguard.quality import expected_quality

    n, p, d = features.shape
    flat = torch.from_numpy(np.ascontiguousarray(features.reshape(n * p, d)))
    out = []
    head.eval()
    with torch.inference_mode():
        for i in range(0, len(flat), batch):
            out.append(expected_quality(head(flat[i : i + batch])))
    return torch.cat(out).reshape(n, p).mean(1).numpy() if out else np.zeros(0)


def train_head(
    features: np.ndarray,
    unique: np.ndarray,
    scores: np.ndarray,
    references: np.ndarray,
    train_idx: np.ndarray,
    config: HeadConfig = HeadConfig(),
    seed: int = 0,
    val_groups: np.ndarray | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train a :class:`QualityHead` on images ``train_idx``, early-stopped on held-out training groups.

    The validation groups are the references by default. ``val_groups`` can name finer groups (the
    synthetic set's views): with eight training photos, holding one out for validation costs an eighth of
    the content and picks the epoch on one scene's noise (held-out SRCC 0.74 vs 0.80 measured).

    Returns the head (best validation SRCC, eval mode) and a log of the run.
    """
    import torch

    from fitguard.quality import QualityHead

    rng = np.random.default_rng(seed)
    by = references if val_groups is None else val_groups
    refs = np.unique(by[train_idx])
    n_val = (
        max(1, int(round(config.val_fraction * len(refs)))) if len(refs) > 2 and config.val_fraction else 0
    )
    val_refs = rng.choice(refs, size=n_val, replace=False) if n_val else np.array([], dtype=refs.dtype)
    is_val = np.isin(by[train_idx], val_refs)
    fit_idx, val_idx = train_idx[~is_val], train_idx[is_val]

    x, y = _rows(features, unique, fit_idx, scores)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    yt = torch.from_numpy(score_to_bins(y, QUALITY_BINS, config.label_sigma))

    torch.manual_seed(seed)
    head = QualityHead(
        features.shape[-1], hidden=config.hidden, dropout=config.dropout, input_dropout=config.input_dropout
    )
    head.standardize_with(xt)
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch, stale = -math.inf, None, 0, 0
    history = []
    for epoch in range(1, config.epochs + 1):
        head.train()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(order), config.batch_size):
            b = order[i : i + config.batch_size]
            loss = -(yt[b] * torch.log_softmax(head(xt[b]), dim=1)).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        if len(val_idx):
            srcc, _ = correlations(predict(head, features[val_idx]), scores[val_idx])
            score = -1.0 if math.isnan(srcc) else srcc
        else:
            score = -total  # no validation references: keep the lowest training loss
        history.append({"epoch": epoch, "loss": total / len(xt), "val_srcc": score if len(val_idx) else None})
        if score > best:
            best, best_epoch, stale = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    assert best_state is not None
    head.load_state_dict(best_state)
    head.eval()
    return head, {"best_epoch": best_epoch, "val_srcc": best if len(val_idx) else None, "history": history}


# --------------------------------------------------------------------------------------------------
# The whole run: data -> cached features -> split evaluation -> final head
# --------------------------------------------------------------------------------------------------


def train_iqa(
    backbone: str = "efficientnet_lite0",
    dataset: str = "synthetic",
    out: str | Path = "quality_head.pt",
    root: str | Path | None = None,
    photos: str | Path | None = None,
    patches: int = DEFAULT_PATCHES,
    splits: int = 10,
    seed: int = 0,
    weights: str | None = "default",
    cache_dir: str | Path | None = None,
    views: int | None = None,
    config: HeadConfig | None = None,
    device: str | None = None,
    progress: bool = True,
    quick: bool = False,
    quality_features: str = PATCHES_MODE,
) -> dict[str, Any]:
    """Train and evaluate a quality head; write the head, ``<out>.metrics.json`` and ``<out>.scatter.png``.

    ``splits`` random 80/20 splits by reference image give held-out SRCC/PLCC per split and their mean.
    The head written to ``out`` is then trained on all references for the median of the splits'
    early-stopped epoch counts (no references are left to stop on).

    ``config`` defaults to :class:`HeadConfig` with the paper's 2048-wide layers, except on the synthetic
    set, where a 512-wide head scores the same held-out SRCC in a quarter of the time (docs/iqa.md).
    ``quick`` trains a small synthetic set (6 views per photo, 2 splits) for tests that need some head.
    ``quality_features``: ``patches`` trains on the P patches of each image; ``shared`` on the classifier's
    centre crop, the features the classifier's pass gives the served quality step (``patches`` is then 1).

    Returns:
        The metrics written to ``<out>.metrics.json``.
    """
    import torch

    from fitguard.backbones import build_backbone
    from fitguard.quality import save_head
    from fitguard.training.features import default_cache_dir, patch_features
    from fitguard.training.iqa_data import SYNTHETIC_METRIC, SYNTHETIC_VIEWS, load_dataset

    if quality_features not in QUALITY_MODES:
        raise ValueError(f"unknown quality mode {quality_features!r}; choose from {', '.join(QUALITY_MODES)}")
    if quality_features == SHARED_MODE:
        patches = 1
    t0 = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if quick:
        views, splits = 6 if views is None else views, min(splits, 2)
    views = SYNTHETIC_VIEWS if views is None else views
    if config is None:
        config = HeadConfig(hidden=512) if dataset == "synthetic" else HeadConfig()
    items = load_dataset(dataset, root=root, photos=photos, views=views, seed=seed, progress=progress)
    t_data = time.perf_counter()
    net = build_backbone(backbone, weights)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    feats, unique = patch_features(
        [it.load for it in items],
        net,
        patches,
        cache,
        device=device,
        progress=progress,
        mode=quality_features,
    )
    t_feat = time.perf_counter()

    scores = np.array([it.score for it in items], dtype=np.float64)
    refs = np.array([it.reference for it in items])
    # Synthetic items are named "<photo>#<view>/<distortion>/<level>": validate on views (see train_head).
    views_of = np.array([it.name.split("/")[0] for it in items]) if dataset == "synthetic" else None
    per_split, epochs = [], []
    scatter_true, scatter_pred = [], []
    for k, (train_idx, test_idx) in enumerate(reference_splits(refs, splits, seed=seed)):
        head, info = train_head(
            feats, unique, scores, refs, train_idx, config, seed=seed * 1000 + k, val_groups=views_of
        )
        pred = predict(head, feats[test_idx])
        srcc, plcc = correlations(pred, scores[test_idx])
        test_refs = sorted(set(refs[test_idx].tolist()))
        per_split.append(
            {
                "split": k,
                "srcc": srcc,
                "plcc": plcc,
                "best_epoch": info["best_epoch"],
                "test_references": test_refs,
            }
        )
        epochs.append(info["best_epoch"])
        scatter_true.append(scores[test_idx])
        scatter_pred.append(pred)
        log.info(
            "split %d: SRCC %.4f PLCC %.4f (epoch %d, test %s)", k, srcc, plcc, info["best_epoch"], test_refs
        )
        if progress:
            print(
                f"split {k}: SRCC {srcc:.4f}  PLCC {plcc:.4f}  (epoch {info['best_epoch']}, test {test_refs})"
            )
    t_splits = time.perf_counter()

    final_epochs = int(np.median(epochs)) if epochs else config.epochs
    all_idx = np.arange(len(items))
    final_config = HeadConfig(**{**config.__dict__, "epochs": final_epochs, "val_fraction": 0.0})
    head, _ = train_head(feats, unique, scores, refs, all_idx, final_config, seed=seed)
    t_final = time.perf_counter()

    srccs = np.array([s["srcc"] for s in per_split], dtype=np.float64)
    plccs = np.array([s["plcc"] for s in per_split], dtype=np.float64)
    metrics: dict[str, Any] = {
        "dataset": dataset,
        "backbone": backbone,
        "weights_id": net.weights_id,
        "images": len(items),
        "references": int(len(np.unique(refs))),
        "patches": patches,
        "quality_features": quality_features,
        "splits": per_split,
        "split_scheme": SPLIT_SCHEME,
        "srcc_mean": float(np.nanmean(srccs)) if len(srccs) else None,
        "srcc_std": float(np.nanstd(srccs)) if len(srccs) else None,
        "plcc_mean": float(np.nanmean(plccs)) if len(plccs) else None,
        "plcc_std": float(np.nanstd(plccs)) if len(plccs) else None,
        "final_head": f"trained on all {len(np.unique(refs))} references for {final_epochs} epochs",
        "label": f"{SYNTHETIC_METRIC} against the reference view" if dataset == "synthetic" else ("mos/7" if dataset == "tid2013" else "(dmos-1)/4"),
        "score_range": [0.0, 1.0],
        "higher_is_better": True,
        "head_config": config.__dict__,
        "args": {
            "backbone": backbone, "dataset": dataset, "root": str(root) if root else None,
            "photos": str(photos) if photos else None, "patches": patches, "splits": splits, "seed": seed,
            "weights": weights, "views": views if dataset == "synthetic" else None, "quick": quick,
        },
        "seconds": {
            "data": round(t_data - t0, 2), "features": round(t_feat - t_data, 2),
            "splits": round(t_splits - t_feat, 2), "final": round(t_final - t_splits, 2),
            "total": round(t_final - t0, 2),
        },
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    save_head(out, head, net, meta=metrics, mode=quality_features)
    metrics_path = Path(f"{out}.metrics.json")
    metrics_path.write_text(json.dumps(metrics, indent=2))
    if scatter_true:
        scatter_plot(
            np.concatenate(scatter_true), np.concatenate(scatter_pred), Path(f"{out}.scatter.png"), metrics
        )
    return metrics


def scatter_plot(true: np.ndarray, pred: np.ndarray, path: Path, metrics: dict[str, Any]) -> None:
    """Predicted vs true score of every held-out image over all splits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(true, pred, s=4, alpha=0.35, edgecolors="none")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="true score", ylabel="predicted score")
    ax.set_title(
        f"{metrics['backbone']} on {metrics['dataset']}: held-out references, {len(metrics['splits'])} splits\n"
        f"SRCC {metrics['srcc_mean']:.3f}  PLCC {metrics['plcc_mean']:.3f}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone", default="efficientnet_lite0", help="backbone name (default: %(default)s)"
    )
    parser.add_argument("--dataset", choices=("tid2013", "kadid10k", "synthetic"), default="synthetic")
    parser.add_argument("--root", help="dataset folder in its published layout (tid2013, kadid10k)")
    parser.add_argument(
        "--photos", help="synthetic: folder of reference photos (default: package-shipped photos)"
    )
    parser.add_argument("--out", required=True, help="quality-head file to write")
    parser.add_argument(
        "--patches", type=int, default=DEFAULT_PATCHES, help="IQA patches per image (%(default)s)"
    )
    parser.add_argument(
        "--splits", type=int, default=10, help="splits by reference, repeated k-fold (%(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quality-features",
        choices=QUALITY_MODES,
        default=PATCHES_MODE,
        help="what the head reads: P patches, or the classifier's centre crop (shared; as served by "
        "fitguard export --quality-features shared)",
    )
    parser.add_argument(
        "--weights", default="default", help="backbone weights: default, imagenet, a path, random"
    )
    parser.add_argument(
        "--cache-dir", help="feature cache (default: $FITGUARD_CACHE/features or ~/.cache/fitguard)"
    )
    parser.add_argument("--views", type=int, help="synthetic: views per photo")
    parser.add_argument("--epochs", type=int, default=HeadConfig.epochs, help="maximum epochs (%(default)s)")
    parser.add_argument(
        "--hidden", type=int, help="head width (default: 2048 as in the paper; 512 on synthetic)"
    )
    parser.add_argument("--device", help="torch device for features (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    hidden = args.hidden or (512 if args.dataset == "synthetic" else 2048)
    config = HeadConfig(hidden=hidden, epochs=args.epochs)
    metrics = train_iqa(
        backbone=args.backbone, dataset=args.dataset, out=args.out, root=args.root, photos=args.photos,
        patches=args.patches, splits=args.splits, seed=args.seed, weights=args.weights,
        cache_dir=args.cache_dir, views=args.views, config=config, device=args.device,
        quality_features=args.quality_features,
    )  # fmt: skip
    print(
        f"{metrics['backbone']} on {metrics['dataset']} ({metrics['images']} images, {metrics['references']} "
        f"references): mean SRCC {metrics['srcc_mean']:.4f}, mean PLCC {metrics['plcc_mean']:.4f} over "
        f"{len(metrics['splits'])} splits; {metrics['seconds']['total']:.0f} s"
    )
    print(f"wrote {args.out}, {args.out}.metrics.json, {args.out}.scatter.png")
    return 0
