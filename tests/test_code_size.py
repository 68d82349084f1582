"""Issue 10's size limits on the package: no module over 600 lines, no function over 60.

A module or function past them is a sign that two things share one place; the failure names
each one and its length, so the fix (a cut along what it does) starts from the list.
"""

from __future__ import annotations

import ast

from twisted.trial import unittest

from tests.test_import_graph import modules

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


def too_long() -> list[str]:
    """Every module and function of ``mailsuite`` over its limit, as ``path: what (lines)``."""
    found = []
    for path in modules().values():
        with open(path, encoding="utf-8") as f:
            source = f.read()
        lines = source.count("\n")
        if lines > MAX_MODULE_LINES:
            found.append(f"{path}: module ({lines} lines)")
        for node in ast.walk(ast.parse(source, path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path}:{node.lineno}: {node.name} ({length} lines)")
    return found


class CodeSizeTests(unittest.TestCase):
    def test_modules_and_functions_within_limits(self) -> None:
        """No module of mailsuite/ is over 600 lines and no function over 60."""
        self.assertEqual(too_long(), [])
