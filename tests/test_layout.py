"""The package's shape stays readable: a small root, no module over 600 lines, long functions say why.

These are the limits the reshape set (DESIGN.md): a change should touch one room, and a new contributor
should find one idea per file.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "autosurgeon"
MAX_ROOT_MODULES = 12
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80  # code lines, docstring excluded
WHY = "long:"  # a comment on the line above the def that says why a function is longer


def _functions(path: Path):
    source = path.read_text()
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0]
            doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                and isinstance(first.value.value, str)
            start = first.end_lineno + 1 if doc and len(node.body) > 1 else first.lineno
            top = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            above = lines[top - 2].strip() if top >= 2 else ""
            yield node.name, node.lineno, node.end_lineno - start + 1, above


def test_the_root_holds_at_most_twelve_modules():
    modules = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(modules) <= MAX_ROOT_MODULES, modules


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := p.read_text().count("\n")) > MAX_MODULE_LINES}
    assert not long, f"split these by idea: {long}"


def test_long_functions_say_why():
    unexplained = [f"{p.relative_to(ROOT)}:{line} {name} ({n} lines)"
                   for p in ROOT.rglob("*.py") for name, line, n, above in _functions(p)
                   if n > MAX_FUNCTION_LINES and not (above.startswith("#") and WHY in above)]
    assert not unexplained, f"shorten these or say why above the def ('# {WHY} ...'): {unexplained}"
