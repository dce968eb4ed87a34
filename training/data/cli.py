"""``fitguard data``: prepare the offline sets, describe them, measure a classifier on them."""

from __future__ import annotations

import argparse
import json
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for name, help in (
        ("prepare", "fetch the Debian packages and prepare the derived sets (cached)"),
        ("describe", "per set: images, distinct groups, classes, where it came from"),
        ("accuracy", "clean top-1 / top-5 accuracy of a backbone's classifier on a labelled set"),
        ("sheets", "contact sheets (PNG) of kept and dropped stamps and scenes"),
    ):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "--data-dir", help="data cache (default $FITGUARD_CACHE/data or ~/.cache/fitguard/data)"
        )
        if name == "describe":
            p.add_argument(
                "--dataset", action="append", help="a set (repeatable); default: the prepared ones"
            )
        if name == "accuracy":
            p.add_argument("--dataset", default="objects", help="a labelled set (objects, imagenet)")
            p.add_argument("--backbone", default="efficientnet_lite0")
        if name == "sheets":
            p.add_argument("--out", default="docs/data", help="folder for the PNGs (default docs/data)")
        if name in ("describe", "accuracy"):
            p.add_argument("--root", help="folder of a real set (imagenet, tid2013, kadid10k)")
            p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from fitguard.training.data import (
        PREPARED,
        PackageFetchError,
        describe_dataset,
        load_dataset,
        prepare_all,
    )

    try:
        if args.data_command == "prepare":
            for name, folder in prepare_all(args.data_dir).items():
                print(f"{name}: {folder}")
            return 0
        if args.data_command == "accuracy":
            return _accuracy(args)
        if args.data_command == "sheets":
            return _sheets(args)
        names = args.dataset or list(PREPARED)
        rows = [describe_dataset(load_dataset(n, root=args.root, data_dir=args.data_dir)) for n in names]
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


def _accuracy(args: argparse.Namespace) -> int:
    from fitguard.training.data import load_dataset
    from fitguard.training.data.accuracy import accuracy, predict_top5

    dataset = load_dataset(args.dataset, root=args.root, data_dir=args.data_dir)
    result = {"dataset": args.dataset, "backbone": args.backbone, **dataset.provenance}
    result |= accuracy(dataset, predict_top5(dataset, args.backbone))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(
            f"{args.backbone} on {args.dataset}: {result['images']} images, {result['groups']} groups, "
            f"top-1 {result['top1']:.3f}, top-5 {result['top5']:.3f}"
        )
    return 0


def _sheets(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fitguard.training.data.objects import prepare_objects
    from fitguard.training.data.sheets import scene_sheets, stamp_sheets

    out = Path(args.out)
    paths = scene_sheets(out, args.data_dir) + stamp_sheets(
        prepare_objects(args.data_dir), out, args.data_dir
    )
    for path in paths:
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 0
