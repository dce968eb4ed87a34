"""Universal perturbations for labelled objects: ART's DeepFool-based one and a PGD-based one.

Both are L-inf bounded (the paper's 10/255) on the classifier's centre crop of serving canvases. The
DeepFool attacker (ART ``UniversalPerturbation``) stops a point as soon as it crosses the nearest
boundary, so it rarely uses the budget; the PGD attacker ascends the cross-entropy of each image's
acceptable class with signed minibatch gradients and projects onto the L-inf ball, which spends it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fitguard.training.attacks.adversarial import apply_perturbation, universal_perturbation
from fitguard.training.attacks.fooling import head_key
from fitguard.training.image_groups import cached_path, canvas, classifier_batch, predict_logits, stable_key

if TYPE_CHECKING:
    from fitguard.backbones import Backbone
    from fitguard.training.data import Dataset

EPS = 10 / 255


class AttackSettings(Protocol):
    """What an attack reads of its caller's configuration (the fit population's, for one)."""

    seed: int
    uap_max_iter: int
    pgd_epochs: int


def true_labels(logits: np.ndarray, acceptable: list[frozenset[int]]) -> np.ndarray:
    """Per image, the acceptable class the classifier ranks highest (the attack's target to leave)."""
    return np.asarray([max(acc, key=lambda c: logits[i, c]) for i, acc in enumerate(acceptable)])


def pgd_universal(
    backbone: Backbone,
    images: np.ndarray,
    labels: np.ndarray,
    eps: float = EPS,
    epochs: int = 4,
    batch_size: int = 8,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Signed-gradient ascent of the mean cross-entropy over minibatches, projected onto ||v||_inf <= eps."""
    import torch

    from fitguard.training.image_groups import float_logits_module

    model = float_logits_module(backbone)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.from_numpy(classifier_batch(images, backbone.preset.crop).astype(np.float32) / 255.0)
    y = torch.from_numpy(labels)
    v = torch.zeros(1, *x.shape[1:], requires_grad=True)
    step = eps / 4
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // batch_size)):
            loss = torch.nn.functional.cross_entropy(model((x[idx] + v).clamp(0, 1)), y[idx])
            (grad,) = torch.autograd.grad(loss, v)
            with torch.no_grad():
                v += step * grad.sign()
                v.clamp_(-eps, eps)
    noise = v.detach()[0].numpy().astype(np.float32)
    info = {"epochs": epochs, "step": step, "eps": eps, "fit_images": len(x)}
    return noise, {**info, "seconds": round(time.perf_counter() - t0, 2)}


def uap_group(
    *,
    backbone: Backbone,
    dataset: Dataset,
    fit_items: list[int],
    apply_items: list[int],
    attacker: str,
    config: AttackSettings,
    cache: Path | None,
) -> tuple[list[np.ndarray], list[int], dict[str, Any]]:
    """The perturbation fitted on ``fit_items``' canvases, applied to ``apply_items``' canvases.

    Returns the perturbed canvases, their items, and the attack's record: fooling rate against the
    true label (share of perturbed images not in their acceptable set, beside the clean error), mean
    and max |v| in pixel units.
    """
    side = backbone.preset.resize
    fit = np.stack([canvas(dataset[i].image(), side) for i in fit_items])
    apply = np.stack([canvas(dataset[i].image(), side) for i in apply_items])
    key = stable_key(
        f"uap-{attacker}/1",
        backbone.name,
        backbone.weights_id,
        stable_key(fit),
        config.seed,
        *head_key(backbone),
    )
    key = stable_key(key, config.uap_max_iter, config.pgd_epochs)
    path = cached_path(cache, f"uap_{attacker}", key)
    if path is not None and path.exists():
        with np.load(path) as z:
            noise, info = z["noise"], json.loads(str(z["info"]))
    else:
        if attacker == "deepfool":
            noise, info = universal_perturbation(
                backbone, fit, eps=EPS, max_iter=config.uap_max_iter, seed=config.seed
            )
        elif attacker == "pgd":
            labels = true_labels(predict_logits(backbone, fit), [dataset[i].labels for i in fit_items])
            noise, info = pgd_universal(backbone, fit, labels, epochs=config.pgd_epochs, seed=config.seed)
        else:
            raise ValueError(f"attacker must be 'deepfool' or 'pgd', got {attacker!r}")
        if path is not None:
            np.savez(path, noise=noise, info=json.dumps(info))
    perturbed = apply_perturbation(apply, noise)
    acceptable = [dataset[i].labels for i in apply_items]
    wrong_clean = np.mean(
        [t not in a for t, a in zip(predict_logits(backbone, apply).argmax(1), acceptable, strict=True)]
    )
    wrong_adv = np.mean(
        [t not in a for t, a in zip(predict_logits(backbone, perturbed).argmax(1), acceptable, strict=True)]
    )
    info = {
        **info,
        "attacker": attacker,
        "fooling_rate_true_label": float(wrong_adv),
        "clean_error_same_images": float(wrong_clean),
        "mean_abs_v_255": float(np.abs(noise).mean() * 255),
        "max_abs_v_255": float(np.abs(noise).max() * 255),
        "n": len(apply_items),
    }
    return list(perturbed), list(apply_items), info
