"""The repository manifest: how a repository was made, and the SHA-256 of every file it serves.

Standard library only (and :mod:`fitguard.repository`'s names): the preprocess backend verifies its
repository at load time with :func:`verify_repository`, in installs that have no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fitguard.repository import MANIFEST_NAME

MANIFEST_FORMAT = "fitguard.repository/1"
# Written by the servers themselves, not by export: never part of the checksummed set.
_IGNORED_DIRS = {"__pycache__"}


class RepositoryIntegrityError(RuntimeError):
    """A repository's files do not match its manifest (changed, missing, or no manifest at all)."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def repository_files(root: str | Path) -> list[str]:
    """Relative POSIX paths of every file under ``root`` except the manifest and server caches."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_DIRS)
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel != MANIFEST_NAME:
                found.append(rel)
    return sorted(found)


def checksums(root: str | Path, files: Iterable[str] | None = None) -> dict[str, str]:
    root = Path(root)
    return {rel: sha256_file(root / rel) for rel in (repository_files(root) if files is None else files)}


def write_manifest(root: str | Path, arguments: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """Write ``root/manifest.json`` covering every file now under ``root``; returns the manifest."""
    manifest = {"format": MANIFEST_FORMAT, "arguments": arguments, **sections, "files": checksums(root)}
    (Path(root) / MANIFEST_NAME).write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return manifest


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RepositoryIntegrityError(
            f"{path}: no manifest; export the repository with `fitguard export`"
        ) from None
    except (OSError, ValueError) as exc:
        raise RepositoryIntegrityError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise RepositoryIntegrityError(f"{path}: not a fitguard manifest (format {MANIFEST_FORMAT} expected)")
    return manifest


def find_root(path: str | Path) -> Path:
    """The repository root for ``path``: the folder itself or, for a model folder, its parent."""
    path = Path(path).resolve()
    for candidate in (path, path.parent):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    raise RepositoryIntegrityError(
        f"no {MANIFEST_NAME} in {path} or its parent; export with `fitguard export`"
    )


def verify_repository(root: str | Path) -> dict[str, Any]:
    """Check every file the manifest lists; return the manifest.

    Files the manifest does not list (a server's ``__pycache__``, a user's notes) are allowed: only what
    was exported is guarded.

    Raises:
        RepositoryIntegrityError: naming each changed or missing file.
    """
    root = Path(root)
    manifest = read_manifest(root)
    problems = []
    for rel, expected in sorted(manifest.get("files", {}).items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != expected:
            problems.append(f"{rel}: changed since export (SHA-256 differs from the manifest)")
    if problems:
        raise RepositoryIntegrityError(
            f"repository {root} does not match its manifest:\n  " + "\n  ".join(problems)
        )
    return manifest


def verify_on_load(model_folder: str | Path, *, enabled: bool = True) -> None:
    """What a served step checks as it loads (its ``verify_manifest`` parameter): a model file changed after
    export must fail the load, not serve silently different answers."""
    if enabled:
        verify_repository(find_root(model_folder))
