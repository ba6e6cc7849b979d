"""No function in the components is longer than MAX_LINES lines.

Long functions hide several jobs in one place (the reducer's 135-line attempt
once did seven); the components stay readable by keeping each function to one
job. Lines are counted with `ast`, from the `def` (decorators excluded) to the
function's last line, docstring and comments included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = ("reducer", "combiner", "client", "operator")
MAX_LINES = 80


def function_lengths(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length) of every function and method in `path`."""
    out: list[tuple[str, int, int]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                assert child.end_lineno is not None
                out.append((name, child.lineno, child.end_lineno - child.lineno + 1))
                walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(ast.parse(path.read_text(), filename=str(path)), "")
    return out


def sources() -> list[Path]:
    return sorted(p for c in COMPONENTS for p in (REPO / c).rglob("*.py"))


def test_the_components_have_sources() -> None:
    found = {p.relative_to(REPO).parts[0] for p in sources()}
    assert found == set(COMPONENTS)


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_function_is_longer_than_the_limit(path: Path) -> None:
    long = [
        f"{path.relative_to(REPO)}:{line} {name} is {n} lines (limit {MAX_LINES})"
        for name, line, n in function_lengths(path)
        if n > MAX_LINES
    ]
    assert not long, "\n".join(long)


def test_the_count_sees_nested_functions_and_methods(tmp_path: Path) -> None:
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_LINES))
    src = tmp_path / "m.py"
    src.write_text(f"class A:\n    def f(self):\n{body}\n\n    async def g(self):\n        pass\n")
    lengths = {name: n for name, _, n in function_lengths(src)}
    assert lengths == {"A.f": MAX_LINES + 1, "A.g": 2}
