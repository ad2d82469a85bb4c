"""No import cycles among the package's modules, counting imports inside functions too.

A function-level import hides a cycle from Python at import time, not from a reader: each one here
means two modules that need each other, which is one module's job split in two.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import autoquant_sweep

PACKAGE_DIR = Path(autoquant_sweep.__file__).parent


def _module_files() -> dict[str, Path]:
    files = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    return files


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its body (``from pkg import sub`` counts as
    an import of ``pkg.sub``; of ``pkg`` only when ``sub`` is a name, not a module)."""
    return {name: set(targets) for name, targets in _parsed_graph().items()}  # a copy the caller may change


@functools.cache  # parsing the whole package takes ~0.5 s; two tests read the same graph
def _parsed_graph() -> dict[str, frozenset[str]]:
    files = _module_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in files and t != name)
    return {name: frozenset(targets) for name, targets in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(out)


def test_the_cycle_finder_sees_a_function_level_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_holds_the_function_level_imports() -> None:
    graph = import_graph()
    # tracking/callbacks.py imports the recommendation inside on_multirun_end only
    assert "autoquant_sweep.tracking.recommendation" in graph["autoquant_sweep.tracking.callbacks"]
    assert "autoquant_sweep.objectives" in graph["autoquant_sweep.tracking.summary"]


def test_no_import_cycles_in_the_package() -> None:
    graph = import_graph()
    found = cycles(graph)
    described = ["; ".join(f"{m} -> {', '.join(sorted(graph[m] & set(c)))}" for m in c) for c in found]
    assert found == [], "import cycles:\n" + "\n".join(described)
