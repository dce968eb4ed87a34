"""Weight files: reading a state dict, naming it by content, and loading it only where it fits.

A state dict that does not fit the architecture is refused in one line naming what differs (missing,
unexpected or reshaped keys), and a head of another size says so in the classes' terms. Requires torch.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be found locally nor downloaded."""


class WeightsMismatchError(ValueError):
    """A weights file that is not this architecture's ``state_dict()`` (keys or shapes differ)."""


def file_id(path: str) -> str:
    """``file:<sha256 prefix>``: names weights by their content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"file:{h.hexdigest()[:16]}"


def load_state_dict(path: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(f"cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsMismatchError(f"{path}: not a state dict (torch.save(model.state_dict(), path))")
    return state


def _listed(items: list[str], limit: int = 4) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def mismatch(module: nn.Module, state: dict[str, Any], head: str | None = None) -> str | None:
    """What keeps ``state`` from loading strictly into ``module``, in one line; None when it fits.

    ``head``: the key of the final Linear's weight, so a head of another size is named in classes.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        k
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if head is not None and head in shapes:
        got, want = int(state[head].shape[0]), int(own[head].shape[0])
        return f"its head has {got} outputs, the classifier {want} classes (--classes; ImageNet's without)"
    parts = []
    if missing:
        parts.append(f"missing keys {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_listed(unexpected)}")
    if shapes:
        reshaped = [f"{k} {list(state[k].shape)} (expected {list(own[k].shape)})" for k in shapes]
        parts.append(f"shapes differ: {_listed(reshaped, 3)}")
    return "; ".join(parts) or None


def load_checked(module: nn.Module, path: str, what: str, head: str | None = None) -> str:
    """Load the state dict at ``path`` strictly into ``module``; returns its :func:`file_id`.

    Raises:
        WeightsMismatchError: naming the mismatched keys or shapes, in one line.
    """
    state = load_state_dict(path)
    problem = mismatch(module, state, head)
    if problem:
        raise WeightsMismatchError(f"weights {path} do not fit {what}: {problem}")
    module.load_state_dict(state)
    return file_id(path)
