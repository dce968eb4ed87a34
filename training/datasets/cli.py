"""``fitguard data``: prepare the offline sets and describe them."""

from __future__ import annotations

import argparse
import json
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for name, help in (
        ("prepare", "fetch the Debian packages and prepare the derived sets (cached)"),
        ("describe", "per set: images, distinct groups, classes, where it came from"),
    ):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "--data-dir", help="data cache (default $FITGUARD_CACHE/data or ~/.cache/fitguard/data)"
        )
        if name == "describe":
            p.add_argument(
                "--dataset", action="append", help="a set (repeatable); default: the prepared ones"
            )
            p.add_argument("--root", help="folder of a real set (imagenet, tid2013, kadid10k)")
            p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from fitguard.training.datasets import PREPARED, PackageFetchError, describe, load_dataset, prepare_all

    try:
        if args.data_command == "prepare":
            for name, folder in prepare_all(args.data_dir).items():
                print(f"{name}: {folder}")
            return 0
        names = args.dataset or list(PREPARED)
        rows = [describe(load_dataset(n, root=args.root, data_dir=args.data_dir)) for n in names]
    except PackageFetchError as exc:
        print(f"fitguard data: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({r["name"]: r for r in rows}, indent=1))
        return 0
    print(f"{'set':<12}{'images':>8}{'groups':>8}{'classes':>9}  from")
    for r in rows:
        packages = ", ".join(f"{k} {v}" for k, v in sorted(r.get("packages", {}).items())) or r.get(
            "root", ""
        )
        print(f"{r['name']:<12}{r['images']:>8}{r['groups']:>8}{r['classes']:>9}  {packages}")
    return 0
