"""Import graph of the dekr package: no cycle, no private cross-module import, a leaf dekr.maps.

The graph is read from the source with ``ast``: every ``import`` / ``from ... import`` statement
counts, at module level, inside functions and methods, and under ``if TYPE_CHECKING:`` alike.
``from dekr.models import adaptive`` is an edge to the submodule ``dekr.models.adaptive``; the
implicit import of a parent package (``dekr/__init__.py`` before ``dekr.decoder``) is not an edge.
The helpers take the folder and the import root, so ``tests/test_tools.py`` reads ``tools/`` too.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

from conftest import REPO

PACKAGE = REPO / "dekr"


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    """The dotted name of ``path`` when ``root`` is on ``sys.path``."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(folder: Path = PACKAGE, root: Path = PACKAGE.parent) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(folder.rglob("*.py"))}


def imports_of(
    path: Path, modules: dict[str, Path], root: Path = PACKAGE.parent
) -> list[tuple[str, list[str]]]:
    """(imported module of ``modules``, names taken from it) for each import statement of a file."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, list[str]]] = []

    def resolve(dotted: str) -> Optional[str]:
        while dotted and dotted not in modules:  # `import dekr.models.dekr.DEKR` is not valid,
            dotted = dotted.rpartition(".")[0]  # but `import a.b` names module a.b
        return dotted or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name)
                if target:
                    found.append((target, []))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if resolve(base) is None:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:  # from dekr.models import adaptive
                    found.append((sub, []))
                else:
                    found.append((resolve(base), [alias.name]))
    return found


def import_graph(folder: Path = PACKAGE, root: Path = PACKAGE.parent) -> dict[str, set[str]]:
    """Module of ``folder`` -> the modules of ``folder`` it imports."""
    modules = package_modules(folder, root)
    return {
        name: {target for target, _ in imports_of(path, modules, root) if target != name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> Optional[list[str]]:
    """One import cycle as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> Optional[list[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_function_level_and_submodule_imports() -> None:
    graph = import_graph()
    assert "dekr.training" in graph["dekr.cli"]  # imported inside a function
    assert "dekr.models.adaptive" in graph["dekr.export"]  # from dekr.models import adaptive
    assert "dekr.decoder" in graph["dekr"]  # under TYPE_CHECKING
    assert {"dekr.maps", "dekr.matching"} <= graph["dekr.decoder"]
    assert "dekr.maps" in graph["dekr.matching"] and "dekr.maps" in graph["dekr.export"]


def test_no_import_cycle_in_package() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_private_cross_module_import() -> None:
    modules = package_modules()
    private = [
        f"{module_name(path)}: from {target} import {name}"
        for path in modules.values()
        for target, names in imports_of(path, modules)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


def test_maps_is_a_leaf_module() -> None:
    """dekr.maps imports only torch and the standard library."""
    tree = ast.parse((PACKAGE / "maps.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"__future__", "collections", "torch"}, roots
