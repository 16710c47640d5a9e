"""The package's shape, as the house rules state it: no import cycle, front doors import no private names,
analysis does not reach into the simulator, and modules stay small enough to read."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "relion_canon"
FRONT_DOORS = ("relion_canon.cli", "relion_canon.relion", "relion_canon.cryosparc")
MAX_MODULE_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module imported, name imported or '') for every import of the package, at any depth of the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("relion_canon"):
            out += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(alias.name, "") for alias in node.names if alias.name.startswith("relion_canon")]
    return out


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for module, imported in _imports(path):
            target = f"{module}.{imported}" if f"{module}.{imported}" in MODULES else module
            if target in MODULES and target != name:
                edges[name].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in MODULES:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
                    found.append(sorted(component))
    return found


def _is_package_parent(a: str, b: str) -> bool:
    """A package's ``__init__`` importing its own submodule (and that submodule importing a sibling through
    the package) is how a package exposes its API, not a dependency cycle between ideas."""
    return a.startswith(b + ".") or b.startswith(a + ".")


def test_the_import_graph_has_no_cycle():
    edges = _graph()
    for name in list(edges):
        edges[name] = {t for t in edges[name] if not _is_package_parent(name, t)}
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"relion_canon.job": {"relion_canon.analysis"},
                    "relion_canon.analysis": {"relion_canon.job"}}) == [
        ["relion_canon.analysis", "relion_canon.job"]]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith(FRONT_DOORS)))
def test_front_doors_import_no_private_names(name):
    private = [f"{module}.{imported}" for module, imported in _imports(MODULES[name])
               if imported.startswith("_") and not imported.startswith("__")
               or any(part.startswith("_") and not part.startswith("__") for part in module.split("."))]
    assert private == []


def test_analysis_does_not_import_the_simulator():
    offenders = [(name, module) for name, path in MODULES.items() if name.startswith("relion_canon.analysis")
                 for module, _ in _imports(path) if module.startswith("relion_canon.simulate")]
    assert offenders == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_the_size_a_reader_takes_in(name):
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_MODULE_LINES, f"{MODULES[name]}: {lines} lines"


MAX_FUNCTION_LINES = 60


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_function_is_longer_than_a_screen(name):
    """A longer function is a sequence of steps that want names; one that must stay long says why in its
    docstring with the words "long because"."""
    too_long = []
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES and "long because" not in (ast.get_docstring(node) or ""):
                too_long.append(f"{node.name} ({length} lines)")
    assert too_long == []
