"""The import graph points one way: doors → sales core → execution, resources, keys, usage, payments → db.

Every import counts, also those under ``if TYPE_CHECKING`` and inside functions: a circle there is still a circle
for the next person reading the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import instant402

ROOT = Path(instant402.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(("instant402", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        found[name] = path
    return found


def _graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _circle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start → … → start, if there is one."""
    todo, came_from = [start], {}
    while todo:
        node = todo.pop()
        for nxt in graph[node]:
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if nxt not in came_from:
                came_from[nxt] = node
                todo.append(nxt)
    return None


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_no_module_imports_itself_through_others():
    graph = _graph()
    circles = [c for m in graph if (c := _circle_through(graph, m))]
    assert circles == []


def test_payments_execution_and_runtime_never_reach_back_into_the_core():
    graph = _graph()
    for module, targets in graph.items():
        if _package(module) in {"payments", "execution", "runtime", "resources", "keys", "usage", "db"}:
            assert not {t for t in targets if _package(t) == "sales"}, module
        if _package(module) == "payments":
            assert not {t for t in targets if _package(t) == "execution"}, module
        if _package(module) == "execution":
            assert not {t for t in targets if _package(t) == "payments"}, module


def test_product_code_never_imports_the_devnet():
    graph = _graph()
    importers = {_package(m) for m, targets in graph.items() if any(_package(t) == "devnet" for t in targets)}
    assert importers <= {"devnet", "sandbox"}, importers
