"""The DTNIQ-f head and its training on cached features: soft bin labels, early stopping, prediction.

torch is imported inside functions only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fitguard.contract import QUALITY_BINS
from fitguard.training.quality.evaluate import Fit, Labels, correlations


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


def default_head_config(dataset: str) -> HeadConfig:
    """The paper's 2048-wide head, except on the synthetic sets, where 512 scores the same held-out SRCC
    in a quarter of the time (docs/iqa.md)."""
    from fitguard.training.quality.data import SYNTHETIC_SETS

    return HeadConfig(hidden=512) if dataset in SYNTHETIC_SETS else HeadConfig()


# --------------------------------------------------------------------------------------------------
# Labels (numpy only)
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


def _validation_split(
    groups: np.ndarray, train_idx: np.ndarray, config: HeadConfig, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices: ``val_fraction`` of the training groups (at least one) validate."""
    refs = np.unique(groups[train_idx])
    n_val = (
        max(1, int(round(config.val_fraction * len(refs)))) if len(refs) > 2 and config.val_fraction else 0
    )
    val = np.random.default_rng(seed).choice(refs, size=n_val, replace=False) if n_val else refs[:0]
    is_val = np.isin(groups[train_idx], val)
    return train_idx[~is_val], train_idx[is_val]


def _epoch(head: Any, opt: Any, xt: Any, yt: Any, order: Any, batch_size: int) -> float:
    """One pass of cross-entropy against the soft targets; returns the summed loss."""
    import torch

    head.train()
    total = 0.0
    for i in range(0, len(order), batch_size):
        b = order[i : i + batch_size]
        loss = -(yt[b] * torch.log_softmax(head(xt[b]), dim=1)).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(b)
    return total


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
    the content and picks the epoch on one scene's noise (docs/iqa.md, Head training).

    Returns the head (best validation SRCC, eval mode) and a log of the run.
    """
    import torch

    from fitguard.quality import QualityHead

    fit_idx, val_idx = _validation_split(
        references if val_groups is None else val_groups, train_idx, config, seed
    )
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
        total = _epoch(head, opt, xt, yt, torch.randperm(len(xt), generator=gen), config.batch_size)
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
# The head in the evaluation protocol
# --------------------------------------------------------------------------------------------------


def head_fit(
    features: np.ndarray,
    unique: np.ndarray,
    labels: Labels,
    config: HeadConfig,
    seed: int = 0,
    val_groups: np.ndarray | None = None,
) -> Fit:
    """The head as a :data:`~fitguard.training.quality.evaluate.Fit`: trains on the images given."""

    def fit(train_idx: np.ndarray, split: int):
        head, info = train_head(
            features,
            unique,
            labels.scores,
            labels.references,
            train_idx,
            config,
            seed=seed * 1000 + split,
            val_groups=val_groups,
        )
        return (lambda idx: predict(head, features[idx])), {"best_epoch": info["best_epoch"]}

    return fit
