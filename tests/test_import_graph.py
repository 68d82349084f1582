"""The import graph of the ``mailsuite`` package has no cycle (issue 10).

The graph is read from the source (the AST), not from ``sys.modules``: every ``import`` and
``from ... import`` counts, also those under ``if TYPE_CHECKING:`` and inside functions, since
a cycle hidden there is still a cycle in the design (two modules that cannot be understood,
typed or moved apart). Importing ``a.b.c`` also runs the packages ``a`` and ``a.b``, so they are
edges too, except the packages around the importing module itself (they run first anyway).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

from twisted.trial import unittest

import mailsuite

PACKAGE = "mailsuite"
ROOT = os.path.dirname(os.path.abspath(mailsuite.__file__))

Graph = dict[str, set[str]]


def modules(root: str = ROOT, package: str = PACKAGE) -> dict[str, str]:
    """``{dotted module name: path}`` of every ``.py`` file under ``root``."""
    found: dict[str, str] = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel = os.path.relpath(directory, root)
        parts = [package] + ([] if rel == "." else rel.split(os.sep))
        for name in sorted(files):
            if name.endswith(".py"):
                stem = name[:-3]
                module = ".".join(parts if stem == "__init__" else [*parts, stem])
                found[module] = os.path.join(directory, name)
    return found


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """The dotted names each import statement of ``module`` brings in (``from x import y``
    gives ``x`` and ``x.y``: which of them is a module is sorted out by the caller)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package of ``module``
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def import_graph(found: dict[str, str] | None = None) -> Graph:
    """``{module: modules of the package it imports}`` (the packages on the way included)."""
    found = modules() if found is None else found
    graph: Graph = {}
    for module, path in found.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        edges: set[str] = set()
        for name in _imported(tree, module, path.endswith("__init__.py")):
            parts = name.split(".")
            edges.update(".".join(parts[:n]) for n in range(1, len(parts) + 1))
        edges &= found.keys()
        edges.discard(module)
        # a package imports its own submodules at most; importing a.b.c runs a and a.b first:
        # those edges from a submodule to the packages above it are not cycles in the design
        graph[module] = {e for e in edges if not module.startswith(e + ".")}
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) for each strongly connected group of modules (Tarjan's
    algorithm, iterative: no recursion limit on a big graph)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph[step]))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return [_cycle_in(graph, set(group)) for group in groups]


def _cycle_in(graph: Graph, group: set[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected ``group``."""
    first = min(group)
    paths = {first: [first]}
    frontier = [first]
    while frontier:
        following = []
        for node in frontier:
            for step in sorted(graph[node] & group):
                if step == first:
                    return [*paths[node], first]
                if step not in paths:
                    paths[step] = [*paths[node], step]
                    following.append(step)
        frontier = following
    raise AssertionError(f"{sorted(group)} is not strongly connected")  # pragma: no cover


class ImportGraphTests(unittest.TestCase):
    def test_no_import_cycle(self) -> None:
        """No module of mailsuite imports, directly or through others, itself: each cycle
        found is named module by module."""
        found = cycles(import_graph())
        self.assertEqual(found, [], "import cycles: " + "; ".join(" -> ".join(c) for c in found))

    def test_graph_sees_every_kind_of_import(self) -> None:
        """The graph has the edges of a top-level import, a ``from`` import of a module or of
        a name, a relative import, and imports under TYPE_CHECKING and inside a function."""
        root = self.mktemp()
        os.makedirs(os.path.join(root, "sub"))
        sources = {
            "__init__.py": "",
            "a.py": "import pkg.b\n",
            "b.py": "from pkg.sub import c\n",
            "sub/__init__.py": "",
            "sub/c.py": "from ..d import name\n",
            "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n",
            "e.py": "def f():\n    from pkg.a import x\n",
        }
        for name, text in sources.items():
            with open(os.path.join(root, name), "w", encoding="utf-8") as f:
                f.write(text)
        graph = import_graph(modules(root, "pkg"))
        self.assertEqual(graph["pkg.a"], {"pkg.b"})
        self.assertEqual(graph["pkg.b"], {"pkg.sub", "pkg.sub.c"})
        self.assertEqual(graph["pkg.sub.c"], {"pkg.d"})
        self.assertEqual(graph["pkg.d"], {"pkg.e"})
        self.assertEqual(graph["pkg.e"], {"pkg.a"})
        self.assertEqual(cycles(graph),
                         [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.d", "pkg.e", "pkg.a"]])
