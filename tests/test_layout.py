"""The module boundaries the data path relies on, read from the source (no imports executed)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = (
    "contract",
    "presets",
    "preprocess",
    "backbones",
    "classifier",
    "quality",
    "detector",
    "repository",
    "manifest",
)


def imported_modules(path: Path) -> set[str]:
    """Every ``fitguard...`` module a file imports, at top level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m for m in found if m.split(".")[0] == "fitguard"}


def test_the_core_imports_neither_export_nor_training() -> None:
    """export/ and training/ build on the core; the core never reaches back (no import cycle)."""
    for name in (*CORE, "reference"):
        outside = {
            m
            for m in imported_modules(ROOT / "fitguard" / f"{name}.py")
            if m.split(".")[1] in ("export", "training")
        }
        assert not outside, f"fitguard/{name}.py imports {sorted(outside)}"


def test_the_preprocess_backend_imports_the_core_only() -> None:
    """The contract, preprocess, the manifest check and the bad-image counter (which counts refusals where
    they happen): no export, training or benchmark code in a served step."""
    modules = imported_modules(ROOT / "model_repository" / "preprocess" / "1" / "model.py")
    assert modules == {
        "fitguard.contract",
        "fitguard.preprocess",
        "fitguard.manifest",
        "fitguard.monitoring",
    }, modules


def test_the_monitor_backend_reads_the_verdict_only() -> None:
    modules = imported_modules(ROOT / "model_repository" / "monitor" / "1" / "model.py")
    assert modules == {"fitguard.contract", "fitguard.labels", "fitguard.monitoring", "fitguard.preprocess"}
    assert imported_modules(ROOT / "fitguard" / "monitoring.py") <= {"fitguard.contract"}


def test_the_manifest_check_stays_light() -> None:
    """The backend verifies its repository in installs without torch: manifest.py reaches only file names."""
    assert imported_modules(ROOT / "fitguard" / "manifest.py") == {"fitguard.repository"}
    assert imported_modules(ROOT / "fitguard" / "repository.py") <= {
        "fitguard.contract",
        "fitguard.preprocess",
    }
