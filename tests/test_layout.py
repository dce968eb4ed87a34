"""The package boundaries of docs/architecture.md, read from the source (no imports executed).

Every import counts, at top level, inside functions and under ``TYPE_CHECKING``: a lazy import is still an
arrow, and a cycle closed through one is still a cycle.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The commands on top of everything: they wire products together and no library module imports them.
COMMANDS = {"fitguard.cli", "fitguard.build", "fitguard.demo"}
# Products: packages under fitguard.*, each allowed the core and the products listed here.
PRODUCTS: dict[str, set[str]] = {
    "fitguard.client": set(),
    "fitguard.serve": set(),
    "fitguard.training": set(),
    "fitguard.export": set(),
    "fitguard.calibration": {"fitguard.client", "fitguard.export"},
    "fitguard.bench": {"fitguard.client", "fitguard.serve"},
}
# Every Triton Python step the project serves: the repository's, the export's templates, the stand-ins.
SERVED_BACKENDS = tuple(
    path
    for folder in ("model_repository", "export", "fitguard")
    for path in sorted((ROOT / folder).rglob("*.py"))
    if "class TritonPythonModel" in path.read_text(encoding="utf-8")
)


@cache
def package_dirs() -> dict[str, Path]:
    """``fitguard.*`` packages and the folders pyproject maps them to (client/, export/, training/)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    table = re.search(r"^package-dir = \{(.*)\}$", text, re.MULTILINE)
    assert table, "pyproject.toml: no package-dir table"
    return {name: ROOT / folder for name, folder in re.findall(r'"([\w.]+)" = "([\w./]+)"', table.group(1))}


@cache
def modules() -> dict[str, Path]:
    """Every module of the project by dotted name."""
    roots = package_dirs()
    found: dict[str, Path] = {}
    for package, folder in roots.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def resolve(name: str) -> str | None:
    """The project module an import names: itself, else the nearest package above it."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imported(path: Path, module: str | None = None) -> set[str]:
    """The project modules a file imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    known = modules()
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level and module:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return {r for n in names if (r := resolve(n)) is not None and r != module}


@cache
def graph() -> dict[str, frozenset[str]]:
    return {name: frozenset(imported(path, name)) for name, path in modules().items()}


def layer(module: str) -> str:
    """The product a module belongs to, ``core`` for the rest of fitguard/, or the command itself."""
    if module in COMMANDS:
        return module
    return next((p for p in PRODUCTS if module == p or module.startswith(p + ".")), "core")


def cycles() -> Iterator[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    edges, index, low, stack, on_stack, counter = graph(), {}, {}, [], set(), [0]
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        yield sorted(component)
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])


def test_no_import_cycle_anywhere() -> None:
    assert not list(cycles())


def test_the_core_imports_only_the_core() -> None:
    """The serving library (contract, preprocess, the step modules, manifest, reference) builds on
    nothing else of the project, so every product can use it."""
    outside = {
        m: sorted(b for b in bs if layer(b) != "core") for m, bs in graph().items() if layer(m) == "core"
    }
    assert not {m: bs for m, bs in outside.items() if bs}


@pytest.mark.parametrize("product", sorted(PRODUCTS))
def test_each_product_imports_the_core_and_what_it_builds_on(product: str) -> None:
    allowed = {product, "core", *PRODUCTS[product]}
    wrong = {
        m: sorted(b for b in bs if layer(b) not in allowed)
        for m, bs in graph().items()
        if layer(m) == product
    }
    assert not {m: bs for m, bs in wrong.items() if bs}, f"{product} may import only {sorted(allowed)}"


def test_only_commands_import_commands() -> None:
    """``fitguard demo`` may run the build; no library module reaches up into a command."""
    users = {m: sorted(bs & COMMANDS) for m, bs in graph().items() if m not in COMMANDS}
    assert not {m: bs for m, bs in users.items() if bs}


@pytest.mark.parametrize("backend", SERVED_BACKENDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_served_backend_imports_the_core_only(backend: Path) -> None:
    """A Triton step loads in an install with neither torch nor the training, export or benchmark code."""
    assert {layer(m) for m in imported(backend)} <= {"core"}


def test_the_checks_see_every_package() -> None:
    """The rules above are not vacuous: every product has modules and the core has the step modules."""
    layers = {layer(m) for m in modules()}
    assert set(PRODUCTS) <= layers and "core" in layers
    steps = {"fitguard.preprocess", "fitguard.classifier", "fitguard.quality", "fitguard.detector"}
    assert steps <= {m for m in modules() if layer(m) == "core"}
    assert len(SERVED_BACKENDS) >= 3
    assert any(b.startswith("fitguard.training.data") for b in graph()["fitguard.training.fit.train"])


def test_the_manifest_check_stays_light() -> None:
    """The backends verify their repository in installs without torch: manifest.py reaches only file names."""
    assert graph()["fitguard.manifest"] == {"fitguard.repository"}
    assert graph()["fitguard.repository"] <= {"fitguard.contract", "fitguard.preprocess"}
    assert graph()["fitguard.monitoring"] <= {"fitguard.contract", "fitguard.parameters"}
    assert graph()["fitguard.parameters"] == set()  # the keys every step reads: standard library only


def test_every_package_ships_in_the_wheel() -> None:
    """pyproject lists packages by hand (package-dir maps three folders): a package it misses would be
    absent from a wheel install while every test in the source tree still passes."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    listed = re.search(r"^packages = \[(.*)\]$", text, re.MULTILINE)
    assert listed, "pyproject.toml: no packages list"
    packages = {m for m in modules() if modules()[m].name == "__init__.py"}
    assert set(re.findall(r'"([\w.]+)"', listed.group(1))) == packages
