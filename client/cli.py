"""``fitguard classify``: classify image files and folders with a running fitguard server."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .calibration import Calibration

DEFAULT_URL = "localhost:8001"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)"
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("FITGUARD_URL", DEFAULT_URL),
        help="server host:port (default: $FITGUARD_URL or %(default)s; HTTP is usually port 8000)",
    )
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="default: %(default)s")
    parser.add_argument("--model", default="fitguard", help="ensemble name (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image per line")
    parser.add_argument("--batch-size", type=int, default=8, help="images per request (default: %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="requests in flight (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per request (default: %(default)s)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=None,
        help="retries of a failed request (default: 3, and a server healing a step is retried for up to "
        "10 s)",
    )
    parser.add_argument("--ssl", action="store_true", help="use TLS")
    parser.add_argument("--root-certificates", metavar="FILE", help="CA bundle for TLS")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="show a progress bar"
    )
    progress.add_argument(
        "--no-progress", dest="progress", action="store_false", help="never show a progress bar"
    )


def run(args: argparse.Namespace) -> int:
    from fitguard.client import FitClient, FitguardError, expand_paths

    files = expand_paths(args.paths)
    if not files:
        print(f"error: no image files found in {' '.join(args.paths)}", file=sys.stderr)
        return 2
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        with FitClient(
            args.url,
            protocol=args.protocol,
            model=args.model,
            timeout=args.timeout,
            retries=args.retries,
            ssl=args.ssl,
            root_certificates=args.root_certificates,
        ) as client:
            results = client.classify_many(
                files, batch_size=args.batch_size, concurrency=args.concurrency, progress=progress
            )
            calibration = client.info.calibration
    except FitguardError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        for r in results:
            print(json.dumps(r.to_dict()), flush=False)
    else:
        print_table([r for r in results if r.ok], sys.stdout)
        print(calibration_line(calibration), file=sys.stdout)
    failures = [r for r in results if not r.ok]
    if failures:
        print(f"\n{len(failures)} of {len(results)} image(s) failed:", file=sys.stderr)
        for f in failures:
            print(f"  {f.source}: {f.reason}", file=sys.stderr)
        return 1
    return 0


def print_table(verdicts: list, out: TextIO) -> None:
    rows = [
        (
            v.source or "?",
            v.label,
            f"{v.confidence:.3f}",
            f"{v.quality:.3f}",
            "fit" if v.fit else "UNFIT",
            f"{v.fit_score:+.3f}",
        )
        for v in verdicts
    ]
    header = ("file", "label", "confidence", "quality", "fit", "score")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    numeric = {2, 3, 5}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(line(header), file=out)
    print(line(tuple("-" * w for w in widths)), file=out)
    for r in rows:
        print(line(r), file=out)


def calibration_line(calibration: Calibration) -> str:
    """Which threshold judged the table: a ``fitguard calibrate`` run, or the export's own."""
    if not calibration.calibrated:
        return "\ncalibration: none (the threshold the repository was exported with)"
    return (
        f"\ncalibration: {calibration.id} (detector version {calibration.detector_version}): "
        f"{calibration.guarantee}"
    )
