"""Check the import layering in .importlinter: python scripts/lint_imports.py [--root DIR]

Plain `lint-imports` cannot check fedkube: the components live in top-level
folders (operator/, combiner/, client/, dashboard/) that the editable install
maps to fedkube.<component> with setuptools' mapping finder, and grimp builds
its graph by walking the fedkube/ folder, where they are not. So this script
builds a temporary tree whose fedkube/ links every entry of the real fedkube/
folder plus each mapped folder under its package name (read from
[tool.setuptools] package-dir in pyproject.toml), and runs import-linter with
that tree first on sys.path. Nothing in the repository is written.

Any further arguments go to lint-imports (for example --verbose or
--contract ID). Exits with lint-imports' status: 0 if every contract holds.
--print-mapping prints the mapped folders (JSON: subpackage -> absolute
folder) and checks nothing. tests/unit/test_layers.py runs this.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "fedkube"
CONFIG = ".importlinter"


def mapped_folders(root: Path) -> dict[str, Path]:
    """Subpackages of fedkube that the package-dir mapping puts outside fedkube/."""
    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    package_dir: dict[str, str] = cfg.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    out: dict[str, Path] = {}
    for name, folder in package_dir.items():
        parent, _, child = name.partition(".")
        if parent != PACKAGE or not child or "." in child:
            continue
        src = (root / folder).resolve()
        if src != (root / PACKAGE / child).resolve():
            out[child] = src
    return out


def build_tree(root: Path, dest: Path) -> Path:
    """Populate dest/fedkube with symlinks; return dest (the sys.path entry)."""
    pkg = dest / PACKAGE
    pkg.mkdir()
    for entry in sorted((root / PACKAGE).iterdir()):
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    for child, src in mapped_folders(root).items():
        link = pkg / child
        if link.exists() or link.is_symlink():
            raise SystemExit(f"{PACKAGE}/{child} exists and is also mapped to {src}")
        if not (src / "__init__.py").is_file():
            raise SystemExit(f"{src} (mapped to {PACKAGE}.{child}) is not a package")
        link.symlink_to(src, target_is_directory=True)
    return dest


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="Repository root to check.")
    parser.add_argument(
        "--print-mapping", action="store_true", help="print the mapped folders (JSON) and exit"
    )
    args, rest = parser.parse_known_args(argv)
    root = args.root.resolve()
    if args.print_mapping:
        print(json.dumps({k: str(v) for k, v in mapped_folders(root).items()}, indent=2))
        return 0
    config = root / CONFIG
    if not config.is_file():
        print(f"no {CONFIG} in {root}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fedkube-lint-imports-") as tmp:
        tree = build_tree(root, Path(tmp))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(tree), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
        )
        env.pop("PYTHONSAFEPATH", None)
        # import-linter puts its working directory first on sys.path, so run it
        # from the tree: the linked fedkube/ shadows the editable install there.
        cmd = [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; "
            "sys.exit(lint_imports_command())",
            "--no-cache",
            "--no-logo",
            *rest,
            str(config),
        ]
        # TemporaryDirectory's cleanup unlinks the symlinks; it does not follow them.
        return subprocess.run(cmd, cwd=tree, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
