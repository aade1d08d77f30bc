"""The package's shape, as docs/architecture.md draws it."""

from __future__ import annotations

import ast
from pathlib import Path

import jetstream_server

PACKAGE = Path(jetstream_server.__file__).parent


def _undocumented(path: Path) -> list[str]:
    missing: list[str] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and \
                    not child.name.startswith("_"):
                if ast.get_docstring(child) is None:
                    missing.append(f"{path.name}:{child.lineno} {prefix}{child.name}")
                if isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(path.read_text()), "")
    return missing


def test_every_public_class_and_function_of_the_cores_and_the_client_says_what_it_is_for(
        ) -> None:
    paths = [*sorted((PACKAGE / "protocol").glob("*.py")),
             *sorted((PACKAGE / "core").glob("*.py")), PACKAGE / "client.py"]
    missing = [name for path in paths for name in _undocumented(path)]
    assert missing == []


def test_every_module_says_what_it_holds() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.stat().st_size:
            assert ast.get_docstring(ast.parse(path.read_text())), path
