"""Bad input reaching a real combiner over loopback gRPC.

Each test runs one round with a good client and a bad one. The bad update gets
a precise refusal (Ack.reason), a warning event naming client and round, and
the round's partial is exactly the good client's update: nothing of the bad
input leaks into the aggregate.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedkube.model import load_model, save_model
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.rpc import bearer
from fedkube.store import update_key
from tests.support.combiner import (
    REDUCER_TOKEN,
    UNKNOWN_CLIENT_TOKEN,
    CombinerHarness,
    FakeClient,
    seed_model,
)


@pytest.fixture
def comb(tmp_path):
    h = CombinerHarness(tmp_path, max_bytes=4096)
    yield h
    h.close()


def good_update() -> dict[str, np.ndarray]:
    m = seed_model()
    m["w"] += 1.5
    m["b"] -= 2.0
    m["count"] += 1
    return m


def start_round(comb: CombinerHarness) -> tuple[FakeClient, FakeClient, object, pb.Task, pb.Task]:
    good, bad = comb.client("good"), comb.client("bad")
    comb.wait_connected(2)
    call = comb.run_round(quota=2)
    return good, bad, call, good.next_task(), bad.next_task()


def finish_with_good(comb, good, call, task) -> pb.Partial:
    sha = good.upload(task, good_update())
    ack = good.report(task, num_examples=7, digest=sha)
    assert ack.accepted, ack
    partial = call.result()
    assert partial.n_updates == 1
    assert list(partial.participants) == ["good"]
    merged = load_model(comb.store.local_path(partial.key))
    for name, arr in good_update().items():
        np.testing.assert_array_equal(merged[name], arr)
    assert partial.weight == 7
    return partial


def eventually(cond, timeout: float = 10.0) -> None:
    """Events are written by a background thread: give them a moment."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not met in time"
        time.sleep(0.02)


def rejected_event(comb, client: str, round: int = 1):
    def find():
        return [
            e
            for e in comb.state.list_events("toy")
            if e.client == client and e.kind in ("UpdateRejected", "UpdateIgnored")
        ]

    eventually(lambda: bool(find()))
    evs = find()
    assert evs, [(e.kind, e.message) for e in comb.state.list_events("toy")]
    assert evs[-1].round == round
    assert evs[-1].level == "warning"
    assert client in evs[-1].message and f"round {round}" in evs[-1].message
    return evs[-1]


BAD_TENSORS = {
    "wrong_names": lambda m: {"v" if k == "w" else k: a for k, a in m.items()},
    "wrong_shape": lambda m: {**m, "w": np.zeros(9, np.float32)},
    "wrong_dtype": lambda m: {**m, "w": m["w"].astype(np.float64)},
    "not_finite_nan": lambda m: {**m, "w": np.full(8, np.nan, np.float32)},
    "not_finite_inf": lambda m: {**m, "b": np.full((2, 2), -np.inf, np.float32)},
    "too_large": lambda m: {**m, "pad": np.zeros(2048, np.float32)},
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_bad_tensors_are_rejected_and_round_unaffected(comb, case, caplog):
    caplog.set_level(logging.WARNING, logger="fedkube")
    good, bad, call, tg, tb = start_round(comb)
    sha = bad.upload(tb, BAD_TENSORS[case](good_update()))
    ack = bad.report(tb, num_examples=1000, digest=sha)
    expected_reason = case.removesuffix("_nan").removesuffix("_inf")
    assert not ack.accepted
    assert ack.reason == expected_reason, ack
    if case == "wrong_names":
        assert "'w'" in ack.message and "'v'" in ack.message
    if case.startswith("wrong_shape"):
        assert "'w'" in ack.message and "[9]" in ack.message
    ev = rejected_event(comb, "bad")
    assert expected_reason in ev.message
    assert any(
        getattr(r, "fields", {}).get("client") == "bad"
        and getattr(r, "fields", {}).get("reason") == expected_reason
        for r in caplog.records
    )
    finish_with_good(comb, good, call, tg)
    recs = {u.client: u for u in comb.state.list_updates("toy", 1)}
    assert recs["bad"].status == "rejected" and recs["bad"].reason == expected_reason
    assert recs["good"].status == "accepted"


def test_corrupt_file_is_rejected(comb):
    good, bad, call, tg, tb = start_round(comb)
    bad.upload(tb, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\x00" * 64)
    ack = bad.report(tb, num_examples=5)
    assert (ack.accepted, ack.reason) == (False, "corrupt")
    assert "corrupt" in rejected_event(comb, "bad").message
    finish_with_good(comb, good, call, tg)


def test_truncated_file_is_rejected(comb, tmp_path):
    good, bad, call, tg, tb = start_round(comb)
    bad.upload(tb, good_update())
    path = Path(tb.upload.path)
    path.write_bytes(path.read_bytes()[:-5])
    ack = bad.report(tb, num_examples=5)
    assert (ack.accepted, ack.reason) == (False, "corrupt")
    finish_with_good(comb, good, call, tg)


def test_checksum_mismatch_is_rejected(comb):
    good, bad, call, tg, tb = start_round(comb)
    bad.upload(tb, good_update())
    ack = bad.report(tb, num_examples=5, digest="0" * 64)
    assert (ack.accepted, ack.reason) == (False, "checksum")
    finish_with_good(comb, good, call, tg)


@pytest.mark.parametrize(
    "digest", ["xxh3-128:" + "0" * 32, "md5:" + "0" * 32, "xxh3-128:not-hex", "sha256:" + "0" * 64]
)
def test_digest_mismatch_or_unknown_algorithm_is_rejected(comb, digest):
    good, bad, call, tg, tb = start_round(comb)
    bad.upload(tb, good_update())
    ack = bad.report(tb, num_examples=5, digest=digest)
    assert (ack.accepted, ack.reason) == (False, "checksum")
    assert "digest" in ack.message
    finish_with_good(comb, good, call, tg)


def test_zero_examples_is_rejected(comb):
    good, bad, call, tg, tb = start_round(comb)
    sha = bad.upload(tb, good_update())
    ack = bad.report(tb, num_examples=0, digest=sha)
    assert (ack.accepted, ack.reason) == (False, "bad_weight")
    finish_with_good(comb, good, call, tg)


def test_unknown_task_is_ignored(comb):
    good, bad, call, tg, tb = start_round(comb)
    forged = pb.Task()
    forged.CopyFrom(tb)
    forged.task_id = "not-a-real-task"
    ack = bad.report(forged, num_examples=5)
    assert (ack.accepted, ack.reason) == (False, "unknown_task")
    rejected_event(comb, "bad")
    # The real task of the same client is still open and counts normally.
    sha = bad.upload(tb, good_update())
    assert bad.report(tb, num_examples=3, digest=sha).accepted
    sha = good.upload(tg, good_update())
    assert good.report(tg, num_examples=7, digest=sha).accepted
    partial = call.result()
    assert partial.n_updates == 2 and partial.weight == 10


def test_duplicate_report_is_ignored_and_not_double_counted(comb):
    good, bad, call, tg, tb = start_round(comb)
    sha = bad.upload(tb, good_update())
    assert bad.report(tb, num_examples=3, digest=sha).accepted
    again = bad.report(tb, num_examples=3, digest=sha)
    assert (again.accepted, again.reason) == (False, "duplicate")
    sha = good.upload(tg, good_update())
    assert good.report(tg, num_examples=7, digest=sha).accepted
    partial = call.result()
    assert partial.n_updates == 2
    assert partial.weight == 10  # 3 + 7, the duplicate counted nowhere
    updates = comb.state.list_updates("toy", 1)
    assert [u.client for u in updates if u.status == "accepted"] == ["bad", "good"]


def test_report_for_past_round_is_ignored(comb):
    good, bad, call, tg, tb = start_round(comb)
    sha = good.upload(tg, good_update())
    good.report(tg, num_examples=7, digest=sha)
    bad.report(tb, error="gave up")
    first = call.result()
    assert first.n_updates == 1
    # Round 2 starts; a late report for round 1 arrives.
    comb.store.put_file("jobs/toy/models/000001.safetensors", comb.store.local_path(first.key))
    call2 = comb.run_round(round=2, quota=2)
    t2g, t2b = good.next_task(), bad.next_task()
    late = bad.report(tb, num_examples=50)  # its round-1 task, after round 2 began
    assert (late.accepted, late.reason) == (False, "past_round")
    stale = pb.Task()
    stale.CopyFrom(t2b)
    stale.round, stale.task_id = 1, "old-task"
    late2 = bad.report(stale, num_examples=50)
    assert (late2.accepted, late2.reason) == (False, "past_round")
    for c, t, n in ((good, t2g, 2), (bad, t2b, 6)):
        sha = c.upload(t, good_update())
        assert c.report(t, num_examples=n, digest=sha).accepted
    p2 = call2.result()
    assert (p2.n_updates, p2.weight) == (2, 8)


def test_missing_or_wrong_client_token_is_refused(comb):
    cases = {
        None: "missing token",
        "wrong-token": "not a client token",
        UNKNOWN_CLIENT_TOKEN: "unknown or revoked client token",
        REDUCER_TOKEN: "not a client token",
    }
    for i, (token, why) in enumerate(cases.items()):
        c = comb.client(f"intruder-{i}", token=token)
        with pytest.raises(grpc.RpcError) as exc:
            c.next_task(timeout=10)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert why in exc.value.details()
    st = comb.control.Status(pb.StatusRequest(), metadata=bearer(REDUCER_TOKEN))
    assert st.connected == 0
    # Refusals from one peer are merged: the first is an event at once, the rest are
    # counted into one later event.
    eventually(lambda: [e.kind for e in comb.state.list_events("toy")].count("AuthFailed") >= 1)
    first = next(e for e in comb.state.list_events("toy") if e.kind == "AuthFailed")
    assert "missing token" in first.message and "127.0.0.1" in first.message


def test_client_token_cannot_drive_rounds(comb):
    with pytest.raises(grpc.RpcError) as exc:
        comb.control.Status(pb.StatusRequest(), metadata=bearer(comb.token_for("good")))
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "reducer token" in exc.value.details()


def test_report_with_wrong_token_is_refused(comb):
    good, bad, call, tg, tb = start_round(comb)
    sha = bad.upload(tb, good_update())
    bad.md = bearer("wrong-token")
    with pytest.raises(grpc.RpcError) as exc:
        bad.report(tb, num_examples=5, digest=sha)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    bad.md = bearer(comb.token_for("bad"))
    assert bad.report(tb, error="gave up").reason == "client_error"  # the task was still open
    finish_with_good(comb, good, call, tg)


def test_client_failure_is_recorded(comb):
    good, bad, call, tg, tb = start_round(comb)
    ack = bad.report(tb, error="RuntimeError: CUDA out of memory")
    assert (ack.accepted, ack.reason) == (False, "client_error")
    eventually(lambda: any(e.kind == "TrainFailed" for e in comb.state.list_events("toy")))
    ev = [e for e in comb.state.list_events("toy") if e.kind == "TrainFailed"]
    assert ev and "CUDA out of memory" in ev[0].message and ev[0].client == "bad"
    partial = finish_with_good(comb, good, call, tg)
    assert partial.failed == 1


def test_a_stale_update_file_from_a_crashed_run_does_not_count(comb):
    """A file already at a client's update key when its task is made (left by a
    crashed run of the same attempt) is removed: a report without a new upload is
    refused as missing, not accepted with the stale file."""
    path = comb.store.local_path(update_key("toy", 1, 1, "bad"))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, good_update())
    other = comb.store.local_path(update_key("toy", 1, 1, "nobody"))
    save_model(other, good_update())
    good, bad, call, tg, tb = start_round(comb)
    assert not path.exists()
    assert other.exists()  # only the selected clients' keys are cleared
    ack = bad.report(tb, num_examples=5)
    assert (ack.accepted, ack.reason) == (False, "missing")
    finish_with_good(comb, good, call, tg)
