"""What a quality head's training writes: the head, its metrics file and the figures of its evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fitguard.training.data.distortions import LEVELS
from fitguard.training.quality.evaluate import Labels


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scatter_plot(true: np.ndarray, pred: np.ndarray, path: Path, metrics: dict[str, Any]) -> None:
    """Predicted vs true score of every held-out image over all splits."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(true, pred, s=4, alpha=0.35, edgecolors="none")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="true score", ylabel="predicted score")
    ax.set_title(
        f"{metrics['backbone']} on {metrics['dataset']}: held-out references, "
        f"{len(metrics['splits'])} splits\n"
        f"SRCC {metrics['srcc_mean']:.3f} ± {metrics['srcc_std']:.3f}  "
        f"PLCC {metrics['plcc_mean']:.3f} ± {metrics['plcc_std']:.3f}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _level_means(values: np.ndarray, labels: Labels, idx: np.ndarray, kind: str) -> list[float]:
    """Mean of ``values`` over ``idx`` at level 0 (clean) and each level of ``kind``."""
    out = []
    for level in (0, *LEVELS):
        sel = idx[(labels.levels[idx] == level) & ((labels.kinds[idx] == kind) | (level == 0))]
        out.append(float(np.nanmean(values[sel])) if len(sel) else float("nan"))
    return out


def level_plot(
    labels: Labels, held_out: list[tuple[np.ndarray, np.ndarray]], path: Path, metrics: dict[str, Any]
) -> None:
    """Quality by level (0 = clean) per kind on held-out scenes: predicted (left) and the label (right)."""
    plt = _pyplot()
    pred = np.full(len(labels.scores), np.nan)
    counts = np.zeros(len(labels.scores))
    for idx, p in held_out:  # an image held out in several splits: the mean of its predictions
        pred[idx] = np.where(counts[idx] > 0, pred[idx], 0.0) + p
        counts[idx] += 1
    pred = pred / np.maximum(counts, 1)
    idx = np.flatnonzero(counts > 0)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), dpi=100, sharey=True)
    cmap = plt.get_cmap("tab20")
    for k, kind in enumerate(labels.distorted_kinds()):
        for ax, values in zip(axes, (pred, labels.scores), strict=True):
            means = _level_means(values, labels, idx, kind)
            ax.plot(range(len(LEVELS) + 1), means, marker="o", ms=3, color=cmap(k % 20), label=kind)
    ordering = metrics.get("ordering", {}).get("mean", float("nan"))
    axes[0].set_title(f"predicted, held-out scenes (ordering Spearman {ordering:.3f})", fontsize=9)
    axes[1].set_title("label (full-reference metric)", fontsize=9)
    for ax in axes:
        ax.set(xlabel="level (0 = clean)", ylim=(0, 1.02), xticks=range(len(LEVELS) + 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean quality")
    axes[1].legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(
    out: Path, head: Any, net: Any, metrics: dict[str, Any], labels: Labels, held_out: list
) -> None:
    """The head (metrics in its meta), ``<out>.metrics.json``, ``<out>.scatter.png`` and
    ``<out>.levels.png``."""
    from fitguard.quality import save_head

    text = json.dumps(metrics, indent=2)
    # The head file keeps plain types only (it loads with torch's weights-only unpickler).
    save_head(out, head, net, meta=json.loads(text), mode=metrics.get("quality_features", "patches"))
    Path(f"{out}.metrics.json").write_text(text)
    if held_out:
        true = np.concatenate([labels.scores[idx] for idx, _ in held_out])
        scatter_plot(true, np.concatenate([p for _, p in held_out]), Path(f"{out}.scatter.png"), metrics)
        level_plot(labels, held_out, Path(f"{out}.levels.png"), metrics)
