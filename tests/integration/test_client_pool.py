"""The client pool of `fedkube run`: simulated clients forked from one process.

Real federations (combiners, reducer, the pool and its forked clients as
processes on loopback gRPC). The job's module records, in files next to it,
each import (by pid) and each training call (client, pid, the pid that
imported the module, a draw from numpy's global generator).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from fedkube.clientpool import PooledProcess
from fedkube.localrun import PooledClient
from tests.support.federation import Federation, committed, toy_manifest, write_job

POOL_TASK = """
import json, os, time
from pathlib import Path

import numpy as np

from toy_task import init, validate  # noqa: F401
from toy_task import train as toy_train

HERE = Path(__file__).resolve().parent
IMPORTED_BY = os.getpid()
(HERE / "imports").mkdir(exist_ok=True)
(HERE / "imports" / str(IMPORTED_BY)).touch()


def train(model, ctx):
    res = toy_train(model, ctx)
    (HERE / "calls").mkdir(exist_ok=True)
    rec = {"client": ctx.client_id, "round": ctx.round, "pid": os.getpid(),
           "imported_by": IMPORTED_BY, "draw": float(np.random.random())}
    (HERE / "calls" / f"{ctx.client_id}-{ctx.round}.json").write_text(json.dumps(rec))
    time.sleep(float(ctx.config.get("pool_sleep", 0)))
    return res
"""


def pool_job(tmp_path: Path, *, clients: int = 4, rounds: int = 2, **config: object) -> Path:
    manifest = toy_manifest(rounds=rounds, clients=clients, combiners=2, config=dict(config))
    manifest["spec"]["model"] = {"initFn": "pool_task:init"}
    manifest["spec"]["train"]["fn"] = "pool_task:train"
    manifest["spec"]["train"]["validateFn"] = "pool_task:validate"
    job = write_job(tmp_path / "job", manifest)
    (job.parent / "pool_task.py").write_text(POOL_TASK)
    return job


def calls(job: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((job.parent / "calls").glob("*.json"))]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_forked_clients_import_the_job_once_and_draw_their_own_random_numbers(tmp_path):
    job = pool_job(tmp_path)
    with Federation(job, tmp_path / "wd") as fed:
        fed.start()
        assert fed.wait_reducer() == 0, fed.log("reducer")
        pool = next(p for p in fed.fed.procs if p.role == "client-pool")
        client_pids = {p.pid for p in fed.clients}
        assert all(isinstance(p, PooledClient) for p in fed.clients)
        assert [r.round for r in committed(fed)] == [1, 2]
    # one import, by the pool; every training call ran in a forked client
    assert [p.name for p in (job.parent / "imports").iterdir()] == [str(pool.pid)]
    recs = calls(job)
    assert len(recs) == 8
    assert {r["imported_by"] for r in recs} == {pool.pid}
    assert {r["pid"] for r in recs} == client_pids and pool.pid not in client_pids
    assert {r["client"] for r in recs} == {f"client-{i}" for i in range(4)}
    # numpy's global generator was reseeded in each fork: no two clients draw alike
    first = {r["client"]: r["draw"] for r in recs if r["round"] == 1}
    assert len(set(first.values())) == len(first) == 4


def test_without_fork_every_client_imports_the_job_itself(tmp_path):
    job = pool_job(tmp_path, rounds=1)
    with Federation(job, tmp_path / "wd", fork=False) as fed:
        fed.start()
        assert fed.wait_reducer() == 0, fed.log("reducer")
        client_pids = {p.pid for p in fed.clients}
        assert not any(p.role == "client-pool" for p in fed.fed.procs)
    imports = {int(p.name) for p in (job.parent / "imports").iterdir()}
    assert imports == client_pids and len(imports) == 4


def test_a_killed_pool_takes_its_clients_with_it_and_they_are_reported(tmp_path):
    job = pool_job(tmp_path, rounds=3, pool_sleep=30)
    with Federation(job, tmp_path / "wd") as fed:
        fed.start()
        fed.wait_for(lambda: len(calls(job)) >= 1, what="a client to train")
        pool = next(p for p in fed.fed.procs if p.role == "client-pool")
        pids = [p.pid for p in fed.clients]
        fed.kill(pool, signal.SIGKILL)
        for p in fed.clients:  # SIGKILLed with their pool (PR_SET_PDEATHSIG), and so reported
            assert p.popen.wait(timeout=30) == -signal.SIGKILL, p.name
            assert not p.running
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in pids if alive(pid)]


def test_stopping_the_run_stops_every_forked_client(tmp_path):
    job = pool_job(tmp_path, rounds=3, pool_sleep=30)
    with Federation(job, tmp_path / "wd") as fed:
        fed.start()
        fed.wait_for(lambda: len(calls(job)) >= 1, what="a client to train")
        pids = [p.pid for p in fed.clients]
        assert all(alive(pid) for pid in pids)
        t0 = time.monotonic()
        fed.fed.stop()
        # SIGTERM reaches each client (its own session): a sleeping train function
        # cannot return, so the grace period ends in SIGKILL; the pool reaps them all
        codes = {p.name: p.returncode for p in fed.clients}
        assert all(c is not None for c in codes.values()), codes
        assert time.monotonic() - t0 < 60
    assert not [pid for pid in pids if alive(pid)]
    assert all((fed.fed.pool_dir / f"{name}.exit").exists() for name in codes)


def test_a_client_that_exits_is_reported_with_its_own_status(tmp_path):
    job = pool_job(tmp_path, crash={"client-2": "exit"}, crash_round=1)
    with Federation(job, tmp_path / "wd") as fed:
        fed.start()
        crashed = next(p for p in fed.clients if p.name == "client-2")
        assert crashed.popen.wait(timeout=60) == 17
        others = [p for p in fed.clients if p is not crashed]
        assert all(p.running for p in others)


def test_pooled_process_before_the_fork_has_no_pid_and_takes_the_pools_status(tmp_path):
    """The launcher's view of a client the pool has not forked (pure file protocol)."""
    pool_status: list[int | None] = [None]
    h = PooledProcess(tmp_path, "client-0", lambda: pool_status[0])
    assert h.pid == 0 and not h.forked and h.poll() is None
    with pytest.raises(Exception, match="timed out"):
        h.wait(timeout=0.05)
    pool_status[0] = 2  # the pool exited (its job code did not import) before forking
    assert h.poll() == 2 and h.wait() == 2
    forked = PooledProcess(tmp_path, "client-1", lambda: pool_status[0])
    (tmp_path / "client-1.pid").write_text("12345")
    (tmp_path / "client-1.exit").write_text("-15")
    assert forked.pid == 12345 and forked.poll() == -15


def test_no_pool_is_started_for_a_run_without_simulated_clients(tmp_path):
    job = pool_job(tmp_path)
    fed = Federation(job, tmp_path / "wd", clients=0)  # fedkube run --clients 0
    try:
        assert fed.fed.start_pool(fed.job_yaml) is None
        assert fed.fed.procs == []
        # ... but one asked for a count of clients is
        pool = fed.fed.start_pool(fed.job_yaml, clients=2)
        assert pool is not None and pool.role == "client-pool" and pool.running
    finally:
        fed.close()
