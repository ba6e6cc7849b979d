"""The reducer as the operator runs it: combiners from a template whose count
follows spec.combiners.replicas of the job record, and a health endpoint."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from fedkube.vocabulary import AttemptStatus, Phase
from tests.support.federation import Federation, toy_manifest, write_job

pytestmark = pytest.mark.slow

HOSTS = ["127.0.1.10", "127.0.1.11", "127.0.1.12"]  # loopback addresses, one per combiner


def free_port() -> int:
    # The same port must be free on every combiner's address.
    with socket.socket() as s:
        s.bind(("127.0.1.10", 0))
        port = s.getsockname()[1]
    for host in HOSTS[1:]:
        with socket.socket() as s:
            s.bind((host, port))
    return port


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_scaling_follows_job_record_and_health_endpoint(tmp_path):
    port, health = free_port(), free_port()
    manifest = toy_manifest(
        name="tpl", rounds=4, clients=3, combiners=2, min_updates=2, config={"sleep": 0.3}
    )
    job = write_job(tmp_path / "job", manifest)
    with Federation(job, tmp_path / "wd") as fed:
        f = fed.fed
        procs = [
            f.start_combiner(fed.job_yaml, fed.run_dir, f"tpl-combiner-{i}", port, host)
            for i, host in enumerate(HOSTS)
        ]
        for p, host in zip(procs, HOSTS, strict=True):
            f.wait_combiner(p, fed.run_dir, host)
        for i in range(3):
            fed.start_client(i)
        fed.reducer = f._spawn(
            "reducer",
            "reducer",
            [
                *f._common(fed.job_yaml),
                "--job-dir",
                str(f.job_dir),
                "--combiner-template",
                f"tpl-combiner-{{i}}=127.0.1.1{{i}}:{port}",
                "--health-port",
                str(health),
                "--linger",
                "--workdir",
                str(f.workdir / "reducer"),
            ],
        )

        def committed():
            return [r for r in fed.state.get_rounds("tpl") if r.status == AttemptStatus.COMPLETED]

        fed.wait_for(lambda: len(committed()) >= 1, what="round 1")
        code, body = get(f"http://127.0.0.1:{health}/healthz")
        assert (code, body) == (200, b"ok\n")
        status = json.loads(get(f"http://127.0.0.1:{health}/status")[1])
        assert status["name"] == "tpl" and status["completedRounds"] >= 1
        assert set(committed()[0].combiners) == {"tpl-combiner-0", "tpl-combiner-1"}
        # The operator scales the job: it writes the new spec into the job record.
        rec = fed.state.get_job("tpl")
        scaled = json.loads(json.dumps(rec.manifest))
        scaled["spec"]["combiners"]["replicas"] = 3
        fed.state.create_job("tpl", scaled)
        fed.wait_for(
            lambda: fed.state.get_job("tpl").phase == Phase.SUCCEEDED, what="the job to end"
        )
        last = committed()[-1]
        assert set(last.combiners) == {"tpl-combiner-0", "tpl-combiner-1", "tpl-combiner-2"}
        assert last.n_updates == 3
        # --linger: the reducer keeps serving after the job finished.
        assert fed.reducer.popen.poll() is None
        assert json.loads(get(f"http://127.0.0.1:{health}/status")[1])["phase"] == Phase.SUCCEEDED
        assert get(f"http://127.0.0.1:{health}/nope")[0] == 404
