"""Regenerate the gRPC/protobuf stubs: python scripts/gen_proto.py [--check] [--root DIR]

Runs grpc_tools.protoc on fedkube/proto/v1/fedkube.proto and writes
fedkube_pb2.py, fedkube_pb2.pyi and fedkube_pb2_grpc.py next to it.
With --check, nothing is written; exits 1 if the committed stubs differ from
freshly generated ones (tests/unit/test_proto_stubs.py runs this).
--root DIR works on the fedkube/proto/v1/ folder under DIR instead of this
repository's (the tests use a copy).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("fedkube/proto/v1/fedkube.proto")
OUTPUTS = ("fedkube_pb2.py", "fedkube_pb2.pyi", "fedkube_pb2_grpc.py")


def generate(root: Path, out_root: Path) -> None:
    cmd = [
        sys.executable,
        "-P",  # never the repo root on sys.path: operator/ would shadow the stdlib
        "-m",
        "grpc_tools.protoc",
        f"-I{root}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(root / PROTO),
    ]
    subprocess.run(cmd, check=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gen_proto.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the stubs are stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="tree to work on")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        generate(root, Path(tmp))
        gen_dir = Path(tmp) / PROTO.parent
        stale = []
        for name in OUTPUTS:
            new = (gen_dir / name).read_text()
            target = root / PROTO.parent / name
            if args.check:
                if not target.exists() or target.read_text() != new:
                    stale.append(str(target.relative_to(root)))
            else:
                shutil.copyfile(gen_dir / name, target)
    if stale:
        print("stale generated stubs (run: python scripts/gen_proto.py):", *stale, sep="\n  ")
        return 1
    print("stubs are up to date" if args.check else "stubs written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
