"""Rewrite the VSI labels of the offline scenes set that ship with the project.

    python scripts/ship_vsi_labels.py

Labels every distorted view of the scenes set as the build does (reading what the data cache already
holds, computing the rest) and writes ``training/quality/vsi_labels.npz``. Run it after a change that the
labels' keys see (the distortion code, piq's version, the scenes recipe), then commit the file.
"""

from __future__ import annotations

from fitguard.training.quality.data import ship_scene_labels
from fitguard.training.quality.vsi_labels import SHIPPED


def main() -> int:
    views = ship_scene_labels()
    print(f"wrote {SHIPPED}: {views} views, {SHIPPED.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
