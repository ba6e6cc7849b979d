"""Regenerate the FederatedJob CRD: python scripts/gen_crd.py [--check] [--output PATH]

Writes charts/fedkube/crds/federatedjobs.fedkube.dev.yaml from the pydantic
models in fedkube/spec.py (through fedkube.operator.crd.build_crd). Run it
after every change to the spec.
With --check, nothing is written; exits 1 if the file is missing or differs
from a fresh rendering (tests/unit/test_crd.py runs this).
--output PATH renders to another file (default: the chart's CRD).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedkube.operator.crd import render_crd_yaml

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path("charts/fedkube/crds/federatedjobs.fedkube.dev.yaml")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gen_crd.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--output", type=Path, default=None, help="file to write or check")
    args = parser.parse_args(argv)
    target: Path = args.output if args.output is not None else ROOT / OUTPUT
    text = render_crd_yaml()
    if args.check:
        if not target.is_file() or target.read_text() != text:
            print(f"stale generated CRD (run: python scripts/gen_crd.py):\n  {target}")
            return 1
        print("CRD is up to date")
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"CRD written: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
