"""The committed gRPC/protobuf stubs are what scripts/gen_proto.py generates.

The first test checks the real tree. The others prove the check can fail: they
run gen_proto's own functions with ROOT pointed at a copy of the proto folder in
tmp_path, where a stub or the .proto is changed.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_proto.py"


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
def gen_proto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """gen_proto loaded from the repo, with ROOT at a copy of the proto folder."""
    spec = importlib.util.spec_from_file_location("gen_proto_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    proto_dir = module.PROTO.parent
    shutil.copytree(
        REPO / proto_dir,
        tmp_path / proto_dir,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    monkeypatch.setattr(module, "ROOT", tmp_path)
    return module


def test_check_passes_on_an_unchanged_copy(
    gen_proto: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gen_proto.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize("stub", ["fedkube_pb2.py", "fedkube_pb2.pyi", "fedkube_pb2_grpc.py"])
def test_check_fails_when_a_stub_is_edited(
    gen_proto: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], stub: str
) -> None:
    target = tmp_path / gen_proto.PROTO.parent / stub
    target.write_text(target.read_text() + "# hand edit\n")
    assert gen_proto.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "stale generated stubs" in out
    assert stub in out
    assert target.read_text().endswith("# hand edit\n")  # --check writes nothing


def test_check_fails_when_a_stub_is_missing(
    gen_proto: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / gen_proto.PROTO.parent / "fedkube_pb2_grpc.py").unlink()
    assert gen_proto.main(["--check"]) == 1
    assert "fedkube_pb2_grpc.py" in capsys.readouterr().out


def test_check_fails_when_the_proto_changes_until_regenerated(
    gen_proto: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proto = tmp_path / gen_proto.PROTO
    proto.write_text(proto.read_text() + "\nmessage AddedByTest {\n  string note = 1;\n}\n")
    assert gen_proto.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "fedkube_pb2.py" in out and "fedkube_pb2.pyi" in out
    # Regenerating (no --check) makes the copy fresh again.
    assert gen_proto.main([]) == 0
    assert "AddedByTest" in (tmp_path / gen_proto.PROTO.parent / "fedkube_pb2.pyi").read_text()
    assert gen_proto.main(["--check"]) == 0
