"""Type-check the whole package as it is installed: python scripts/typecheck.py

Plain `mypy fedkube combiner client operator dashboard` checks each folder, but
imports of fedkube.operator, fedkube.combiner, ... from other modules resolve
to nothing (mypy does not understand setuptools' package-dir mapping) and are
silently typed Any. This script builds the same temporary tree of symlinks as
scripts/lint_imports.py (fedkube/ with the mapped folders linked in under
their package names) and runs mypy on it, so calls across components are
checked too. Paths in the report are mapped back to the repository's.
Further arguments go to mypy. Exits with mypy's status.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lint_imports import PACKAGE, ROOT, build_tree, mapped_folders


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="fedkube-typecheck-") as tmp:
        tree = build_tree(ROOT, Path(tmp))
        cmd = [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(Path(tmp) / ".mypy_cache"),
            *argv,
            PACKAGE,
        ]
        env = dict(os.environ, MYPYPATH=str(tree))
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        for child, src in mapped_folders(ROOT).items():
            out = out.replace(f"{PACKAGE}/{child}/", f"{src.relative_to(ROOT)}/")
        print(out, end="")
        return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
