"""Hostile and careless clients against real combiners, reducers and processes.

Each test plays one attack through fedkube's own protocol (real gRPC on
loopback, real state store and object store) and checks that it is refused or
bounded, that it is recorded, and that the honest clients' result is exactly
what it would have been without the attacker (or the documented policy result).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedkube.client.runner import InProcessRunner
from fedkube.client.runtime import ClientConfig, ClientRuntime
from fedkube.model import load_model, save_model, sha256_file
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.reducer import Reducer, ReducerConfig
from fedkube.rpc import bearer
from fedkube.spec import parse_job
from fedkube.state import open_state_store
from fedkube.store import model_key, open_object_store
from fedkube.vocabulary import AttemptStatus, EventKind, Phase
from tests.support import toy_task
from tests.support.combiner import REDUCER_TOKEN, CombinerHarness, seed_model
from tests.support.federation import Federation, toy_manifest, write_job

HOSTILE = Path(__file__).resolve().parents[1] / "support" / "hostile.py"
TOY_TRAIN = "tests.support.toy_task:train"


def eventually(cond, timeout: float = 20.0, what: str = "") -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out: {what}")


def events(comb: CombinerHarness, kind: str) -> list:
    return [e for e in comb.state.list_events("toy") if e.kind == kind]


def good_update() -> dict[str, np.ndarray]:
    m = seed_model()
    m["w"] += 1.0
    m["count"] += 1
    return m


@pytest.fixture
def comb(tmp_path):
    h = CombinerHarness(tmp_path)  # heartbeat 5 s: its FakeClients do not heartbeat
    yield h
    h.close()


@pytest.fixture
def fast_comb(tmp_path):
    """Heartbeats every second (the real clients of these tests heartbeat)."""
    h = CombinerHarness(tmp_path, heartbeat=1.0)
    yield h
    h.close()


# ------------------------------------------------------------ identity


def test_impersonation_with_another_clients_credential_is_refused(comb):
    alice = comb.client("alice")
    comb.token_for("mallory")
    comb.wait_connected(1)
    # Mallory holds a valid credential, her own, and claims to be alice.
    impostor = comb.client("alice", token=comb.token_for("mallory"))
    with pytest.raises(grpc.RpcError) as exc:
        impostor.next_task(timeout=10)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "issued to client 'mallory', not 'alice'" in exc.value.details()
    # Alice keeps her stream and gets her task; mallory cannot report it as alice.
    call = comb.run_round(quota=1)
    task = alice.next_task()
    sha = alice.upload(task, good_update())
    impostor.md = bearer(comb.token_for("mallory"))
    with pytest.raises(grpc.RpcError) as exc:
        impostor.report(task, num_examples=10**12, digest=sha)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert alice.report(task, num_examples=7, digest=sha).accepted
    partial = call.result()
    assert list(partial.participants) == ["alice"] and partial.weight == 7
    eventually(lambda: events(comb, EventKind.IMPERSONATION), what="an Impersonation event")
    ev = events(comb, EventKind.IMPERSONATION)[0]
    assert "'alice'" in ev.message and "'mallory'" in ev.message


def test_second_stream_for_a_connected_client_is_refused(comb):
    alice = comb.client("alice")
    comb.wait_connected(1)
    again = comb.client("alice")  # the same credential: a copy of alice's token
    with pytest.raises(grpc.RpcError) as exc:
        again.next_task(timeout=10)
    assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS
    call = comb.run_round(quota=1)
    task = alice.next_task()  # the first stream still gets the task
    assert alice.report(task, num_examples=3, digest=alice.upload(task, good_update())).accepted
    assert list(call.result().participants) == ["alice"]
    eventually(lambda: events(comb, EventKind.DUPLICATE_STREAM), what="a DuplicateStream event")


def test_revoking_one_client_closes_its_stream_only(comb):
    alice, bob = comb.client("alice"), comb.client("bob")
    comb.wait_connected(2)
    assert comb.state.revoke_credentials("toy", "bob") == 1
    with pytest.raises(grpc.RpcError):
        bob.next_task(timeout=30)  # the combiner closes bob's stream on its next reload
    eventually(lambda: events(comb, EventKind.CREDENTIAL_REVOKED), what="CredentialRevoked")
    st = comb.control.Status(pb.StatusRequest(), metadata=bearer(REDUCER_TOKEN))
    assert st.connected == 1
    again = comb.client("bob")  # bob's old token
    with pytest.raises(grpc.RpcError) as exc:
        again.next_task(timeout=10)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    call = comb.run_round(quota=2)
    task = alice.next_task()
    assert alice.report(task, num_examples=2, digest=alice.upload(task, good_update())).accepted
    assert list(call.result().participants) == ["alice"]


def test_cli_issues_lists_and_revokes(tmp_path):
    state = open_state_store(f"sqlite:///{tmp_path / 'state.db'}")
    state.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-P", "-m", "fedkube", "clients", *args, "--workdir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    issued = cli("issue", "toy", "site-1", "--note", "hospital A")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert token.startswith("fkc_") and "site-1" in issued.stderr
    listed = cli("list", "toy", "-o", "json")
    rows = json.loads(listed.stdout)
    assert [(r["client"], r["note"], r["revoked_at"]) for r in rows] == [
        ("site-1", "hospital A", None)
    ]
    assert token not in listed.stdout and "digest" not in rows[0]
    assert cli("revoke", "toy", "site-1").returncode == 0
    assert json.loads(cli("list", "toy", "-o", "json").stdout) == []
    assert len(json.loads(cli("list", "toy", "-o", "json", "--all").stdout)) == 1
    again = cli("revoke", "toy", "site-1")
    assert again.returncode != 0 and "no live credential" in again.stderr
    bad = cli("issue", "toy", "bad id with spaces")
    assert bad.returncode != 0 and "client id" in bad.stderr


# ------------------------------------------------------------ weights and robust merges


def hostile_run(tmp_path: Path, clients: int, **spec) -> tuple[Federation, dict]:
    """One round of the toy job over two combiners; client-3 claims 10^12 examples
    and adds 100 to every weight of its update."""
    cfg = {"claim": {"client-3": 10**12}, "offset": {"client-3": 100.0}}
    m = toy_manifest(rounds=1, clients=clients, config=cfg, **spec)
    m["spec"]["validation"] = {"enabled": False}
    fed = Federation(write_job(tmp_path / "job", m), tmp_path / "work").start()
    assert fed.wait_reducer() == 0, fed.log("reducer")
    final = load_model(store_path(fed, model_key("toy", 1)))
    return fed, final


def store_path(fed: Federation, key: str) -> Path:
    path = open_object_store(fed.fed.store_uri).local_path(key)
    assert path is not None
    return Path(path)


def updates(n: int, attacker: int = 3) -> np.ndarray:
    """Every client's trained w after round 1 (from the zero seed)."""
    w = np.stack([0.5 * toy_task.target(i) for i in range(n)]).astype(np.float64)
    w[attacker] += 100.0
    return w


def test_claimed_examples_are_capped_for_fedavg(tmp_path):
    fed, final = hostile_run(tmp_path, 4, weights={"maxExamples": 20})
    with fed:
        weights = np.array([toy_task.examples(i) for i in range(4)], np.float64)
        weights[3] = 20  # the policy: the claim of 10^12 counts as 20
        want = (weights[:, None] * updates(4)).sum(0) / weights.sum()
        np.testing.assert_allclose(final["w"], want, rtol=1e-5)
        recs = [u for u in fed.state.list_updates("toy", 1) if u.client == "client-3"]
        assert [(r.num_examples, r.weight) for r in recs] == [(10**12, 20.0)]
        capped = [e for e in fed.state.list_events("toy") if e.kind == EventKind.WEIGHT_CAPPED]
        assert capped and "client-3" in capped[0].message


def test_median_over_two_combiners_ignores_claims(tmp_path):
    # client i is on combiner i % 2: combiner-1 has clients 1, 3 (the attacker) and 5.
    fed, final = hostile_run(tmp_path, 6, aggregator={"name": "median"})
    with fed:
        w = updates(6)
        per_combiner = [np.median(w[[0, 2, 4]], axis=0), np.median(w[[1, 3, 5]], axis=0)]
        want = np.mean(per_combiner, axis=0)  # two partials of 3 updates each
        np.testing.assert_allclose(final["w"], want, rtol=1e-5, atol=1e-6)
        honest = w[[0, 1, 2, 4, 5]]
        assert (final["w"] <= honest.max(0) + 1e-5).all()  # the attacker moved nothing out


# ------------------------------------------------------------ committed models


def test_a_command_writing_into_in_model_changes_nothing_committed(tmp_path):
    m = toy_manifest(rounds=3, clients=2, config={"scribble": True})
    m["spec"]["clients"]["simulation"]["inProcess"] = False  # the train command form
    with Federation(write_job(tmp_path / "job", m), tmp_path / "work").start() as fed:
        assert fed.wait_reducer() == 0, fed.log("reducer")
        assert fed.state.get_job("toy").phase == Phase.SUCCEEDED
        for rec in fed.state.list_models("toy"):
            path = store_path(fed, rec.key)
            assert sha256_file(path) == rec.sha256, f"model of round {rec.round} changed"
        pulled = subprocess.run(
            [
                sys.executable,
                "-P",
                "-m",
                "fedkube",
                "models",
                "pull",
                "toy",
                "--round",
                "1",
                "-o",
                str(tmp_path / "r1.safetensors"),
                "--workdir",
                str(tmp_path / "work"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pulled.returncode == 0, pulled.stderr


# ------------------------------------------------------------ churn and floods


def honest_runtimes(comb: CombinerHarness, tmp_path: Path, n: int) -> list[ClientRuntime]:
    return [
        ClientRuntime(
            ClientConfig(
                address=comb.address,
                client_id=f"honest-{i}",
                job="toy",
                token=comb.token_for(f"honest-{i}"),
                workdir=tmp_path / f"honest-{i}",
                heartbeat_seconds=1.0,
                client_index=i,
                num_clients=n,
            ),
            InProcessRunner(TOY_TRAIN, None),
        )
        for i in range(n)
    ]


def run_job(comb: CombinerHarness, tmp_path: Path, runtimes, *, per_round: int, rounds: int):
    """The real reducer runs a toy job against the harness's combiner."""
    job = parse_job(
        {
            **comb.job.to_manifest(),
            "spec": {
                **comb.job.to_manifest()["spec"],
                "rounds": rounds,
                "clients": {
                    "perRound": per_round,
                    "minUpdates": per_round,
                    "heartbeatSeconds": 1,
                    "roundTimeoutSeconds": 60,
                },
                "validation": {"enabled": False},
            },
        }
    )
    threads = [threading.Thread(target=rt.run, daemon=True) for rt in runtimes]
    for t in threads:
        t.start()
    reducer = Reducer(
        ReducerConfig(
            job=job,
            store=open_object_store(f"file://{tmp_path / 'store'}"),
            state=comb.state,
            combiners={"c0": comb.address},
            reducer_token=REDUCER_TOKEN,
            workdir=tmp_path / "reducer",
            poll_seconds=0.05,
        )
    )
    try:
        return reducer.run()
    finally:
        reducer.close()
        for rt in runtimes:
            rt.stop()
        for t in threads:
            t.join(10)


def use_toy_seed(comb: CombinerHarness) -> None:
    seed = comb.tmp / "toy-seed.safetensors"
    save_model(seed, toy_task.init())
    comb.store.put_file(model_key("toy", 0), seed)


def fedavg_of_honest(n: int, rounds: int) -> np.ndarray:
    ex = np.array([toy_task.examples(i) for i in range(n)], np.float64)
    t = np.stack([toy_task.target(i) for i in range(n)]).astype(np.float64)
    return (1 - 0.5**rounds) * (ex[:, None] * t).sum(0) / ex.sum()


def test_churn_does_not_fail_rounds(fast_comb, tmp_path):
    """200 clients come and go (the picked ones leave at once); 4 honest clients
    stay. Every round commits on its first attempt with the honest updates."""
    comb = fast_comb
    use_toy_seed(comb)
    tokens = {f"churn-{i}": comb.token_for(f"churn-{i}") for i in range(200)}
    (tmp_path / "tokens.json").write_text(json.dumps(tokens))
    crowd = subprocess.Popen(
        [
            sys.executable,
            "-P",
            str(HOSTILE),
            "churn",
            comb.address,
            str(tmp_path / "tokens.json"),
            "600",
        ]
    )
    try:
        runtimes = honest_runtimes(comb, tmp_path, 4)
        time.sleep(3)  # the crowd is connected and churning before the job starts
        phase = run_job(comb, tmp_path, runtimes, per_round=4, rounds=3)
    finally:
        crowd.kill()
        crowd.wait(30)
    assert phase == Phase.SUCCEEDED, comb.state.get_job("toy")
    rounds = comb.state.get_rounds("toy")
    assert [(r.round, r.attempt, r.status) for r in rounds] == [
        (r, 1, AttemptStatus.COMPLETED) for r in (1, 2, 3)
    ], [(r.round, r.attempt, r.status, r.reason) for r in rounds]
    for r in rounds:
        assert sorted(r.participants) == [f"honest-{i}" for i in range(4)]
    final = load_model(comb.store.local_path(model_key("toy", 3)))
    np.testing.assert_allclose(final["w"], fedavg_of_honest(4, 3), rtol=1e-5, atol=1e-6)


FLOOD_SECONDS = 60.0


def test_a_minute_of_unauthenticated_calls_is_cheap(fast_comb, tmp_path):
    comb = fast_comb
    use_toy_seed(comb)
    flood = subprocess.Popen(
        [sys.executable, "-P", str(HOSTILE), "flood", comb.address, str(FLOOD_SECONDS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    t0 = time.monotonic()
    try:
        time.sleep(FLOOD_SECONDS / 2)  # the flood is in full swing
        runtimes = honest_runtimes(comb, tmp_path, 2)
        phase = run_job(comb, tmp_path, runtimes, per_round=2, rounds=3)
        out, _ = flood.communicate(timeout=FLOOD_SECONDS + 60)
    finally:
        flood.kill()
    assert time.monotonic() - t0 >= FLOOD_SECONDS
    calls = int(out.strip())
    assert calls > 1000, f"the flood made only {calls} calls"
    assert phase == Phase.SUCCEEDED, comb.state.get_job("toy")
    rounds = comb.state.get_rounds("toy")
    assert [(r.attempt, r.status) for r in rounds] == [(1, AttemptStatus.COMPLETED)] * 3
    time.sleep(1)  # the combiner's event writes drain
    evs = comb.state.list_events("toy")
    assert len(evs) < 100, f"{len(evs)} events for {calls} refused calls"
    refused = [e for e in evs if e.kind == EventKind.AUTH_FAILED]
    assert refused, "the refusals were not recorded at all"
    final = load_model(comb.store.local_path(model_key("toy", 3)))
    np.testing.assert_allclose(final["w"], fedavg_of_honest(2, 3), rtol=1e-5, atol=1e-6)


def test_the_reducer_refuses_to_aggregate_against_a_changed_base(tmp_path):
    from fedkube.errors import RoundFailed
    from fedkube.reducer.merge import NamedPartial, merge_round
    from fedkube.store import partial_key

    job = parse_job(toy_manifest(rounds=2))
    store = open_object_store(f"file://{tmp_path / 'store'}")
    base = tmp_path / "base.safetensors"
    sha = save_model(base, toy_task.init())
    store.put_file(model_key("toy", 0), base)
    part = tmp_path / "partial.safetensors"
    save_model(part, toy_task.init())
    store.put_file(partial_key("toy", 1, 1, "c0"), part)
    partials = [NamedPartial("c0", partial_key("toy", 1, 1, "c0"), 10.0, 1)]
    kw = {"round": 1, "attempt": 1, "partials": partials, "workdir": tmp_path}
    assert merge_round(job, store, base_sha256=sha, **kw).key == model_key("toy", 1)
    committed = store.local_path(model_key("toy", 0))
    assert committed is not None
    toy_task.scribble(str(committed))  # someone wrote into the committed model
    with pytest.raises(RoundFailed, match="changed after it was committed"):
        merge_round(job, store, base_sha256=sha, **{**kw, "attempt": 2})


def test_the_reducer_reuses_the_model_it_wrote_until_the_stored_one_changes(tmp_path):
    """Round r merges against the model round r - 1 wrote, from the reducer's own
    disk (no download, no second hash), for as long as the stored object is the one
    it wrote; a model changed in the store is fetched and refused as before."""
    from fedkube.errors import RoundFailed
    from fedkube.reducer.merge import ModelCache, NamedPartial, merge_round
    from fedkube.store import partial_key

    job = parse_job(toy_manifest(rounds=3))
    store = open_object_store(f"file://{tmp_path / 'store'}")
    fetched: list[str] = []
    real_fetch = store.fetch
    store.fetch = lambda key, dest: fetched.append(key) or real_fetch(key, dest)  # type: ignore[method-assign]
    sha = save_model(base := tmp_path / "base.safetensors", toy_task.init())
    store.put_file(model_key("toy", 0), base)
    cache = ModelCache(tmp_path / "models")

    def merge(r: int, base_sha: str, attempt: int = 1):
        save_model(part := tmp_path / f"p{r}.safetensors", toy_task.init())
        store.put_file(partial_key("toy", r, attempt, "c0"), part)
        partials = [NamedPartial("c0", partial_key("toy", r, attempt, "c0"), 10.0, 1)]
        return merge_round(job, store, round=r, attempt=attempt, partials=partials,
                           workdir=tmp_path, base_sha256=base_sha, cache=cache)  # fmt: skip

    first = merge(1, sha)
    assert fetched == [model_key("toy", 0)]  # nothing kept yet: round 0 was downloaded
    second = merge(2, first.sha256)
    assert fetched == [model_key("toy", 0)]  # round 1 came from the cache
    assert load_model(store.local_path(second.key)) is not None
    toy_task.scribble(str(store.local_path(model_key("toy", 2))))  # changed behind its back
    with pytest.raises(RoundFailed, match="changed after it was committed"):
        merge(3, second.sha256)
    assert fetched[-1] == model_key("toy", 2)  # the cache saw the new version and refused it
