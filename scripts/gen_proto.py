"""Regenerate the gRPC/protobuf stubs: python scripts/gen_proto.py [--check]

Runs grpc_tools.protoc on fedkube/proto/v1/fedkube.proto and writes
fedkube_pb2.py, fedkube_pb2.pyi and fedkube_pb2_grpc.py next to it.
With --check, nothing is written; exits 1 if the committed stubs differ from
freshly generated ones (tests/unit/test_proto_stubs.py runs this).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("fedkube/proto/v1/fedkube.proto")
OUTPUTS = ("fedkube_pb2.py", "fedkube_pb2.pyi", "fedkube_pb2_grpc.py")


def generate(out_root: Path) -> None:
    cmd = [
        sys.executable,
        "-P",  # never the repo root on sys.path: operator/ would shadow the stdlib
        "-m",
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(ROOT / PROTO),
    ]
    subprocess.run(cmd, check=True)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        gen_dir = Path(tmp) / PROTO.parent
        stale = []
        for name in OUTPUTS:
            new = (gen_dir / name).read_text()
            target = ROOT / PROTO.parent / name
            if check:
                if not target.exists() or target.read_text() != new:
                    stale.append(str(target.relative_to(ROOT)))
            else:
                shutil.copyfile(gen_dir / name, target)
    if stale:
        print("stale generated stubs (run: python scripts/gen_proto.py):", *stale, sep="\n  ")
        return 1
    print("stubs are up to date" if check else "stubs written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
