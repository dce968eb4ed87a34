"""Shared fixtures: real photos from scikit-image, free ports. Module-specific fixtures live beside their tests."""

from __future__ import annotations

import socket

import numpy as np
import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real RGB photos shipped with scikit-image (name -> HWC uint8)."""
    from skimage import data

    return {name: getattr(data, name)() for name in ("chelsea", "astronaut", "coffee", "rocket")}
