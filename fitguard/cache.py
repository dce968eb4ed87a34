"""Where fitguard keeps what it can rebuild: features, image groups, WordNet data, server backends."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$FITGUARD_CACHE``, else ``$XDG_CACHE_HOME/fitguard``, else ``~/.cache/fitguard``."""
    explicit = os.environ.get("FITGUARD_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fitguard"
