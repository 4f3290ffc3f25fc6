"""Imports show the dependency graph: project modules are imported at module top, and layers only import down.

Two rules, checked on the source (no import needed):
- An import of a project module inside a function is allowed only in the CLI (``autosurgeon/cli/``: ``--help``
  must not import torch) or with a ``# lazy: <reason>`` comment on its line saying why (an import cycle, a
  heavy or optional dependency the module's callers do not all need, a device touched only when asked).
- A module-level import never goes up a layer: runtime < autosurgeon < envs < agents < experiments (the CLI,
  which sits on top of everything, imports upward only inside functions or with a ``# lazy:`` reason).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"runtime": 0, "autosurgeon": 1, "envs": 2, "agents": 3, "experiments": 4}
FREE = ("autosurgeon/cli/", "autosurgeon/__init__.py", "autosurgeon/__main__.py")
LAZY = "# lazy:"


def _sources():
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path.read_text()


def _project_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module] if node.level == 0 and node.module and node.module.split(".")[0] in LAYERS else []
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] in LAYERS]
    return []


def _says_why(lines: list[str], node: ast.AST) -> bool:
    return any(LAZY in line for line in lines[node.lineno - 1:node.end_lineno])


def test_project_imports_inside_functions_say_why() -> None:
    unexplained = []
    for rel, source in _sources():
        if rel.startswith(FREE) or not rel.startswith(("autosurgeon/", "runtime/", "envs/", "agents/")):
            continue
        lines = source.splitlines()
        for fn in ast.walk(ast.parse(source)):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if _project_modules(node) and not _says_why(lines, node):
                        unexplained.append(f"{rel}:{node.lineno}")
    assert not unexplained, ("import these at module top, or say why not with '# lazy: <reason>': "
                             f"{sorted(set(unexplained))}")


def test_module_level_imports_never_go_up_a_layer() -> None:
    upward = []
    for rel, source in _sources():
        layer = LAYERS[rel.split("/")[0]]
        lines = source.splitlines()
        for node in ast.parse(source).body:
            for inner in (node.body if isinstance(node, ast.Try) else [node]):
                for module in _project_modules(inner):
                    if LAYERS[module.split(".")[0]] > layer and not _says_why(lines, inner):
                        upward.append(f"{rel}:{inner.lineno} imports {module}")
    assert not upward, f"module-level imports from a higher layer: {upward}"
