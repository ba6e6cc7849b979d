"""The round's vocabulary (fedkube/vocabulary.py) is the only source of its words.

The combiner's code is read with `ast`: every reason it can put into an Ack is
a member of `Reason` (written as ``Reason.NAME``, or the ``reason`` of an
``UpdateRejected`` it caught, whose constructor takes a `Reason`); file checks
carry their reason in the `ModelFileError` they raise, and changing a message
cannot change a reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from fedkube.combiner.verify import check_report, read_update
from fedkube.errors import ModelFileError, UpdateRejected
from fedkube.model import read_header, save_model
from fedkube.store.local import LocalObjectStore
from fedkube.vocabulary import (
    SETTLED,
    AssignmentStatus,
    AttemptReason,
    EventKind,
    Phase,
    Reason,
    interrupted_by_restart,
)

REPO = Path(__file__).resolve().parents[2]
COMBINER = sorted((REPO / "combiner").glob("*.py"))
PROTO = REPO / "fedkube" / "proto" / "v1" / "fedkube.proto"


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    """Calls of `name(...)` or `x.name(...)`."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == name) or (
                isinstance(f, ast.Attribute) and f.attr == name
            ):
                out.append(node)
    return out


def _reason_member(node: ast.expr) -> str | None:
    """NAME for an expression `Reason.NAME` (or `A if c else B` of two such), else None."""
    if isinstance(node, ast.IfExp):
        a, b = _reason_member(node.body), _reason_member(node.orelse)
        return a if a is not None and b in Reason.__members__ else None
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "Reason"
    ):
        return node.attr
    return None


def _caught_rejections(tree: ast.AST) -> set[str]:
    """Names bound by `except UpdateRejected as NAME`."""
    return {
        h.name
        for h in ast.walk(tree)
        if isinstance(h, ast.ExceptHandler)
        and isinstance(h.type, ast.Name)
        and h.type.id == "UpdateRejected"
        and h.name
    }


def test_the_combiner_has_ack_calls_to_check() -> None:
    found = sum(len(_calls(ast.parse(p.read_text()), "Ack")) for p in COMBINER)
    assert found >= 10  # the scan below sees the combiner's real code


@pytest.mark.parametrize("path", COMBINER, ids=lambda p: p.name)
def test_every_ack_reason_the_combiner_sends_is_a_reason(path: Path) -> None:
    tree = ast.parse(path.read_text())
    caught = _caught_rejections(tree)
    bad = []
    for call in _calls(tree, "Ack"):
        for kw in call.keywords:
            if kw.arg != "reason":
                continue
            v = kw.value
            member = _reason_member(v)
            ok = member in Reason.__members__ or (
                isinstance(v, ast.Attribute)
                and v.attr == "reason"
                and isinstance(v.value, ast.Name)
                and v.value.id in caught
            )
            if not ok:
                bad.append(f"{path.name}:{call.lineno}: reason={ast.unparse(v)}")
    assert not bad, bad


@pytest.mark.parametrize("path", [*COMBINER, REPO / "fedkube" / "errors.py"], ids=lambda p: p.name)
def test_every_rejection_names_a_reason(path: Path) -> None:
    bad = []
    for call in _calls(ast.parse(path.read_text()), "UpdateRejected"):
        if not call.args:
            continue
        first = call.args[0]
        member = _reason_member(first)
        passes_one_on = isinstance(first, ast.Attribute) and first.attr == "reason"
        if member not in Reason.__members__ and not passes_one_on:
            bad.append(f"{path.name}:{call.lineno}: {ast.unparse(first)}")
    assert not bad, bad


def test_model_file_errors_name_their_reason_in_code() -> None:
    """No ModelFileError in fedkube/model.py is left to a reason derived from its text."""
    tree = ast.parse((REPO / "fedkube" / "model.py").read_text())
    for call in _calls(tree, "ModelFileError"):
        if len(call.args) > 1:
            assert _reason_member(call.args[1]) in Reason.__members__, ast.unparse(call)


def test_no_code_maps_messages_to_reasons() -> None:
    src = (REPO / "combiner" / "verify.py").read_text()
    assert "_reason_for" not in src
    assert "in msg" not in src


def test_the_proto_documents_every_reason() -> None:
    text = PROTO.read_text()
    ack = text[text.index("message Ack") :]
    ack = ack[: ack.index("}")]
    missing = [r.value for r in Reason if f'"{r.value}"' not in ack]
    assert not missing, f"fedkube.proto's Ack comment lacks {missing}"


def test_words_are_unique_and_well_formed() -> None:
    for enum, pattern in (
        (Reason, r"^[a-z]+(_[a-z]+)*$"),
        (AttemptReason, r"^[a-z]+(_[a-z]+)*$"),
        (AssignmentStatus, r"^[a-z]+$"),
        (Phase, r"^[A-Z][a-z]+$"),
        (EventKind, r"^[A-Z][A-Za-z]+$"),
    ):
        values = [m.value for m in enum]
        assert len(values) == len(set(values)), enum
        assert all(re.match(pattern, v) for v in values), enum
    assert set(SETTLED) == set(AssignmentStatus) - {
        AssignmentStatus.PENDING,
        AssignmentStatus.CHECKING,
    }


def test_a_member_is_its_string() -> None:
    assert Reason.DUPLICATE == "duplicate" and f"{Reason.DUPLICATE}" == "duplicate"
    assert {"running"} == {Phase.RUNNING.value.lower()}
    assert "Succeeded" in (Phase.SUCCEEDED, Phase.FAILED)


def test_interrupted_attempts_are_told_apart_by_their_reason() -> None:
    assert interrupted_by_restart(AttemptReason.REDUCER_RESTARTED)
    assert interrupted_by_restart("reducer restarted")  # what fedkube 0.1 stored
    assert not interrupted_by_restart("3 updates aggregated, clients.minUpdates is 4")


# ---------------------------------------------------------------- file reasons


def _model(tmp: Path, name: str, tensors: dict[str, np.ndarray]) -> Path:
    path = tmp / name
    save_model(path, tensors)
    return path


GLOBAL = {"w": np.zeros(4, np.float32), "b": np.zeros((2, 2), np.float32)}


@pytest.mark.parametrize(
    ("case", "tensors", "reason"),
    [
        ("names", {"w": np.zeros(4, np.float32), "x": np.zeros((2, 2), np.float32)}, "wrong_names"),
        ("shape", {"w": np.zeros(5, np.float32), "b": np.zeros((2, 2), np.float32)}, "wrong_shape"),
        ("dtype", {"w": np.zeros(4, np.float64), "b": np.zeros((2, 2), np.float32)}, "wrong_dtype"),
        (
            "nan",
            {"w": np.array([0, np.nan, 0, 0], np.float32), "b": np.zeros((2, 2), np.float32)},
            "not_finite",
        ),
    ],
)
def test_file_checks_carry_their_reason(
    tmp_path: Path, case: str, tensors: dict[str, np.ndarray], reason: str
) -> None:
    template = read_header(_model(tmp_path, "global.safetensors", GLOBAL))
    path = _model(tmp_path, f"{case}.safetensors", tensors)
    with pytest.raises(UpdateRejected) as info:
        read_update(LocalObjectStore(tmp_path), path.name, template, max_bytes=1 << 20)
    assert info.value.reason == reason and isinstance(info.value.reason, Reason)


def test_corrupt_and_oversized_files_carry_their_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(UpdateRejected) as info:
        read_update(LocalObjectStore(tmp_path), bad.name, None, max_bytes=1 << 20)
    assert info.value.reason == Reason.CORRUPT
    big = _model(tmp_path, "big.safetensors", GLOBAL)
    with pytest.raises(UpdateRejected) as info:
        read_update(LocalObjectStore(tmp_path), big.name, None, max_bytes=16)
    assert info.value.reason == Reason.TOO_LARGE


def test_a_reworded_message_keeps_its_reason() -> None:
    exc = ModelFileError("a message that names no known problem", Reason.WRONG_SHAPE)
    assert UpdateRejected.from_file_error(exc).reason == Reason.WRONG_SHAPE
    assert ModelFileError("anything").reason == Reason.CORRUPT


def test_report_claims_name_their_reason() -> None:
    with pytest.raises(UpdateRejected) as info:
        check_report(0, {})
    assert info.value.reason == Reason.BAD_WEIGHT
    with pytest.raises(UpdateRejected) as info:
        check_report(3, {"loss": float("nan")})
    assert info.value.reason == Reason.BAD_METRICS
