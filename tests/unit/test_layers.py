"""The import layering in .importlinter holds (checked by scripts/lint_imports.py).

The failure tests run the same script on a copy of the tree in tmp_path where
one module gains a forbidden import, to prove each contract can break (and so
that the mapped component folders are really in the graph).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "lint_imports.py"
COMPONENTS = ("operator", "reducer", "combiner", "client", "dashboard")

INDEPENDENT = "Components are independent of each other"
PURE_CORE = "The pure core imports no I/O"
CORE_BELOW = "The core does not import components"
DASHBOARD_PURE = "The dashboard's frames, charts and config import no I/O"
CONTRACTS = {INDEPENDENT, PURE_CORE, CORE_BELOW, DASHBOARD_PURE}


def lint(root: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_layering_holds() -> None:
    proc = lint()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for name in CONTRACTS:
        assert f"{name} KEPT" in out
    assert "0 broken" in out


def test_mapped_folders_come_from_pyproject() -> None:
    proc = subprocess.run(
        [sys.executable, "-P", str(SCRIPT), "--root", str(REPO), "--print-mapping"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mapping = {k: Path(v) for k, v in json.loads(proc.stdout).items()}
    assert mapping == {c: (REPO / c).resolve() for c in COMPONENTS}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package, the component folders and the configs."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("fedkube", *COMPONENTS):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=ignore)
    for name in ("pyproject.toml", ".importlinter"):
        shutil.copyfile(REPO / name, tmp_path / name)
    return tmp_path


def add_import(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}  # added by test_layers\n")


def test_copy_of_the_tree_passes(tree: Path) -> None:
    proc = lint(tree)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("module", "line", "contract", "shown"),
    [
        # (core modules no component imports: reducer -> selection -> combiner
        # would break the independence contract as well)
        (
            "fedkube/devenv/mongo.py",
            "import fedkube.combiner.verify",
            CORE_BELOW,
            "fedkube.devenv.mongo -> fedkube.combiner.verify",
        ),
        (
            "fedkube/localrun.py",
            "from fedkube.dashboard import __name__ as _d",
            CORE_BELOW,
            "fedkube.localrun -> fedkube.dashboard",
        ),
        (
            "fedkube/localrun.py",
            "import fedkube.reducer.health",
            CORE_BELOW,
            "fedkube.localrun -> fedkube.reducer.health",
        ),
        ("fedkube/model.py", "import sqlite3", PURE_CORE, "fedkube.model -> sqlite3"),
        ("fedkube/vocabulary.py", "import grpc", PURE_CORE, "fedkube.vocabulary -> grpc"),
        ("fedkube/spec.py", "import grpc", PURE_CORE, "fedkube.spec -> grpc"),
        # Indirect: task -> store -> ... is forbidden too.
        ("fedkube/task.py", "import fedkube.store", PURE_CORE, "fedkube.task -> fedkube.store"),
        (
            "client/transfer.py",
            "import fedkube.combiner.verify",
            INDEPENDENT,
            "fedkube.client.transfer -> fedkube.combiner.verify",
        ),
        (
            "reducer/health.py",
            "import fedkube.combiner.verify",
            INDEPENDENT,
            "fedkube.reducer.health -> fedkube.combiner.verify",
        ),
        (
            "combiner/server.py",
            "import fedkube.reducer",
            INDEPENDENT,
            "fedkube.combiner.server -> fedkube.reducer",
        ),
        (
            "dashboard/__init__.py",
            "import fedkube.operator",
            INDEPENDENT,
            "fedkube.dashboard -> fedkube.operator",
        ),
        (
            "dashboard/frames.py",
            "import streamlit",
            DASHBOARD_PURE,
            "fedkube.dashboard.frames -> streamlit",
        ),
        (
            "dashboard/charts.py",
            "import fedkube.state.sqlite",
            DASHBOARD_PURE,
            "fedkube.dashboard.charts -> fedkube.state.sqlite",
        ),
    ],
)
def test_a_forbidden_import_breaks_the_check(
    tree: Path, module: str, line: str, contract: str, shown: str
) -> None:
    add_import(tree / module, line)
    proc = lint(tree)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"{contract} BROKEN" in out
    assert shown in out
    # The other contracts are still reported as kept.
    for other in CONTRACTS - {contract}:
        assert f"{other} KEPT" in out


def test_missing_config_is_an_error(tmp_path: Path) -> None:
    proc = lint(tmp_path)
    assert proc.returncode == 2
    assert ".importlinter" in proc.stderr
