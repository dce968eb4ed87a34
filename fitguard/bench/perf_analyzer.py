"""The same measurement with NVIDIA's ``perf_analyzer`` (Triton SDK), for users who have it.

``perf_analyzer`` reads real inputs from a JSON file. A ``{"b64": ...}`` value is decoded and sent as the
tensor's raw bytes, and the raw form of a BYTES tensor element is a 4-byte little-endian length followed
by the bytes, so each encoded image is written length-prefixed.
"""

from __future__ import annotations

import base64
import json
import shlex
import struct
from collections.abc import Sequence
from pathlib import Path

from fitguard import contract


def write_input_data(images: Sequence[bytes], path: str | Path) -> Path:
    """Write ``{"data": [{"IMAGE": {"b64": ...}}, ...]}``: one step per image, used round-robin."""
    steps = [
        {contract.IMAGE: {"b64": base64.b64encode(struct.pack("<I", len(img)) + img).decode("ascii")}}
        for img in images
    ]
    path = Path(path)
    path.write_text(json.dumps({"data": steps}) + "\n", encoding="utf-8")
    return path


def command(
    data_path: str | Path,
    url: str = "localhost:8001",
    protocol: str = "grpc",
    concurrency: Sequence[int] = (1, 2, 4, 8),
    batch: int = 1,
    requests: int = 64,
    csv_out: str = "perf_analyzer.csv",
) -> str:
    """The ``perf_analyzer`` command equivalent to ``fitguard bench`` (concurrency mode, bounded by count)."""
    lo, hi = min(concurrency), max(concurrency)
    args = [
        "perf_analyzer",
        "-m",
        contract.ENSEMBLE,
        "-u",
        url,
        "-i",
        protocol,
        "-b",
        str(batch),
        "--input-data",
        str(data_path),
        "--concurrency-range",
        f"{lo}:{hi}",
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        str(requests),
        "--percentile",
        "99",
        "-f",
        csv_out,
    ]
    return shlex.join(args)
