#!/usr/bin/env python3
"""The validating step's cost per image on this CPU: ``python scripts/dali_check_cost.py [--json OUT]``.

The step ahead of DALI (fitguard.dali_check.check_header) reads headers only; beside it, for scale, the
Python step's whole preprocessing of the same files (decode, crop) on one core. Package photos as JPEG
at several sizes and as PNG. The work is in :mod:`fitguard.bench.gpu_dali`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fitguard.bench.gpu_dali import check_cost  # noqa: E402
from fitguard.bench.gpu_decode import jpeg_variants  # noqa: E402
from fitguard.photos import package_photos  # noqa: E402
from fitguard.preprocess import PreprocessSettings, encode_image  # noqa: E402
from fitguard.presets import preset_for  # noqa: E402


def python_step_us(images: Sequence[bytes], settings: PreprocessSettings) -> float:
    start = time.perf_counter()
    for data in images:
        settings.prepare(data)
    return round((time.perf_counter() - start) / len(images) * 1e6, 1)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="400,1000,2000,4000", help="longer sides of the JPEG variants")
    p.add_argument("--repeats", type=int, default=20, help="passes over the images per figure")
    p.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    photos = list(package_photos().values())
    shared = PreprocessSettings(preset_for("efficientnet_lite0"), 0, quality_features="shared")
    cases = {f"JPEG {side}": jpeg_variants(photos, int(side)) for side in args.sizes.split(",")}
    cases["PNG (as shipped)"] = [encode_image(rgb) for rgb in photos]
    rows = {}
    print(f"{'images':<18} {'bytes':>9} {'check us/image':>14} {'Python step us/image':>21}")
    for name, images in cases.items():
        check = check_cost(images, repeats=args.repeats)
        rows[name] = {
            "mean_bytes": int(sum(map(len, images)) / len(images)),
            **check,
            "python_step_us_per_image": python_step_us(images, shared),
        }
        row = rows[name]
        print(
            f"{name:<18} {row['mean_bytes']:>9} {row['us_per_image_median']:>14} "
            f"{row['python_step_us_per_image']:>21}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
