"""Debian packages as offline data: ``apt-get download`` + ``dpkg -x`` into the data cache.

Nothing is installed on the system: the ``.deb`` is fetched into a scratch folder, unpacked with
``dpkg -x`` under ``<data cache>/packages/<name>/``, and deleted. A ``package.json`` written last
records the name and version, so a folder without it (an interrupted unpack) is redone. The licence of
a file comes from the package's machine-readable ``usr/share/doc/<name>/copyright`` (DEP-5).
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fitguard.cache import cache_root

RECORD = "package.json"


class PackageFetchError(RuntimeError):
    """A Debian package could not be downloaded or unpacked; the message names the package."""


def default_data_dir() -> Path:
    """``data/`` under :func:`fitguard.cache.cache_root`, beside the feature cache."""
    return cache_root() / "data"


@dataclass(frozen=True)
class Package:
    """An unpacked Debian package: its root holds the package's file tree (``usr/share/...``)."""

    name: str
    version: str
    root: Path

    @property
    def copyright_file(self) -> Path:
        return self.root / "usr" / "share" / "doc" / self.name / "copyright"

    def licence(self, path: str | Path) -> str:
        """The licence line for one file of the package (``License: ...; Copyright: ...``)."""
        return licence_line(self.copyright_file.read_text(encoding="utf-8", errors="replace"), path)


def fetch_package(name: str, data_dir: str | Path | None = None) -> Package:
    """The unpacked package ``name`` under ``<data_dir>/packages/``, downloading it if absent.

    Raises:
        PackageFetchError: ``apt-get download`` or ``dpkg -x`` failed (unknown package, no registry).
    """
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    dest = base / "packages" / name
    record = dest / RECORD
    if record.is_file():
        info = json.loads(record.read_text())
        return Package(info["name"], info["version"], dest)
    for tool in ("apt-get", "dpkg", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise PackageFetchError(f"cannot fetch Debian package {name!r}: `{tool}` is not available here")
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base, prefix=f".{name}-") as tmp:
        deb = _download(name, Path(tmp))
        version = _run(["dpkg-deb", "-f", str(deb), "Version"], name, "read the version of").strip()
        tree = Path(tmp) / "tree"
        _run(["dpkg", "-x", str(deb), str(tree)], name, "unpack")
        (tree / RECORD).write_text(json.dumps({"name": name, "version": version}) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tree.rename(dest)
    return Package(name, version, dest)


def _download(name: str, folder: Path) -> Path:
    _run(["apt-get", "download", "-q", name], name, "download", cwd=folder)
    debs = sorted(folder.glob(f"{name}_*.deb"))
    if len(debs) != 1:
        raise PackageFetchError(f"apt-get download {name} left {len(debs)} .deb files in {folder}")
    return debs[0]


def _run(cmd: list[str], name: str, what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        hint = (
            " (is the Debian package registry reachable? run `apt-get update`)" if what == "download" else ""
        )
        raise PackageFetchError(
            f"could not {what} Debian package {name!r}{hint}: `{' '.join(cmd)}` exited {proc.returncode}: "
            + " | ".join(detail[-3:])
        )
    return proc.stdout


def copyright_stanzas(text: str) -> list[dict[str, str]]:
    """DEP-5 paragraphs as field -> value (continuation lines joined with newlines)."""
    stanzas: list[dict[str, str]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip()
                fields[key] = value.strip()
        if fields:
            stanzas.append(fields)
    return stanzas


def licence_line(text: str, path: str | Path) -> str:
    """``License: X; Copyright: Y`` of the last ``Files`` paragraph matching ``path`` (DEP-5 rule).

    Packaged paths are matched on their tail: ``usr/share/backgrounds/mate/nature/Aqua.jpg`` matches
    the upstream pattern ``nature/Aqua.jpg`` as well as ``*``.
    """
    rel = Path(path).as_posix().lstrip("/")
    best: dict[str, str] | None = None
    for stanza in copyright_stanzas(text):
        patterns = stanza.get("Files", "").split()
        if any(p.startswith("debian/") for p in patterns):
            continue
        if any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, f"*/{p}") for p in patterns):
            best = stanza
    if best is None:
        return "License: unknown (no Files paragraph matches)"
    holder = " ".join(best.get("Copyright", "").split())
    return f"License: {best.get('License', 'unknown').splitlines()[0]}; Copyright: {holder}"
