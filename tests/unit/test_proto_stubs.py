"""The committed gRPC/protobuf stubs are what scripts/gen_proto.py generates.

The first test checks the real tree. The others prove the check can fail: they
run the script with ``--root`` at a copy of the proto folder in tmp_path, where
a stub or the .proto is changed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_proto.py"
PROTO = Path("fedkube/proto/v1/fedkube.proto")

GenProto = Callable[..., subprocess.CompletedProcess[str]]


def test_committed_stubs_are_fresh() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout


@pytest.fixture
def gen_proto(tmp_path: Path) -> GenProto:
    """Runs gen_proto.py (with the given arguments) on a copy of the proto folder."""
    shutil.copytree(
        REPO / PROTO.parent,
        tmp_path / PROTO.parent,
        ignore=shutil.ignore_patterns("__pycache__"),
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-P", str(SCRIPT), "--root", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def test_check_passes_on_an_unchanged_copy(gen_proto: GenProto) -> None:
    proc = gen_proto("--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout


@pytest.mark.parametrize("stub", ["fedkube_pb2.py", "fedkube_pb2.pyi", "fedkube_pb2_grpc.py"])
def test_check_fails_when_a_stub_is_edited(gen_proto: GenProto, tmp_path: Path, stub: str) -> None:
    target = tmp_path / PROTO.parent / stub
    target.write_text(target.read_text() + "# hand edit\n")
    proc = gen_proto("--check")
    assert proc.returncode == 1
    assert "stale generated stubs" in proc.stdout
    assert stub in proc.stdout
    assert target.read_text().endswith("# hand edit\n")  # --check writes nothing


def test_check_fails_when_a_stub_is_missing(gen_proto: GenProto, tmp_path: Path) -> None:
    (tmp_path / PROTO.parent / "fedkube_pb2_grpc.py").unlink()
    proc = gen_proto("--check")
    assert proc.returncode == 1
    assert "fedkube_pb2_grpc.py" in proc.stdout


def test_check_fails_when_the_proto_changes_until_regenerated(
    gen_proto: GenProto, tmp_path: Path
) -> None:
    proto = tmp_path / PROTO
    proto.write_text(proto.read_text() + "\nmessage AddedByTest {\n  string note = 1;\n}\n")
    proc = gen_proto("--check")
    assert proc.returncode == 1
    assert "fedkube_pb2.py" in proc.stdout and "fedkube_pb2.pyi" in proc.stdout
    # Regenerating (no --check) makes the copy fresh again.
    assert gen_proto().returncode == 0
    assert "AddedByTest" in (tmp_path / PROTO.parent / "fedkube_pb2.pyi").read_text()
    assert gen_proto("--check").returncode == 0
