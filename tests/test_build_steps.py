"""The build's step stamps: a step reruns when what makes its output changes, and only then."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fitguard import build


def test_a_changed_backend_source_changes_the_export_stamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fitguard.export import repository

    copy = tmp_path / "model_repository"
    shutil.copytree(repository.SOURCE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.onnx"))
    monkeypatch.setattr(repository, "SOURCE", copy)
    before = build._sources_version()
    assert build._sources_version() == before  # stable when nothing changes
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "x.pyc").write_bytes(b"cache")
    assert build._sources_version() == before  # server caches are not sources
    backend = copy / "preprocess" / "1" / "model.py"
    backend.write_text(backend.read_text() + "\n# changed\n")
    assert build._sources_version() != before


def test_the_code_version_follows_the_modules_source() -> None:
    one = build._code_version("fitguard.detector")
    assert one == build._code_version("fitguard.detector")
    assert one != build._code_version("fitguard.detector", "fitguard.contract")
    with pytest.raises(ModuleNotFoundError):
        build._code_version("fitguard.no_such_module")
