"""The layout of a Triton model repository as fitguard writes and reads it: file names, and the one reader
and writer of ``config.pbtxt``.

Standard library at import time (the preprocess backend's manifest check imports it through
:mod:`fitguard.manifest`); protobuf and numpy load inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitguard.contract import PREPROCESS

if TYPE_CHECKING:
    from fitguard.preprocess import PreprocessSettings

MANIFEST_NAME = "manifest.json"
CONFIG_NAME = "config.pbtxt"
MODEL_NAME = "model.onnx"
VERSION = "1"  # the version an export writes; `fitguard calibrate` adds detector versions
LABELS_NAME = "labels.txt"
# Copies of the source files, kept beside the manifest (Triton ignores plain files).
HEAD_NAME = "iqa_head.pt"
DETECTOR_NAME = "detector.joblib"


def model_versions(repository: str | Path, name: str) -> list[int]:
    """The numbered version folders of model ``name`` that hold a model file, ascending."""
    folder = Path(repository) / name
    found = (p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()) if folder.is_dir() else ()
    return sorted(int(p.name) for p in found if (p / MODEL_NAME).is_file())


def model_path(repository: str | Path, name: str) -> Path:
    """The ONNX file of model ``name`` that serves: ``<repository>/<name>/<version>/model.onnx``, the
    highest version present (``fitguard calibrate`` adds detector versions; an export writes 1)."""
    versions = model_versions(repository, name)
    return Path(repository) / name / (str(versions[-1]) if versions else VERSION) / MODEL_NAME


def config_path(repository: str | Path, name: str) -> Path:
    """The ``config.pbtxt`` of model ``name``."""
    return Path(repository) / name / CONFIG_NAME


def read_config(path: str | Path) -> Any:
    """Parse a ``config.pbtxt`` into a ``ModelConfig`` protobuf message."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(Path(path).read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def config_comments(path: str | Path) -> list[str]:
    """The text of the ``#`` lines at the start of lines in a ``config.pbtxt`` (what :func:`config_text`
    wrote above the message; protobuf's parser drops them)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.removeprefix("#").removeprefix(" ") for line in lines if line.startswith("#")]


def config_text(config: Any, comments: Sequence[str] = ()) -> str:
    """A ``ModelConfig`` as ``config.pbtxt`` text, below ``comments`` (one ``# `` line each): every config
    fitguard writes (export, DALI models, calibration) is rendered here."""
    from google.protobuf import text_format

    return "".join(f"# {comment}\n" for comment in comments) + text_format.MessageToString(config)


def write_config(path: str | Path, config: Any, comments: Sequence[str] = ()) -> None:
    """Write :func:`config_text` to ``path``."""
    Path(path).write_text(config_text(config, comments), encoding="utf-8")


def repository_settings(repository: str | Path) -> PreprocessSettings:
    """The preprocess settings a repository serves with, read from ``preprocess/config.pbtxt``."""
    from fitguard.preprocess import PreprocessSettings

    config = read_config(config_path(repository, PREPROCESS))
    return PreprocessSettings.from_parameters({k: v.string_value for k, v in config.parameters.items()})
