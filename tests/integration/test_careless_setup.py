"""A careless setup fails fast with the real reason, and no phase outlives its process.

Real processes throughout: `fedkube run` whose simulated clients cannot import
their code (a tiny job here, and the mnist example with torch made
unimportable), a reducer whose S3 endpoint does not answer, a reducer killed
with SIGKILL or stopped with SIGTERM, a reducer that crashes on a corrupt job
record, and the environment of the simulated clients.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedkube.localrun import client_error
from fedkube.process import free_ports
from fedkube.rpc import CLIENT_TOKEN_ENV, REDUCER_TOKEN_ENV
from fedkube.state import open_state_store
from fedkube.vocabulary import INTERRUPTED_MESSAGE, Phase
from tests.support.federation import Federation, toy_manifest, write_job

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
#: how long `fedkube run` may take to fail when its clients cannot start (the issue's bound)
FAIL_FAST_SECONDS = 30


def fedkube(
    *args: str, timeout: float, env: dict[str, str] | None = None
) -> tuple[int, str, float]:
    """Run `fedkube ARGS`; (exit code, stdout + stderr, seconds). A run that takes
    longer than `timeout` is stopped with SIGTERM (so it stops its own children)
    and fails the test."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "fedkube", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        pytest.fail(f"fedkube {args[0]} did not finish within {timeout}s:\n{out[-4000:]}")
    return proc.returncode, out, time.monotonic() - t0


def job_record(state_db: Path, name: str):
    st = open_state_store(f"sqlite:///{state_db}")
    try:
        return st.get_job(name)
    finally:
        st.close()


def status_json(wd: Path, name: str, *extra: str) -> dict:
    rc, out, _ = fedkube("status", name, "--workdir", str(wd), "-o", "json", *extra, timeout=60)
    assert rc == 0, out
    return json.loads(out)


# ---------------------------------------------------------------- clients that cannot start


BROKEN_TASK = '''"""A task whose module imports something that is not installed."""
import no_such_module_for_fedkube_tests  # noqa: F401


def init():
    raise AssertionError("never reached")


def train(model, ctx):
    raise AssertionError("never reached")
'''


def test_run_fails_fast_when_clients_cannot_import_their_code(tmp_path):
    # minUpdates 1: the run stops once the last client exited, so every one is reported
    manifest = toy_manifest(rounds=2, clients=3, combiners=1, min_updates=1)
    manifest["spec"]["model"] = {"initFn": "broken_task:init"}
    manifest["spec"]["train"] = {"fn": "broken_task:train"}
    job = write_job(tmp_path / "job", manifest)
    (job.parent / "broken_task.py").write_text(BROKEN_TASK)
    wd = tmp_path / "wd"

    rc, out, _ = fedkube("run", str(job), "--workdir", str(wd), "-q", timeout=FAIL_FAST_SECONDS)

    assert rc == 1, out
    assert "no_such_module_for_fedkube_tests" in out
    for i in range(3):  # each client that exits is reported
        assert f"client-{i} exited with 2: cannot import 'broken_task'" in out, out
    rec = job_record(wd / "state.db", "toy")
    assert rec is not None and rec.phase == Phase.FAILED, rec
    assert "no_such_module_for_fedkube_tests" in rec.message
    assert "3 of 3 simulated clients exited" in rec.message and "\n" not in rec.message
    # the client pool could not import the job, so it forked no client: no token
    # file it wrote for them is left behind
    assert (wd / "run" / "clients" / "clients.json").exists()
    assert not list((wd / "run" / "clients").glob("*.token"))


FAILING_INIT = '''"""A task whose init function fails when it is called (the client runs fine)."""


def init():
    raise FileNotFoundError("no dataset at /data/shard-0 (the seed needs its shapes)")


def train(model, ctx):
    raise AssertionError("never reached")
'''


def test_seed_failure_names_the_clients_error_not_no_client(tmp_path):
    manifest = toy_manifest(rounds=1, clients=2, combiners=1, min_updates=1)
    manifest["spec"]["model"] = {"initFn": "failing_init:init"}
    manifest["spec"]["train"] = {"fn": "failing_init:train"}
    manifest["spec"]["retry"] = {"maxAttempts": 2, "backoffSeconds": 1}
    job = write_job(tmp_path / "job", manifest)
    (job.parent / "failing_init.py").write_text(FAILING_INIT)
    with Federation(job, tmp_path / "wd") as fed:
        fed.start()
        assert fed.wait_reducer(timeout=120) == 1, fed.log("reducer")
        rec = fed.state.get_job(fed.name)
        assert rec.phase == Phase.FAILED
        assert "connected but failed the init task" in rec.message, rec.message
        assert "no dataset at /data/shard-0" in rec.message
        assert "no client connected" not in rec.message
        seeds = [e.message for e in fed.state.list_events(fed.name) if e.kind == "SeedFailed"]
        assert len(seeds) == 2 and all("FileNotFoundError" in m for m in seeds), seeds


FAKE_TORCH = (
    "# torch is made unimportable for this test (an environment without torch)\n"
    "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
)


def test_mnist_example_without_torch_fails_fast_naming_the_module(tmp_path):
    """The issue's acceptance line: `fedkube run` of the mnist example in an environment
    without torch fails within 30 s naming the missing module."""
    no_torch = tmp_path / "no-torch"
    (no_torch / "torch").mkdir(parents=True)
    (no_torch / "torch" / "__init__.py").write_text(FAKE_TORCH)
    env = {**os.environ, "PYTHONPATH": str(no_torch)}  # fedkube run's children inherit it
    wd = tmp_path / "wd"

    rc, out, _ = fedkube(
        "run",
        "examples/mnist/job.yaml",
        "--workdir",
        str(wd),
        "-q",
        timeout=FAIL_FAST_SECONDS,
        env=env,
    )

    assert rc == 1, out
    assert "No module named 'torch'" in out, out[-3000:]
    rec = job_record(wd / "state.db", "mnist")
    assert rec is not None and rec.phase == Phase.FAILED, rec
    assert "No module named 'torch'" in rec.message


def test_client_error_is_the_clients_own_last_error():
    """Pure logic: which line of a client log names its error."""
    info = json.dumps({"level": "info", "msg": "connected"})
    assert (
        client_error(f"{info}\nerror: cannot import 'x' for 'x:f': No module named 'y'\n\n")
        == "cannot import 'x' for 'x:f': No module named 'y'"
    )
    traceback = "Traceback (most recent call last):\n  File ...\nKeyError: 'lr'\n"
    assert client_error(traceback) == "KeyError: 'lr'"
    refused = json.dumps({"level": "error", "msg": "connection refused", "error": "bad token"})
    assert client_error(f"{refused}\n{info}\n") == "connection refused: bad token"
    assert client_error(f"{info}\n") == "connected"
    assert client_error("") == "no output"


# ---------------------------------------------------------------- least privilege


def read_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(e.split("=", 1) for e in raw.decode(errors="replace").split("\0") if "=" in e)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("fork", [True, False], ids=["client-pool", "process-per-client"])
def test_simulated_clients_get_no_reducer_token_nor_store_credentials(tmp_path, monkeypatch, fork):
    # Credentials in the shell that runs `fedkube run` must not reach the clients either.
    monkeypatch.setenv(REDUCER_TOKEN_ENV, "reducer-token-from-the-shell")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3-secret-from-the-shell")
    monkeypatch.setenv("FEDKUBE_MONGODB_URI", "mongodb://user:pw@db/fedkube")
    # training sleeps, so the clients are still running when their environment is read
    # (a process that exited reads as empty, as one did on a loaded machine)
    manifest = toy_manifest(rounds=1, clients=3, combiners=1, config={"sleep": 5})
    job = write_job(tmp_path / "job", manifest)
    with Federation(job, tmp_path / "wd", fork=fork) as fed:
        fed.start()
        envs = {p.name: read_environ(p.pid) for p in fed.clients}
        reducer_env = read_environ(fed.reducer.pid)
        combiner_env = read_environ(fed.combiner("combiner-0").pid)
        pools = [p for p in fed.fed.procs if p.role == "client-pool"]
        assert len(pools) == int(fork)
        if fork:
            envs["client-pool"] = read_environ(pools[0].pid)
            # each forked client reads its own token file (0600) and deletes it
            fed.wait_for(
                lambda: not list(fed.fed.pool_dir.glob("*.token")), what="the token files read"
            )
            # ... and so connects with it (a wrong or missing token is refused)
            fed.wait_for(
                lambda: all('"msg": "connected"' in fed.log(p.name) for p in fed.clients),
                what="the 3 clients connected",
            )
    assert set(envs) == {"client-0", "client-1", "client-2"} | ({"client-pool"} if fork else set())
    for name, env in envs.items():
        assert REDUCER_TOKEN_ENV not in env, name
        assert "AWS_SECRET_ACCESS_KEY" not in env and "FEDKUBE_MONGODB_URI" not in env, name
        assert fed.fed.reducer_token not in env.values(), name
        if fork:  # a forked client's environment is the pool's, which holds no token at all
            assert CLIENT_TOKEN_ENV not in env, name
        else:
            assert env.get(CLIENT_TOKEN_ENV), name  # its own credential, and no other
    # the reducer and the combiners get the run's reducer token, not the shell's
    assert reducer_env[REDUCER_TOKEN_ENV] == fed.fed.reducer_token
    assert combiner_env[REDUCER_TOKEN_ENV] == fed.fed.reducer_token
    assert CLIENT_TOKEN_ENV not in reducer_env


# ---------------------------------------------------------------- stores that do not answer


def test_reducer_with_unreachable_s3_fails_the_job_in_one_line(tmp_path):
    s3_port, combiner_port = free_ports(2)  # nothing listens on either
    endpoint = f"127.0.0.1:{s3_port}"
    job = write_job(tmp_path / "job", toy_manifest(rounds=1, clients=1, combiners=1))
    state_db = tmp_path / "state.db"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "fedkube-test",
        "AWS_SECRET_ACCESS_KEY": "fedkube-test-secret",
        REDUCER_TOKEN_ENV: "reducer-token",
    }
    timeout = 8.0  # several attempts: each one retries S3 a few times itself

    rc, out, took = fedkube(
        "reducer",
        "--job",
        str(job),
        "--combiner",
        f"combiner-0=127.0.0.1:{combiner_port}",
        "--store",
        f"s3://fedkube?endpoint={endpoint}&secure=false",
        "--state",
        f"sqlite:///{state_db}",
        "--workdir",
        str(tmp_path / "reducer"),
        "--startup-timeout",
        str(timeout),
        timeout=timeout + 30,
        env=env,
    )

    assert rc == 1, out
    assert took < timeout + 20, (took, out)
    assert "Traceback" not in out, out
    console = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("{")]
    assert len(console) == 1 and console[0].startswith("error:"), out
    assert endpoint in console[0] and "object store" in console[0], console
    logs = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    assert any("retrying" in rec["msg"] for rec in logs), out  # each retry is logged
    rec = job_record(state_db, "toy")
    assert rec is not None and rec.phase == Phase.FAILED, rec
    assert endpoint in rec.message and "\n" not in rec.message


# ---------------------------------------------------------------- whatever ends the reducer


def wait_until(cond, timeout: float, what: str, fed: Federation) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{fed.log('reducer')}")


def running_with_reducer(fed: Federation) -> bool:
    rec = fed.state.get_job(fed.name)
    return rec is not None and rec.phase == Phase.RUNNING and rec.reducer_seen_at is not None


def test_sigkilled_reducer_leaves_a_job_status_shows_without_reducer(tmp_path):
    # No clients: the reducer waits for one to make the seed, with the job Running.
    job = write_job(tmp_path / "job", toy_manifest(rounds=1, clients=1, combiners=1))
    wd = tmp_path / "wd"
    with Federation(job, wd) as fed:
        fed.start(clients=False)
        wait_until(lambda: running_with_reducer(fed), 30, "the job to run", fed)
        alive = status_json(wd, fed.name)
        assert alive["reducerMissing"] is False and alive["reducerSeenAt"], alive

        fed.kill(fed.reducer, signal.SIGKILL)
        stale = ("--stale-after", "1")
        deadline = time.monotonic() + 30
        data = status_json(wd, fed.name, *stale)
        while not data["reducerMissing"] and time.monotonic() < deadline:
            time.sleep(0.5)
            data = status_json(wd, fed.name, *stale)
        assert data["reducerMissing"] is True, data
        assert data["phase"] == Phase.RUNNING and data["reducerSilentSeconds"] >= 1
        rc, text, _ = fedkube("status", fed.name, "--workdir", str(wd), *stale, timeout=60)
        assert rc == 0 and "Running (no reducer seen for" in text, text
        # with the default threshold (30 s) the same job still counts as having a reducer
        assert status_json(wd, fed.name)["reducerMissing"] is False


def test_sigterm_puts_a_running_job_back_to_pending(tmp_path):
    job = write_job(tmp_path / "job", toy_manifest(rounds=1, clients=1, combiners=1))
    with Federation(job, tmp_path / "wd") as fed:
        fed.start(clients=False)
        wait_until(lambda: running_with_reducer(fed), 30, "the job to run", fed)
        fed.kill(fed.reducer, signal.SIGTERM)
        assert fed.reducer.returncode == 143, fed.log("reducer")
        rec = fed.state.get_job(fed.name)
        assert rec.phase == Phase.PENDING and rec.message == INTERRUPTED_MESSAGE, rec
        kinds = [e.kind for e in fed.state.list_events(fed.name)]
        assert "JobInterrupted" in kinds


def test_reducer_crash_records_failed_with_a_one_line_reason(tmp_path):
    """An unexpected exception in the loop (here: a corrupt job record the reducer
    re-reads before each poll of its combiners) fails the job with one line; the
    traceback is in the JSON log only."""
    job = write_job(tmp_path / "job", toy_manifest(rounds=1, clients=1, combiners=1))
    with Federation(job, tmp_path / "wd") as fed:
        fed.fed.start_combiners(fed.job_yaml, fed.run_dir)
        (addr,) = fed.fed.combiners.values()
        args = [
            *fed.fed._common(fed.job_yaml),
            "--combiner-template",
            f"combiner-{{i}}={addr}",
            "--workdir",
            str(fed.fed.workdir / "reducer"),
        ]
        fed.reducer = fed.fed._spawn("reducer", "reducer", args)
        wait_until(lambda: running_with_reducer(fed), 30, "the job to run", fed)
        manifest = fed.state.get_job(fed.name).manifest
        manifest["spec"]["combiners"]["replicas"] = "many"  # corrupt: not a number
        fed.state.update_job(fed.name, manifest=manifest)

        assert fed.reducer.popen.wait(timeout=60) == 1, fed.log("reducer")
        rec = fed.state.get_job(fed.name)
        assert rec.phase == Phase.FAILED, rec
        assert rec.message.startswith("reducer crashed: ValueError") and "\n" not in rec.message
        out = fed.log("reducer", lines=200)
        console = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("{")]
        assert console == [f"error: {rec.message}"], out
        crash = [json.loads(ln) for ln in out.splitlines() if '"reducer crashed"' in ln]
        assert crash and "Traceback" in crash[0]["exc"]  # the traceback is in the log


def test_operator_status_tells_a_running_job_without_reducer():
    """Pure logic: the FederatedJob's Progressing condition says when the job record
    claims Running but its reducer stopped renewing its liveness."""
    from fedkube.operator.status import status_from
    from fedkube.spec import parse_job

    job = parse_job(toy_manifest())
    now = 1_700_000_000.0

    def progressing(**record) -> dict:
        st = status_from(
            job,
            record={"phase": "Running", "current_round": 1, "completed_rounds": 0, **record},
            statefulset={"replicas": 2, "readyReplicas": 2},
            deployment={"replicas": 1, "readyReplicas": 1},
            generation=1,
            previous=None,
            now=now,
        )
        (c,) = [c for c in st["conditions"] if c["type"] == "Progressing"]
        return c

    gone = progressing(reducer_seen_at=now - 130)
    assert gone["status"] == "False" and gone["reason"] == "ReducerNotSeen"
    assert "130s" in gone["message"]
    assert progressing(reducer_seen_at=now - 2)["status"] == "True"
    assert progressing()["status"] == "True"  # a record from before liveness renewals


@pytest.mark.parametrize("address", ["10.244.0.1:", "combiner", ":7070", "host:70700", "host:x"])
def test_client_with_an_address_without_a_usable_port_fails_at_once(address, tmp_path):
    """`--connect $NODE_IP:$(kubectl ... nodePort)` where the substitution printed
    nothing: the client says so and exits, instead of retrying forever."""
    code, out, _ = fedkube(
        "client",
        "--connect",
        address,
        "--job",
        "j",
        "--client-id",
        "c",
        "--train-cmd",
        "true",
        "--workdir",
        str(tmp_path),
        timeout=60,
        env={**os.environ, CLIENT_TOKEN_ENV: "fkc_x"},
    )
    assert code == 2, out
    assert f"--connect {address!r}: expected HOST:PORT" in out, out


def test_client_says_connected_only_once_a_combiner_accepted_it(tmp_path):
    """Nothing listens at the address: the client retries, logging `connection lost`,
    and never `connected` (which used to be logged for a stream refused at once)."""
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "fedkube", "client", "--connect", f"127.0.0.1:{port}",
         "--job", "j", "--client-id", "c", "--train-cmd", "true", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, CLIENT_TOKEN_ENV: "fkc_x"},
    )  # fmt: skip
    try:
        time.sleep(6)  # the first attempt and a retry or two
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    msgs = [json.loads(ln).get("msg") for ln in out.splitlines() if ln.startswith("{")]
    assert "connection lost" in msgs, out
    assert "connected" not in msgs, out
