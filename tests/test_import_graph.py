"""No import cycles in the package: each module's imports, read from its source (AST), form a DAG.

Every import counts, also the lazy ones inside functions and those under `if TYPE_CHECKING:`: a cycle hidden by
a lazy import is still two modules that cannot be understood (or changed) one without the other. Parent packages
are not edges (importing fastcifar.engine.step runs fastcifar/__init__.py, which imports nothing of its children).
The test also imports every module, so a file that cannot even be imported on a CPU machine is caught here.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as (setup.py's package_dir)
PACKAGES = {"fastcifar": "fastcifar", "loaders": "fastcifar.loaders", "bench": "fastcifar.bench"}
# modules that need an optional library are imported lazily; their files still parse
OPTIONAL = ("ffcv", "nvidia")
OPTIONAL_MODULES = ("fastcifar.loaders.ffcv_loader", "fastcifar.loaders.dali_loader")  # the only ones needing one


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package, up level - 1 more
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `from a.b import c`: the module a.b.c, else a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
        # parents are packages run on the way in: not dependencies of interest
    return {t for t in out if not name.startswith(t + ".")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycles():
    found = modules()
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    assert len(graph) > 50 and "fastcifar.engine.trainer" in graph["fastcifar.cli"]  # the walk really saw the code
    assert "fastcifar.engine.trainer" not in graph["fastcifar.engine.report"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_every_module_imports():
    for name in modules():
        if name.endswith("__main__"):  # `python -m fastcifar`: importing it runs the CLI
            continue
        try:
            importlib.import_module(name)
        except ImportError as error:  # only an optional backend may be missing, and only in its own loader file
            assert any(part in str(error) for part in OPTIONAL), f"{name}: {error}"
            assert name in OPTIONAL_MODULES, f"{name} needs an optional backend at import time: {error}"
