"""Whole federations on the production backends: S3 (SeaweedFS, auth on) for
models and MongoDB (FerretDB) for state, through the real CLI and processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fedkube.model import load_model
from fedkube.state import open_state_store
from fedkube.store import model_key
from fedkube.vocabulary import AttemptStatus, Phase
from tests.support import toy_task
from tests.support.federation import Federation, toy_manifest, write_job

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def fedkube(*args: str, env: dict[str, str], timeout: float = 900):
    return subprocess.run(
        [sys.executable, "-P", "-m", "fedkube", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def secrets_nowhere(secret: str, *, wd: Path, texts: list[str], mongo_uri: str) -> None:
    """The secret key is in no log file, no status output and no state document."""
    assert len(secret) >= 16
    for log in (wd / "logs").glob("*.log"):
        assert secret not in log.read_text(errors="replace"), log
    for t in texts:
        assert secret not in t
    from pymongo import MongoClient

    db_name = mongo_uri.rsplit("/", 1)[1].split("?")[0]
    with MongoClient(mongo_uri.rsplit("/", 1)[0] + "/") as client:
        db = client[db_name]
        n = 0
        for coll in db.list_collection_names():
            for doc in db[coll].find():
                assert secret not in json.dumps(doc, default=str), coll
                n += 1
        assert n > 10  # the job really wrote its state there


@pytest.mark.torch
def test_mnist_on_s3_and_mongodb(tmp_path, s3_server, s3_bucket, mongo_uri):
    pytest.importorskip("torch")
    import os

    env = {**os.environ, **s3_server.env()}
    wd = tmp_path / "wd"
    run = fedkube(
        "run",
        "examples/mnist/job.yaml",
        "--workdir",
        str(wd),
        "--store",
        s3_server.uri(s3_bucket),
        "--state",
        mongo_uri,
        env=env,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    st = fedkube("status", "mnist", "--state", mongo_uri, "-o", "json", env=env, timeout=60)
    assert st.returncode == 0, st.stderr
    data = json.loads(st.stdout)
    assert data["phase"] == Phase.SUCCEEDED and data["completedRounds"] == 10
    assert data["roundHistory"][-1]["validation"]["accuracy"] >= 0.90
    assert data["stateStore"].startswith("mongodb://")
    # the models are in the bucket, and models pull reads them from there
    out = tmp_path / "m.safetensors"
    pull = fedkube(
        "models",
        "pull",
        "mnist",
        "-o",
        str(out),
        "--state",
        mongo_uri,
        "--store",
        s3_server.uri(s3_bucket),
        env=env,
        timeout=60,
    )
    assert pull.returncode == 0, pull.stderr
    keys = s3_server.store(s3_bucket).list("jobs/mnist/models/")
    assert len(keys) == 11  # seed + 10 rounds
    secrets_nowhere(
        s3_server.secret_key,
        wd=wd,
        mongo_uri=mongo_uri,
        texts=[run.stdout, run.stderr, st.stdout, pull.stderr],
    )


def test_s3_restart_between_rounds_costs_a_retry_not_the_job(
    tmp_path, private_s3_server, mongo_uri, monkeypatch
):
    s3 = private_s3_server
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    bucket = s3.new_bucket_name("restart")
    job = write_job(
        tmp_path / "job", toy_manifest(rounds=4, clients=3, combiners=1, config={"sleep": 0.3})
    )
    with Federation(job, tmp_path / "wd", store=s3.uri(bucket), state=mongo_uri) as fed:
        fed.start()
        state = open_state_store(mongo_uri)
        restarted = threading.Event()

        def restart_after_round_1() -> None:
            fed.wait_for(lambda: state.last_committed_round("toy") >= 1, what="round 1")
            s3.restart()  # SIGKILL, then the same ports and data, ~3 s later
            restarted.set()

        t = threading.Thread(target=restart_after_round_1, daemon=True)
        t.start()
        assert fed.wait_reducer(timeout=300) == 0, fed.log("reducer")
        t.join(30)
        assert restarted.is_set()
        rounds = state.get_rounds("toy")
        done = [r for r in rounds if r.status == AttemptStatus.COMPLETED]
        assert [r.round for r in done] == [1, 2, 3, 4]  # each committed once
        assert state.get_job("toy").phase == Phase.SUCCEEDED
        m = load_model(_download(s3.store(bucket), model_key("toy", 4), tmp_path))
        n = np.array([toy_task.examples(i) for i in range(3)], np.float64)
        t_ = np.stack([toy_task.target(i) for i in range(3)]).astype(np.float64)
        expected = (1 - 0.5**4) * (n[:, None] * t_).sum(0) / n.sum()
        np.testing.assert_allclose(m["w"], expected, atol=1e-6)
        state.close()


def _download(store, key: str, tmp: Path) -> Path:
    out = tmp / "final.safetensors"
    store.get_file(key, out)
    return out
