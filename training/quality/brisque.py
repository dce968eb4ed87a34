"""BRISQUE (Mittal, Moorthy & Bovik, IEEE TIP 2012): the classical no-reference baseline.

Features: the 36 natural-scene statistics of the paper, at two scales (the image, then half size): a
generalised-Gaussian fit (shape, variance) of the mean-subtracted, contrast-normalised (MSCN) luminance,
and asymmetric generalised-Gaussian fits (shape, mean, left and right variance) of the products of
neighbouring MSCN coefficients in four directions. They follow piq's implementation (Gaussian window 7 x 7,
sigma 7/6, zero padding, circular neighbours, moment matching on a 0.001 grid of shapes), which the
tests check against, in numpy/scipy: piq's is far slower on a CPU (docs/iqa.md), and its ``brisque()``
scores with an SVR whose weights it downloads. Here the SVR (RBF kernel, as in the paper) is fitted on
the training scenes of each split instead, so the baseline learns from exactly the labels and scenes
the learned head learns from, offline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from scipy.special import gammaln as _lgamma

from fitguard.training.quality.evaluate import Labels, correlations, ladders, scene_protocol

BRISQUE_FEATURES = 36
# SVR settings for scores on [0, 1] (gamma: scikit-learn's 'scale'); fixed, not tuned per split.
SVR_C, SVR_EPSILON = 4.0, 0.02
_SIGMA, _WINDOW = 7 / 6, 7
_SHAPES = np.arange(0.2, 10.0005, 0.001)
# Moment ratios of the (asymmetric) generalised Gaussian as a function of its shape, for moment matching.
_GGD_RATIO = np.exp(_lgamma(1 / _SHAPES) + _lgamma(3 / _SHAPES) - 2 * _lgamma(2 / _SHAPES))
_AGGD_RATIO = np.exp(2 * _lgamma(2 / _SHAPES) - _lgamma(1 / _SHAPES) - _lgamma(3 / _SHAPES))


def mscn(luma: np.ndarray) -> np.ndarray:
    """Mean-subtracted, contrast-normalised coefficients of a float luminance image (0..255)."""
    from scipy.ndimage import gaussian_filter

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, _SIGMA, mode="constant", truncate=(_WINDOW // 2) / _SIGMA)

    mu = blur(luma)
    std = np.sqrt(np.abs(blur(luma * luma) - mu * mu))
    return (luma - mu) / (std + 1.0)


def ggd_fit(x: np.ndarray) -> tuple[float, float]:
    """(shape, variance) of a zero-mean generalised Gaussian, by moment matching."""
    var = float(np.mean(x * x))
    rho = var / float(np.mean(np.abs(x))) ** 2
    return float(_SHAPES[np.argmin(np.abs(rho - _GGD_RATIO))]), var


def aggd_fit(x: np.ndarray) -> np.ndarray:
    """(shape, mean, left variance, right variance) of an asymmetric generalised Gaussian, per row of
    ``x`` ([K, M] samples): [K, 4]."""
    x2 = x * x
    neg, pos = x < 0, x > 0
    sl = np.sqrt((x2 * neg).sum(1) / neg.sum(1))
    sr = np.sqrt((x2 * pos).sum(1) / pos.sum(1))
    g = sl / sr
    r = np.abs(x).mean(1) ** 2 / x2.mean(1)
    r_norm = r * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    shape = _SHAPES[np.argmin(np.abs(r_norm[:, None] - _AGGD_RATIO[None]), axis=1)]
    eta = (sr - sl) * np.exp(_lgamma(2 / shape) - (_lgamma(1 / shape) + _lgamma(3 / shape)) / 2)
    return np.stack([shape, eta, sl * sl, sr * sr], axis=1)


def _scale_features(luma: np.ndarray) -> list[float]:
    m = mscn(luma)
    shifts = ((0, 1), (1, 0), (1, 1), (-1, 1))
    products = np.stack([(m * np.roll(m, s, axis=(0, 1))).ravel() for s in shifts])
    return [*ggd_fit(m), *aggd_fit(products).ravel().tolist()]


def luma_of(rgb: np.ndarray) -> np.ndarray:
    """Luminance (0..255), rounded like MATLAB's rgb2gray keeps it in uint8."""
    return np.round(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))


def brisque_features(images: Sequence[np.ndarray] | Sequence[Callable[[], np.ndarray]]) -> np.ndarray:
    """The 36 BRISQUE features of each RGB uint8 image (or callable returning one): float64 [N, 36]."""
    out = np.zeros((len(images), BRISQUE_FEATURES))
    for i, image in enumerate(images):
        luma = luma_of(image() if callable(image) else image)
        h, w = luma.shape
        # Half size with an antialiasing bicubic filter, as MATLAB's imresize.
        half = np.asarray(
            Image.fromarray(luma.astype(np.float32), mode="F").resize(
                (w // 2, h // 2), Image.Resampling.BICUBIC
            ),
            dtype=np.float64,
        )
        out[i] = _scale_features(luma) + _scale_features(half)
    return out


def fit_brisque(features: np.ndarray, scores: np.ndarray) -> Any:
    """An RBF support-vector regressor from features (scaled to [-1, 1], as the paper) to quality."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler
    from sklearn.svm import SVR

    model = make_pipeline(
        MinMaxScaler((-1, 1)), SVR(kernel="rbf", C=SVR_C, epsilon=SVR_EPSILON, gamma="scale")
    )
    return model.fit(features, scores)


def baseline_images(labels: Labels) -> np.ndarray:
    """The images the baseline is measured on: every ladder and its clean image (synthetic sets: one
    view per scene at every kind and level), or every image where the set has no ladders."""
    idx = np.arange(len(labels.scores))
    found = ladders(labels, idx)
    if not found:
        return idx
    keep = {int(i) for _, _, steps, clean in found for i in steps} | {c for *_, c in found if c is not None}
    return np.array(sorted(keep), dtype=np.int64)


def brisque_protocol(
    items: Sequence[Any],
    labels: Labels,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    head_held_out: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """BRISQUE on the scene protocol's splits, restricted to :func:`baseline_images`.

    ``head_held_out`` (the head's ``(test_idx, pred)`` per split) gives the head's SRCC/PLCC on the
    same images, so the two compare on equal terms.
    """
    subset = baseline_images(labels)
    inside = np.zeros(len(labels.scores), dtype=bool)
    inside[subset] = True
    feats = np.full((len(labels.scores), BRISQUE_FEATURES), np.nan)
    feats[subset] = brisque_features([items[i].load for i in subset])

    def fit(train_idx: np.ndarray, split: int):
        model = fit_brisque(feats[train_idx], labels.scores[train_idx])
        return (lambda idx: model.predict(feats[idx])), {}

    restricted = [(tr[inside[tr]], te[inside[te]]) for tr, te in splits]
    summary, _ = scene_protocol(fit, labels, restricted, log=log)
    head = [correlations(p[inside[idx]], labels.scores[idx[inside[idx]]]) for idx, p in head_held_out]
    keep = ("srcc_mean", "srcc_std", "plcc_mean", "plcc_std", "srcc_by_kind", "ordering", "calibration")
    return {
        "method": "BRISQUE features + RBF SVR fitted on the training scenes",
        "images": int(len(subset)),
        **{k: summary[k] for k in keep},
        "head_srcc_mean": float(np.mean([s for s, _ in head])) if head else None,
        "head_plcc_mean": float(np.mean([p for _, p in head])) if head else None,
    }
