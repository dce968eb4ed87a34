"""``torchvision:<arch>``: any torchvision classification network whose head is a final ``Linear``.

The network is split at that layer: ``features`` is everything before it (its output is the Linear's
input, pooled and flattened as the architecture computes it) and ``fc`` is the Linear. Those pooled
features are also what the quality head reads for such architectures: their spatial feature maps differ
in kind from one family to the next (a ViT has tokens, a ConvNeXt normalises after pooling), so the
multi-level statistics of the registered architectures are not defined for them. Requires torch and
torchvision.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from fitguard.weights import load_checked

PROBE_SIDE = 224


class LinearInputFeatures(nn.Module):
    """The network with its final Linear replaced by the identity: [N, 3, H, W] -> the Linear's input [N, D].

    ``levels`` is that vector as a 1x1 map, the one level such architectures define.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).flatten(1)

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self(x)[:, :, None, None]]


def classification_archs() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))


def final_linear(model: nn.Module) -> str:
    """The dotted name of the Linear whose output is ``model``'s output, checked on one probe image.

    Raises:
        ValueError: the network does not end in a Linear (SqueezeNet's convolution head, auxiliary heads).
    """
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("has no Linear layer for a head")
    name, seen = linears[-1], {}
    hook = model.get_submodule(name).register_forward_hook(lambda _m, _i, out: seen.update(out=out))
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, 3, PROBE_SIDE, PROBE_SIDE))
    finally:
        hook.remove()
    if not isinstance(out, torch.Tensor) or "out" not in seen or not torch.equal(out, seen["out"]):
        raise ValueError(f"does not end in its last Linear ({name})")
    return name


def build_torchvision(arch: str, weights: str | None, num_classes: int) -> tuple[nn.Module, nn.Module, str]:
    """(features, fc, weights_id) of ``torchvision.models.<arch>`` with ``num_classes`` outputs.

    ``weights``: that architecture's own ``state_dict()`` file, or None for random initialisation.
    """
    from torchvision import models

    spec = f"torchvision:{arch}"
    if arch not in classification_archs():
        raise ValueError(
            f"unknown torchvision classification architecture {arch!r} "
            f"(torchvision.models.list_models(module=torchvision.models) lists them)"
        )
    if weights is not None and not os.path.exists(weights):
        raise ValueError(f"{spec} weights {weights!r}: pass its state_dict() file or random")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random init is reproducible: graph tests and stamps see one network
        model = models.get_model(arch, weights=None, num_classes=num_classes)
    try:
        head = final_linear(model)
    except ValueError as exc:
        raise ValueError(f"{spec} {exc}: fitguard needs a final Linear head") from None
    weights_id = "seed0" if weights is None else load_checked(model, weights, spec, head=f"{head}.weight")
    fc = model.get_submodule(head)
    parent, _, leaf = head.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
    return LinearInputFeatures(model).eval(), fc, weights_id
