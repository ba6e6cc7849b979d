"""Whole federations of real processes on loopback gRPC (the toy numpy task).

The toy client i moves the weights halfway to its target t_i, so after R FedAvg
rounds from zeros the global model is (1 - 0.5**R) * sum(n_i t_i) / sum(n_i):
any double-counted or lost update shows in the final weights.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml

from fedkube.model import load_model
from fedkube.store import model_key, open_object_store
from fedkube.vocabulary import AssignmentStatus, AttemptStatus, Phase
from tests.support import toy_task
from tests.support.federation import Federation, committed, toy_manifest, write_job

pytestmark = pytest.mark.slow


def expected_w(rounds: int, clients: list[int]) -> np.ndarray:
    n = np.array([toy_task.examples(i) for i in clients], np.float64)
    t = np.stack([toy_task.target(i) for i in clients]).astype(np.float64)
    mean = (n[:, None] * t).sum(0) / n.sum()
    return (1 - 0.5**rounds) * mean


def final_model(fed: Federation, r: int) -> dict[str, np.ndarray]:
    store = open_object_store(fed.fed.store_uri)
    return load_model(store.local_path(model_key(fed.name, r)))


def test_fedkube_run_cli_end_to_end(tmp_path):
    job = write_job(tmp_path / "job", toy_manifest(rounds=3, clients=4, combiners=2))
    wd = tmp_path / "wd"
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "fedkube", "run", str(job), "--workdir", str(wd)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3/3" in proc.stdout and "Succeeded" in proc.stdout
    st = subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "fedkube",
            "status",
            "toy",
            "--workdir",
            str(wd),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert st.returncode == 0, st.stderr
    data = json.loads(st.stdout)
    assert data["phase"] == Phase.SUCCEEDED and data["completedRounds"] == 3
    assert [h["round"] for h in data["roundHistory"]] == [1, 2, 3]
    for h in data["roundHistory"]:
        assert h["updates"] == 4 and len(h["participants"]) == 4
        assert set(h["timings"]) >= {"train_s", "merge_s", "total_s"}
        assert "loss" in h["metrics"] and "dist" in h["validation"]
    out = tmp_path / "m.safetensors"
    pull = subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "fedkube",
            "models",
            "pull",
            "toy",
            "-o",
            str(out),
            "--workdir",
            str(wd),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pull.returncode == 0, pull.stderr
    np.testing.assert_allclose(load_model(out)["w"], expected_w(3, [0, 1, 2, 3]), atol=1e-6)
    assert load_model(out)["count"].tolist() == [3]
    # A second run reports the finished job instead of training again.
    again = subprocess.run(
        [sys.executable, "-P", "-m", "fedkube", "run", str(job), "--workdir", str(wd), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0 and "already succeeded" in again.stdout


def test_hierarchical_equals_flat(tmp_path):
    finals = {}
    for n_comb in (1, 3):
        job = write_job(
            tmp_path / f"job{n_comb}",
            toy_manifest(name=f"toy{n_comb}", rounds=2, clients=6, combiners=n_comb),
        )
        with Federation(job, tmp_path / f"wd{n_comb}") as fed:
            fed.start()
            assert fed.wait_reducer() == 0, fed.log("reducer")
            finals[n_comb] = final_model(fed, 2)
            assert {p for r in committed(fed) for p in r.participants} == {
                f"client-{i}" for i in range(6)
            }
    np.testing.assert_allclose(finals[1]["w"], finals[3]["w"], atol=1e-6)
    np.testing.assert_allclose(finals[3]["w"], expected_w(2, list(range(6))), atol=1e-6)


def test_reducer_sigkill_mid_round_resumes_without_double_commit(tmp_path):
    job = write_job(
        tmp_path / "job", toy_manifest(rounds=4, clients=4, combiners=2, config={"sleep": 0.6})
    )
    with Federation(job, tmp_path / "wd") as fed:
        fed.start()
        # Kill the reducer while round 2 is training (round 1 committed).
        fed.wait_for(
            lambda: any(r.round == 2 for r in fed.state.get_rounds(fed.name)),
            what="round 2 to start",
        )
        assert fed.reducer is not None
        fed.kill(fed.reducer, signal.SIGKILL)
        assert len(committed(fed)) == 1
        fed.restart_reducer()
        assert fed.wait_reducer() == 0, fed.log("reducer")
        rounds = fed.state.get_rounds(fed.name)
        done = committed(fed)
        assert [r.round for r in done] == [1, 2, 3, 4]  # each round committed exactly once
        r2 = [r for r in rounds if r.round == 2]
        assert r2[0].status == AttemptStatus.FAILED and "restarted" in r2[0].reason
        assert r2[-1].status == AttemptStatus.COMPLETED and r2[-1].attempt == 2
        job_rec = fed.state.get_job(fed.name)
        assert job_rec.phase == Phase.SUCCEEDED and job_rec.completed_rounds == 4
        m = final_model(fed, 4)
        assert m["count"].tolist() == [4]
        np.testing.assert_allclose(m["w"], expected_w(4, [0, 1, 2, 3]), atol=1e-6)
        assert [x.round for x in fed.state.list_models(fed.name)] == [0, 1, 2, 3, 4]


def test_killed_client_with_quorum_round_completes(tmp_path):
    job = write_job(
        tmp_path / "job",
        toy_manifest(
            rounds=3,
            clients=4,
            combiners=2,
            min_updates=3,
            round_timeout=60,
            config={"crash": {"client-1": "exit"}, "crash_round": 2},
        ),
    )
    with Federation(job, tmp_path / "wd") as fed:
        fed.start()
        assert fed.wait_reducer() == 0, fed.log("reducer")
        done = {r.round: r for r in committed(fed)}
        assert sorted(done) == [1, 2, 3]
        assert done[2].n_updates == 3 and "client-1" not in done[2].participants
        assert done[2].attempt == 1
        # The dead client's stream closed: the round did not wait for the deadline.
        assert done[2].timings["train_s"] < 60
        kinds = [(e.kind, e.client) for e in fed.state.list_events(fed.name)]
        assert ("ClientLost", "client-1") in kinds


def test_hung_client_stalls_round_only_until_deadline(tmp_path):
    timeout = 4.0
    job = write_job(
        tmp_path / "job",
        toy_manifest(
            rounds=2,
            clients=3,
            combiners=1,
            min_updates=2,
            round_timeout=timeout,
            config={"crash": {"client-2": "hang"}, "crash_round": 1},
        ),
    )
    with Federation(job, tmp_path / "wd") as fed:
        fed.start()
        fed.wait_for(lambda: bool(committed(fed)), what="round 1 to commit", timeout=120)
        r1 = committed(fed)[0]
        assert r1.n_updates == 2 and "client-2" not in r1.participants
        # It waited for the deadline (the hung client never reported) and no longer.
        assert timeout * 0.9 <= r1.timings["train_s"] <= timeout + 5
        assert any(
            e.kind == "TaskTimedOut" and e.client == "client-2"
            for e in fed.state.list_events(fed.name)
        )


def test_killed_client_without_quorum_round_is_retried(tmp_path):
    job = write_job(
        tmp_path / "job",
        toy_manifest(
            rounds=2,
            clients=4,
            combiners=2,
            min_updates=4,
            round_timeout=60,
            config={"crash": {"client-1": "exit"}, "crash_round": 2},
        ),
    )
    with Federation(job, tmp_path / "wd") as fed:
        fed.start()
        fed.wait_for(
            lambda: any(
                r.round == 2 and r.status == AttemptStatus.FAILED
                for r in fed.state.get_rounds(fed.name)
            ),
            what="round 2 attempt 1 to fail",
        )
        fed.start_client(1)  # the orchestrator restarts the dead client
        assert fed.wait_reducer() == 0, fed.log("reducer")
        r2 = [r for r in fed.state.get_rounds(fed.name) if r.round == 2]
        assert r2[0].status == AttemptStatus.FAILED and "minUpdates" in r2[0].reason
        assert r2[-1].status == AttemptStatus.COMPLETED and r2[-1].n_updates == 4
        assert r2[-1].attempt >= 2
        assert [r.round for r in committed(fed)] == [1, 2]
        m = final_model(fed, 2)
        np.testing.assert_allclose(m["w"], expected_w(2, [0, 1, 2, 3]), atol=1e-6)


def test_subprocess_train_command_and_bad_client(tmp_path):
    """The command form of the entrypoint contract, with one client sending NaNs."""
    manifest = toy_manifest(
        rounds=2, clients=3, combiners=1, min_updates=2, config={"bad": {"client-2": "nan"}}
    )
    manifest["spec"]["clients"]["simulation"]["inProcess"] = False
    job = write_job(tmp_path / "job", manifest)
    with Federation(job, tmp_path / "wd") as fed:
        fed.start()
        assert fed.wait_reducer() == 0, fed.log("reducer")
        done = committed(fed)
        assert [r.n_updates for r in done] == [2, 2]
        updates = fed.state.list_updates(fed.name)
        # The entrypoint helper refuses to write NaN weights, so the failure is the
        # client's own (the combiner-side check is tested in test_bad_input): the
        # update is recorded failed (no result, nobody proved wrong), not rejected.
        assert not [u for u in updates if u.status == AssignmentStatus.REJECTED]
        failed = [u for u in updates if u.status == AssignmentStatus.FAILED]
        assert {(u.client, u.reason) for u in failed} == {("client-2", "client_error")}
        fails = [e for e in fed.state.list_events(fed.name) if e.kind == "TrainFailed"]
        assert fails and all(e.client == "client-2" and "NaN" in e.message for e in fails)
        np.testing.assert_allclose(final_model(fed, 2)["w"], expected_w(2, [0, 1]), atol=1e-6)


def test_combiner_restart_costs_a_retry_not_the_job(tmp_path):
    """SIGKILL a combiner mid-round and start it again on its address: its clients
    reconnect with backoff, the attempt without quorum is retried, the job ends."""
    markers = tmp_path / "held"
    markers.mkdir()
    job = write_job(
        tmp_path / "job",
        toy_manifest(
            rounds=3,
            clients=4,
            combiners=2,
            min_updates=4,
            round_timeout=30,
            # round 2's first attempt trains 6 s longer, and its clients say when
            # they hold it: the kill below lands in that attempt, after combiner-1
            # dispatched it (killed earlier, the restarted combiner could still
            # run the attempt to its end)
            config={
                "sleep": 0.5,
                "hold_round": {"round": 2, "seconds": 6, "marker_dir": str(markers)},
            },
        ),
    )
    with Federation(job, tmp_path / "wd") as fed:
        fed.start()
        # client-1 and client-3 are combiner-1's (client i goes to combiner i mod 2)
        fed.wait_for(
            lambda: (markers / "client-1").exists() or (markers / "client-3").exists(),
            what="combiner-1's clients to train round 2",
        )
        fed.kill(fed.combiner("combiner-1"))
        fed.restart_combiner("combiner-1")
        assert fed.wait_reducer() == 0, fed.log("reducer")
        done = committed(fed)
        assert [r.round for r in done] == [1, 2, 3]
        assert all(r.n_updates == 4 for r in done)
        r2 = [r for r in fed.state.get_rounds(fed.name) if r.round == 2]
        assert r2[0].status == AttemptStatus.FAILED
        assert any(
            e.kind == "CombinerFailed" and e.combiner == "combiner-1"
            for e in fed.state.list_events(fed.name)
        )
        np.testing.assert_allclose(final_model(fed, 3)["w"], expected_w(3, [0, 1, 2, 3]), atol=1e-6)


def test_failed_job_restarted_after_fix_gets_fresh_retries(tmp_path):
    manifest = toy_manifest(
        rounds=2,
        clients=2,
        combiners=1,
        min_updates=2,
        config={"crash": {"client-0": "raise"}},
        retry={"maxAttempts": 2},
    )
    job = write_job(tmp_path / "job", manifest)
    with Federation(job, tmp_path / "wd") as fed:
        fed.start()
        assert fed.wait_reducer() == 1  # every attempt of round 1 lacks quorum
        rec = fed.state.get_job(fed.name)
        assert rec.phase == "Failed" and "retry.maxAttempts" in rec.message
        r1 = [r for r in fed.state.get_rounds(fed.name) if r.round == 1]
        assert [r.status for r in r1] == [AttemptStatus.FAILED, AttemptStatus.FAILED]
        # "Fix the training code" (the train config comes from the reducer's spec).
        manifest["spec"]["train"]["config"] = {}
        fed.job_yaml.write_text(yaml.safe_dump(manifest, sort_keys=False))
        fed.restart_reducer()
        assert fed.wait_reducer() == 0, fed.log("reducer")
        assert [r.round for r in committed(fed)] == [1, 2]
        assert committed(fed)[0].attempt == 3
        assert fed.state.get_job(fed.name).phase == Phase.SUCCEEDED
