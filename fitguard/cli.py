"""The ``fitguard`` command: one console script, subcommands implemented beside their library code.

Each subcommand module exposes ``configure(parser)`` and ``run(args) -> int`` and is imported only
when chosen, so ``fitguard classify`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, help). "train" has its own subcommands.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("fitguard.serve.cli", "run the embedded Triton server on a model repository"),
    "health": ("fitguard.serve.health_cli", "deep health check: a canary image through the whole ensemble"),
    "export": ("fitguard.export.cli", "export classifier, quality model and detector to a Triton repository"),
    "build": ("fitguard.build", "train, export and verify the whole repository offline"),
    "classify": ("fitguard.client.cli", "classify images with a running fitguard server"),
    "evaluate": ("fitguard.training.paper.evaluate", "reproduce the paper's evaluation and write a report"),
    "evaluate-fit": (
        "fitguard.training.fit.evaluate",
        "held-out fit = right evaluation on the labelled objects (selective classification)",
    ),
    "bench": (
        "fitguard.bench.command",
        "benchmark the served ensemble against in-process and naive pipelines",
    ),
    "demo": ("fitguard.demo", "build once, serve, and classify sample photos and degraded versions"),
    "data": (
        "fitguard.training.data.cli",
        "prepare and describe the offline data sets (Debian packages)",
    ),
    "calibrate": (
        "fitguard.calibration.command",
        "set the detector's threshold from your own photos, with a guarantee",
    ),
}
TRAIN_COMMANDS: dict[str, tuple[str, str]] = {
    "iqa": ("fitguard.training.quality.train", "train the DTNIQ-f quality head"),
    "detector": (
        "fitguard.training.fit.custom",
        "train the shipped fit = right detector (--recipe paper: the paper's SVM)",
    ),
}


def _add(sub: argparse._SubParsersAction, name: str, module: str, help: str) -> None:
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(_module=module)
    # Configure lazily but before parsing: importing the module is cheap unless it imports torch at
    # top level, which subcommand modules must not do.
    importlib.import_module(module).configure(parser)


def get_args_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fitguard", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help) in COMMANDS.items():
        if chosen in (None, name):
            _add(sub, name, module, help)
        else:
            sub.add_parser(name, help=help)
    train = sub.add_parser("train", help="train the quality head or the detector")
    train_sub = train.add_subparsers(dest="train_command", metavar="WHAT", required=True)
    for name, (module, help) in TRAIN_COMMANDS.items():
        if chosen == "train":
            _add(train_sub, name, module, help)
        else:
            train_sub.add_parser(name, help=help)
    return parser


def _version() -> str:
    from fitguard import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser(argv).parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
