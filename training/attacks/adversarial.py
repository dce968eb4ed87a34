"""Adversarial: one universal perturbation (ART ``UniversalPerturbation``, DeepFool, L-inf) computed on a
subset of originals and added to every original's classifier crop."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fitguard.preprocess import center_offset
from fitguard.training.image_groups import (
    ADVERSARIAL,
    ImageGroup,
    cached_path,
    classifier_batch,
    float_logits_module,
    make_group,
    predict_logits,
    spread_subset,
    stable_key,
)

if TYPE_CHECKING:
    from fitguard.backbones import Backbone


def art_classifier(backbone: Backbone) -> Any:
    """ART ``PyTorchClassifier`` around the backbone, inputs float [0, 1] of the classifier crop size."""
    import torch
    from art.estimators.classification import PyTorchClassifier

    crop = backbone.preset.crop
    return PyTorchClassifier(
        model=float_logits_module(backbone),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(3, crop, crop),
        nb_classes=backbone.num_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


# DeepFool inside the universal perturbation: gradients of the top-3 classes only and the original 0.02
# overshoot (ART's default overshoot of 1e-6 needs many more steps to cross a boundary); both keep the
# attack within a CPU budget.
DEEPFOOL: dict[str, Any] = {"nb_grads": 3, "epsilon": 0.02, "max_iter": 20}


def universal_perturbation(
    backbone: Backbone,
    images: np.ndarray,
    eps: float = 10 / 255,
    delta: float = 0.2,
    max_iter: int = 4,
    seed: int = 0,
    deepfool: dict[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """ART ``UniversalPerturbation`` (DeepFool, L-inf) on canvases' classifier crops.

    Returns:
        The perturbation as float32 [3, crop, crop] in [0, 1] pixel units, and ART's fooling rate,
        convergence and timing.
    """
    import torch
    from art.attacks.evasion import UniversalPerturbation

    x = classifier_batch(images, backbone.preset.crop).astype(np.float32) / 255.0
    attack = UniversalPerturbation(
        art_classifier(backbone),
        attacker="deepfool",
        attacker_params={**DEEPFOOL, **(deepfool or {}), "verbose": False},
        delta=delta,
        max_iter=max_iter,
        eps=eps,
        norm=np.inf,
        batch_size=32,
        verbose=True,
    )
    t0 = time.perf_counter()
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)  # ART visits the images in random.sample order
    np.random.seed(seed)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            attack.generate(x)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    noise = np.asarray(attack.noise, dtype=np.float32).reshape(3, *x.shape[2:])
    info = {
        "art_fooling_rate": float(attack.fooling_rate),
        "converged": bool(attack.converged),
        "fit_images": len(x),
        "eps": eps,
        "delta": delta,
        "deepfool": {**DEEPFOOL, **(deepfool or {})},
        "max_iter": max_iter,
        "linf": float(np.abs(noise).max()),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return noise, info


def apply_perturbation(images: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Add a [3, crop, crop] perturbation (in [0, 1] units) to the classifier-crop region of canvases."""
    crop = noise.shape[-1]
    o = center_offset(images.shape[1], crop)
    out = images.copy()
    region = out[:, o : o + crop, o : o + crop].astype(np.float32) + noise.transpose(1, 2, 0)[None] * 255.0
    out[:, o : o + crop, o : o + crop] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    return out


def adversarial_group(
    backbone: Backbone,
    originals: ImageGroup,
    fit_images: int = 64,
    eps: float = 10 / 255,
    delta: float = 0.2,
    max_iter: int = 4,
    seed: int = 0,
    cache: Path | None = None,
) -> ImageGroup:
    """The universal perturbation computed on ``fit_images`` originals, applied to all of them.

    ``meta`` holds ART's fooling rate on the fitting images and the fooling rate measured on all
    adversarial canvases as served (after uint8 rounding): the share whose top-1 left the reference.
    """
    key = stable_key(
        "uap/1",
        backbone.name,
        backbone.weights_id,
        stable_key(originals.images),
        fit_images,
        eps,
        delta,
        max_iter,
        seed,
    )
    path = cached_path(cache, "uap", key)
    if path is not None and path.exists():
        with np.load(path) as z:
            noise, info = z["noise"], json.loads(str(z["info"]))
    else:
        fit = spread_subset(originals.sources, fit_images)
        noise, info = universal_perturbation(backbone, originals.images[fit], eps, delta, max_iter, seed)
        if path is not None:
            np.savez(path, noise=noise, info=json.dumps(info))
    images = apply_perturbation(originals.images, noise)
    top1 = predict_logits(backbone, images, desc="adversarial: predict").argmax(1)
    info = {**info, "fooling_rate": float(np.mean(top1 != originals.labels)), "n": len(images)}
    return make_group(
        ADVERSARIAL,
        images,
        originals.labels,
        np.arange(len(originals)),
        originals.sources,
        ["uap"] * len(originals),
        meta=info,
    )
