"""The package boundaries of docs/architecture.md, read from the source (no imports executed).

Every import counts, at top level, inside functions and under ``TYPE_CHECKING``: a lazy import is still an
arrow, and a cycle closed through one is still a cycle. A module named in a string (``fitguard.cli`` loads
each subcommand by name through importlib) counts as imported too.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from collections.abc import Iterable, Iterator
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
    "fitguard.bench": {"fitguard.serve"},
}
# The core in two parts; every core module is in exactly one (a new module fails the checks until placed).
# The serving part is what a served step and the SDK load: it reaches neither torch nor the models part, so
# a Triton Python backend and the client run in installs without torch.
SERVING_CORE = frozenset(
    {
        "fitguard",
        "fitguard.admission",
        "fitguard.cache",
        "fitguard.contract",
        "fitguard.dali_check",
        "fitguard.dali_preprocess",
        "fitguard.detector",
        "fitguard.guarantee",
        "fitguard.health",
        "fitguard.labels",
        "fitguard.manifest",
        "fitguard.monitoring",
        "fitguard.parameters",
        "fitguard.photos",
        "fitguard.preprocess",
        "fitguard.presets",
        "fitguard.repository",
        "fitguard.steps",
    }
)
# The models part: the torch architectures and weights, the torch originals of each step, the in-process
# reference pipelines and the build's forward passes. It may import the serving part, never the reverse.
MODELS_CORE = frozenset(
    {
        "fitguard.backbones",
        "fitguard.classifier",
        "fitguard.classifier_spec",
        "fitguard.feature_graph",
        "fitguard.quality",
        "fitguard.reference",
        "fitguard.torch_onnx",
        "fitguard.torchvision_arch",
        "fitguard.weights",
    }
)
# What the serving part must never load, directly or through anything it imports.
TORCH = frozenset({"torch", "torchvision"})
# Examples and measurements run as ``python scripts/x.py``: they may import anything of the project and
# nothing imports them.
SCRIPTS = tuple(sorted((ROOT / "scripts").glob("*.py")))
ARCHITECTURE = ROOT / "docs" / "architecture.md"
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


def import_names(path: Path, module: str | None = None) -> set[str]:
    """Every absolute name a file imports, the project's and third-party ones (``from pkg import sub``
    counts as ``pkg.sub`` where that is a project module), and the project modules it names in strings."""
    known = modules()
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
            names |= {node.value} & known.keys()
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
    return names


def imported(path: Path, module: str | None = None) -> set[str]:
    """The project modules a file imports."""
    return {r for n in import_names(path, module) if (r := resolve(n)) is not None and r != module}


def third_party(path: Path, module: str | None = None) -> set[str]:
    """The top-level names of what a file imports from outside the project (``torch``, ``numpy``, ...)."""
    return {n.partition(".")[0] for n in import_names(path, module) if resolve(n) is None}


@cache
def graph() -> dict[str, frozenset[str]]:
    return {name: frozenset(imported(path, name)) for name, path in modules().items()}


@cache
def outside_imports() -> dict[str, frozenset[str]]:
    return {name: frozenset(third_party(path, name)) for name, path in modules().items()}


def chain_to_torch(origin: str, first: Iterable[str], direct: Iterable[str] = ()) -> list[str] | None:
    """The shortest import chain from ``origin`` (a served step, a module) to torch, torchvision or a
    module of the models part, or None where there is none. ``first``: the project modules ``origin``
    imports; ``direct``: its third-party imports."""
    if hit := sorted(TORCH & set(direct)):
        return [origin, hit[0]]
    parent: dict[str, str] = {m: origin for m in sorted(first)}
    queue = deque(parent)
    while queue:
        node = queue.popleft()
        torch = sorted(TORCH & outside_imports()[node])
        if node in MODELS_CORE or torch:
            path = [node, *torch[:1]]
            while node != origin:
                node = parent[node]
                path.insert(0, node)
            return path
        for child in sorted(graph()[node] - parent.keys() - {origin}):
            parent[child] = node
            queue.append(child)
    return None


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


def test_every_core_module_is_in_one_part() -> None:
    core = {m for m in modules() if layer(m) == "core"}
    assert not SERVING_CORE & MODELS_CORE, "a module in both parts"
    assert not core - SERVING_CORE - MODELS_CORE, "place each new core module in SERVING_CORE or MODELS_CORE"
    assert not (SERVING_CORE | MODELS_CORE) - core, "listed in a part but not a core module"


@pytest.mark.parametrize("module", sorted(SERVING_CORE))
def test_the_serving_part_never_reaches_torch(module: str) -> None:
    chain = chain_to_torch(module, graph()[module], outside_imports()[module])
    assert chain is None, " -> ".join(chain or [])


@pytest.mark.parametrize(
    "origin",
    [*SERVED_BACKENDS, *sorted(m for m in modules() if layer(m) == "fitguard.client")],
    ids=lambda o: str(o.relative_to(ROOT)) if isinstance(o, Path) else o,
)
def test_served_steps_and_the_sdk_never_reach_torch(origin: Path | str) -> None:
    """Transitively, through every lazy import: a Triton backend and ``fitguard.client`` load no torch."""
    if isinstance(origin, Path):
        name, first, direct = str(origin.relative_to(ROOT)), imported(origin), third_party(origin)
    else:
        name, first, direct = origin, graph()[origin], outside_imports()[origin]
    chain = chain_to_torch(name, first, direct)
    assert chain is None, " -> ".join(chain or [])


@pytest.mark.parametrize("module", sorted(MODELS_CORE))
def test_the_models_part_needs_torch(module: str) -> None:
    """The split stays honest: a models module that reaches no torch belongs to the serving part."""
    reached, todo = set(), [module]
    while todo:
        node = todo.pop()
        if node not in reached:
            reached.add(node)
            todo += graph()[node]
    assert any(TORCH & outside_imports()[m] for m in reached), f"{module} reaches no torch: move it"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_script_imports_the_project(script: Path) -> None:
    """Scripts sit on top: they import commands, products and the core (anything of the project)."""
    assert imported(script), f"{script.name} imports nothing of the project"


def test_nothing_imports_a_script() -> None:
    importers = [*modules().values(), *SERVED_BACKENDS, *SCRIPTS]
    users = [p for p in importers if any(n.split(".")[0] == "scripts" for n in import_names(p))]
    assert len(SCRIPTS) >= 5 and not users, [str(p.relative_to(ROOT)) for p in users]


def drawn_arrows() -> set[tuple[str, str]]:
    """The arrows between commands and products in docs/architecture.md's picture (``a, b ─> c, d``)."""
    picture = ARCHITECTURE.read_text(encoding="utf-8").split("```")[1]
    arrows = set()
    for left, right in re.findall(
        r"^\s*(?:commands|products)?\s*([a-z_, ]+?)\s*─+>\s*([a-z_, ]+)", picture, re.M
    ):
        for a in left.split(","):
            arrows |= {
                (f"fitguard.{a.strip()}", f"fitguard.{b.strip()}") for b in right.split(",") if b.strip()
            }
    return arrows


def test_the_architecture_picture_draws_exactly_the_imports() -> None:
    """Every arrow of the picture between commands and products is an import, and every such import is
    drawn (arrows into the core are implied for all of them)."""
    drawn = drawn_arrows()
    assert drawn, "no arrows found in the picture"
    actual = {
        (layer(m), layer(b))
        for m, bs in graph().items()
        for b in bs
        if layer(m) != layer(b) and "core" not in (layer(m), layer(b))
    }
    assert not drawn - actual, f"stale arrows: {sorted(drawn - actual)}"
    assert not actual - drawn, f"imports not drawn: {sorted(actual - drawn)}"


def test_the_checks_see_every_package() -> None:
    """The rules above are not vacuous: every product has modules and the core has the step modules."""
    layers = {layer(m) for m in modules()}
    assert set(PRODUCTS) <= layers and "core" in layers
    steps = {"fitguard.preprocess", "fitguard.classifier", "fitguard.quality", "fitguard.detector"}
    assert steps <= {m for m in modules() if layer(m) == "core"}
    assert len(SERVED_BACKENDS) >= 3
    assert any(b.startswith("fitguard.training.data") for b in graph()["fitguard.training.fit.train"])
    # the torch check sees torch where it is, lazy imports included
    assert chain_to_torch("fitguard.classifier_spec", graph()["fitguard.classifier_spec"]) is not None
    assert "torch" in outside_imports()["fitguard.weights"]


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
