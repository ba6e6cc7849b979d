"""Train commands are contained: real processes, a real combiner, a real client.

- a hung command and everything it started are gone after its timeout, and the
  client's failure report reaches the combiner before the round's deadline;
- a command's output is streamed to a size-capped log file (memory bounded
  whatever it prints), and its tail reaches the client's log and the error;
- a command's environment holds no credential of the client;
- user code (a command or an in-process function) gets a private, read-only
  copy of the global model: writing into it changes nothing committed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedkube.client.runner import (
    CommandRunner,
    Entrypoints,
    InProcessRunner,
    TaskRunner,
    make_runner,
)
from fedkube.client.runtime import ClientConfig, ClientRuntime
from fedkube.errors import TaskError
from fedkube.model import load_model, save_model, sha256_file
from fedkube.process import COMMAND_LOG_CAP, group_alive, run_contained
from fedkube.rpc import CLIENT_TOKEN_ENV, REDUCER_TOKEN_ENV
from fedkube.spec import parse_job
from fedkube.store import model_key
from fedkube.task import TaskContext, Tensors, TrainResult
from fedkube.vocabulary import EventKind
from tests.support.combiner import CombinerHarness, seed_model

CTX = TaskContext(job="toy", round=3, attempt=2, client_id="c1")

# A command that starts a shell with two background sleeps and a python
# grandchild that ignores SIGTERM, records every pid, then hangs (ignoring
# SIGTERM itself).
HUNG = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    pids = [os.getpid()]
    sh = subprocess.Popen(
        ["sh", "-c", "sleep 1000 & echo $!; sleep 1000 & echo $!; wait"],
        stdout=subprocess.PIPE, text=True,
    )
    pids += [sh.pid, int(sh.stdout.readline()), int(sh.stdout.readline())]
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
         "signal.SIG_IGN); print('ready', flush=True); time.sleep(1000)"],
        stdout=subprocess.PIPE, text=True,
    )
    stubborn.stdout.readline()
    pids.append(stubborn.pid)
    open(os.environ["PIDS_FILE"], "w").write(" ".join(map(str, pids)))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("training forever", flush=True)
    time.sleep(1000)
    """
)

# A well-behaved train command: prints a little, adds 1 to every tensor.
GOOD = textwrap.dedent(
    """
    import json, sys
    from fedkube.model import load_model, save_model
    in_model, out = sys.argv[1], sys.argv[2]
    print("epoch 1: loss 0.25", flush=True)
    print("epoch 2: loss 0.125", file=sys.stderr, flush=True)
    save_model(out, {k: v + 1 for k, v in load_model(in_model).items()})
    open(out + ".json", "w").write(json.dumps({"num_examples": 5, "metrics": {"loss": 0.125}}))
    """
)

# A train command that writes into IN_MODEL (by every means it has), then
# trains normally; it records what it saw in SEEN_FILE.
VANDAL = textwrap.dedent(
    """
    import json, os, stat, sys
    from fedkube.model import load_model, save_model
    in_model, out = sys.argv[1], sys.argv[2]
    seen = {"in_model": in_model, "mode": stat.S_IMODE(os.stat(in_model).st_mode)}
    model = load_model(in_model)
    try:
        os.chmod(in_model, 0o644)
        with open(in_model, "r+b") as f:
            f.seek(-8, 2)
            f.write(b"\\xff" * 8)
        seen["wrote"] = True
    except OSError as exc:
        seen["wrote"] = str(exc)
    open(os.environ["SEEN_FILE"], "w").write(json.dumps(seen))
    save_model(out, {k: v + 1 for k, v in model.items()})
    open(out + ".json", "w").write(json.dumps({"num_examples": 4, "metrics": {}}))
    """
)


def _script(tmp: Path, name: str, code: str) -> list[str]:
    path = tmp / name
    path.write_text(code)
    return [sys.executable, "-P", str(path)]


def _running(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rfind(")") + 2] not in ("Z", "X")


def _in_model(tmp: Path) -> Path:
    src = tmp / "in.safetensors"
    save_model(src, seed_model())
    return src


@pytest.fixture
def client_log() -> Iterator[list[logging.LogRecord]]:
    """The records of the client's own structured log (logger fedkube.client)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("fedkube.client")
    handler, level = Keep(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def _output_events(records: list[logging.LogRecord]) -> list[dict[str, object]]:
    out = []
    for r in records:
        fields = getattr(r, "fields", {})
        if r.getMessage().endswith("command output"):
            out.append({"msg": r.getMessage(), **fields})
    return out


# ------------------------------------------------------------ containment


def test_a_hung_command_and_all_it_started_are_killed_at_its_timeout(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    argv = _script(tmp_path, "hung.py", HUNG)
    runner = CommandRunner(argv, None, env={"PIDS_FILE": str(pids_file)}, workdir=tmp_path)
    with pytest.raises(TaskError) as info:
        runner.train(_in_model(tmp_path), tmp_path / "out.safetensors", CTX, 4.0)
    msg = str(info.value)
    assert msg.startswith("train command timed out after 4s"), msg
    assert "its process group was killed" in msg and "training forever" in msg
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 5
    alive = [p for p in pids if _running(p)]
    assert not alive, f"processes of the timed-out command still run: {alive}"
    assert not group_alive(pids[0])  # the command led its own process group


def test_processes_left_behind_by_a_finished_command_are_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    res = run_contained(
        ["sh", "-c", f"sleep 1000 & echo $! > {pid_file}; echo done"],
        log_path=tmp_path / "t.log",
        timeout=60,
    )
    assert res.returncode == 0 and res.tail == "done" and not res.timed_out
    assert not _running(int(pid_file.read_text()))


def test_a_process_that_left_the_group_does_not_hang_the_client(tmp_path: Path) -> None:
    """One that starts its own session escapes the group (a documented limit), but
    holding the command's output open does not keep the client waiting."""
    pid_file = tmp_path / "pid"
    escape = (
        f"import os, time; os.setsid(); open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
        "print('escaped', flush=True); time.sleep(1000)"
    )
    code = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {escape!r}])\n"
        f"while not __import__('os').path.exists({str(pid_file)!r}): time.sleep(0.01)\n"
    )
    try:
        res = run_contained([sys.executable, "-c", code], log_path=tmp_path / "t.log", timeout=60)
        assert res.returncode == 0 and not res.timed_out
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_stopped_client_kills_its_running_command(tmp_path: Path) -> None:
    """ClientRuntime.stop() mid-task ends the command's whole group and the client."""
    comb = CombinerHarness(tmp_path)
    pids_file = tmp_path / "pids"
    runner = CommandRunner(
        _script(tmp_path, "hung.py", HUNG),
        None,
        env={"PIDS_FILE": str(pids_file)},
        workdir=tmp_path / "client",
    )
    try:
        rt, t = _start_client(comb, runner, tmp_path)
        comb.run_round(quota=1, deadline_s=120)
        _wait_for(pids_file.exists, 30, "the command to start its children")
        time.sleep(0.2)
        rt.stop()
        t.join(30)
        assert not t.is_alive(), "the client did not stop"
        pids = [int(p) for p in pids_file.read_text().split()]
        assert not [p for p in pids if _running(p)]
    finally:
        runner.cancel()
        comb.close()


def test_the_failure_report_arrives_before_the_deadline(tmp_path: Path) -> None:
    """The command's time limit ends a margin before the task's deadline, SIGKILL
    included, so the combiner records the client's failure while the round runs."""
    comb = CombinerHarness(tmp_path)
    rt: ClientRuntime | None = None
    try:
        runner = CommandRunner(
            _script(tmp_path, "hung.py", HUNG),
            None,
            env={"PIDS_FILE": str(tmp_path / "pids")},
            workdir=tmp_path / "client",
        )
        rt, _ = _start_client(comb, runner, tmp_path)
        deadline = time.time() + 8
        call = comb.run_round(quota=1, deadline_s=8)

        def failed() -> list[object]:
            return [
                e
                for e in comb.state.list_events("toy")
                if e.kind == EventKind.TRAIN_FAILED and e.client == "c1"
            ]

        _wait_for(failed, 30, "the client's failure report")
        event = failed()[0]
        assert "timed out" in event.message, event.message  # type: ignore[attr-defined]
        # recorded (time.time() on the combiner) while the round still ran
        assert deadline - 8 < event.at < deadline, (event.at, deadline)  # type: ignore[attr-defined]
        assert call.result().n_updates == 0
    finally:
        if rt is not None:
            rt.stop()
        comb.close()


# ------------------------------------------------------------ output

TALKER = textwrap.dedent(
    """
    import sys
    chunk = (b"x" * 1023 + b"\\n") * 4096  # 4 MiB
    for i in range(100):
        sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
    print("the last words of training", file=sys.stderr, flush=True)
    sys.exit(3)
    """
)

DRIVER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from fedkube.client.runner import CommandRunner
    from fedkube.errors import TaskError
    from fedkube.logs import setup_logging
    from fedkube.model import save_model
    from fedkube.task import TaskContext
    import numpy as np

    work = Path(sys.argv[1])
    setup_logging("info", open(work / "client.log", "w"))
    src = work / "in.safetensors"
    save_model(src, {"w": np.zeros(4, np.float32)})
    runner = CommandRunner([sys.executable, "-P", sys.argv[2]], None, workdir=work)
    ctx = TaskContext(job="toy", round=1, attempt=1, client_id="talker")
    try:
        runner.train(src, work / "out.safetensors", ctx, 300)
        error = ""
    except TaskError as exc:
        error = str(exc)
    status = Path("/proc/self/status").read_text()
    hwm = next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM:"))
    print(json.dumps({"hwm_kb": hwm, "error": error}))
    """
)


def test_400_mb_of_output_keeps_the_client_small_and_its_tail(tmp_path: Path) -> None:
    talker = tmp_path / "talker.py"
    talker.write_text(TALKER)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.run(
        [sys.executable, "-P", str(driver), str(tmp_path), str(talker)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["hwm_kb"] < 150 * 1024, f"client peak RSS {out['hwm_kb'] / 1024:.0f} MiB"
    assert out["error"].startswith("train command exited with 3: the last words of training")
    log_file = tmp_path / "tasks" / "1-1-train.log"
    assert f"whole output: {log_file}" in out["error"]
    assert COMMAND_LOG_CAP // 2 < log_file.stat().st_size <= COMMAND_LOG_CAP + 200
    with open(log_file, "rb") as f:
        head = f.readline()
        f.seek(-200, os.SEEK_END)
        end = f.read()
    assert head.startswith(b"[fedkube: the first ") and b"bytes of output were dropped" in head
    assert end.endswith(b"x\nthe last words of training\n")
    events = [json.loads(ln) for ln in (tmp_path / "client.log").read_text().splitlines()]
    [ev] = [e for e in events if e["msg"] == "train command output"]
    assert ev["client"] == "talker" and ev["round"] == 1 and ev["attempt"] == 1
    assert ev["exit_code"] == 3 and ev["log"] == str(log_file)
    assert ev["output_bytes"] == 100 * 4 * 1024 * 1024 + len("the last words of training\n")
    assert ev["tail"].endswith("the last words of training")


def test_output_of_a_successful_command_reaches_the_client_log(
    tmp_path: Path, client_log: list[logging.LogRecord]
) -> None:
    runner = CommandRunner(_script(tmp_path, "good.py", GOOD), None, workdir=tmp_path)
    out = tmp_path / "out.safetensors"
    assert runner.train(_in_model(tmp_path), out, CTX, 60) == (5, {"loss": 0.125})
    [ev] = _output_events(client_log)
    assert ev["msg"] == "train command output"
    assert ev["round"] == 3 and ev["attempt"] == 2 and ev["client"] == "c1"
    assert ev["exit_code"] == 0
    tail = str(ev["tail"])
    assert "epoch 1: loss 0.25" in tail and "epoch 2: loss 0.125" in tail
    log_file = Path(str(ev["log"]))
    assert log_file == tmp_path / "tasks" / "3-2-train.log"
    assert "epoch 2: loss 0.125" in log_file.read_text()


# ------------------------------------------------------------ least privilege

ENV_DUMP = textwrap.dedent(
    """
    import json, os, sys
    open(os.environ["ENV_FILE"], "w").write(json.dumps(dict(os.environ)))
    open(sys.argv[2], "w").write(json.dumps({"num_examples": 1, "metrics": {}}))
    """
)

SECRETS = {
    CLIENT_TOKEN_ENV: "client-token",
    REDUCER_TOKEN_ENV: "reducer-token",
    "FEDKUBE_MONGODB_URI": "mongodb://u:p@h/db",
    "MY_MONGO_URI": "mongodb://u:p@h/other",
    "AWS_ACCESS_KEY_ID": "AKIA",
    "AWS_SECRET_ACCESS_KEY": "shh",
    "FEDKUBE_S3_SECRET": "shh",
}


def test_a_command_sees_no_credential_of_its_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("USER_THING", "kept")
    env_file = tmp_path / "env.json"
    script = tmp_path / "dump.py"
    script.write_text(ENV_DUMP)
    job = parse_job(
        {
            "apiVersion": "fedkube.dev/v1alpha1",
            "kind": "FederatedJob",
            "metadata": {"name": "toy"},
            "spec": {
                "rounds": 1,
                "train": {
                    "command": ["python", "-P", str(script)],
                    "validateCommand": ["python", "-P", str(script)],
                    "env": {"ENV_FILE": str(env_file)},
                },
                "stateStore": {"mongodb": {"uriEnv": "MY_MONGO_URI"}},
            },
        }
    )
    runner = make_runner(Entrypoints(), job, cwd=tmp_path, workdir=tmp_path)
    assert runner.validate(_in_model(tmp_path), CTX, 60) == (1, {})
    env = json.loads(env_file.read_text())
    assert not set(SECRETS) & set(env), sorted(set(SECRETS) & set(env))
    assert not [v for v in env.values() if v in SECRETS.values()]
    assert env["USER_THING"] == "kept" and env["ENV_FILE"] == str(env_file)
    assert env["FEDKUBE_CLIENT"] == "c1" and env["FEDKUBE_ROUND"] == "3"
    assert os.environ[CLIENT_TOKEN_ENV] == "client-token"  # the client keeps its own


# ------------------------------------------------------------ committed models

_VANDAL_TARGET: list[Path] = []


def vandal_train(model: Tensors, ctx: TaskContext) -> TrainResult:
    """An in-process function that writes into its arrays and into the model file."""
    for arr in model.values():
        arr += 100
    for path in _VANDAL_TARGET:
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.seek(-8, os.SEEK_END)
            f.write(b"\xff" * 8)
    return TrainResult({k: v - 99 for k, v in model.items()}, 4, {})


def _start_client(
    comb: CombinerHarness, runner: TaskRunner, tmp: Path, **kw: object
) -> tuple[ClientRuntime, threading.Thread]:
    rt = ClientRuntime(
        ClientConfig(
            address=comb.address,
            client_id="c1",
            job="toy",
            token=comb.token_for("c1"),
            workdir=tmp / "client",
            **kw,  # type: ignore[arg-type]
        ),
        runner,
    )
    t = threading.Thread(target=rt.run, daemon=True)
    t.start()
    comb.wait_connected(1)
    return rt, t


def _wait_for(cond: object, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():  # type: ignore[operator]
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("form", ["command", "in-process"])
def test_user_code_cannot_change_the_committed_model(tmp_path: Path, form: str) -> None:
    comb = CombinerHarness(tmp_path)
    try:
        committed = comb.store.local_path(model_key("toy", 0))
        before = sha256_file(committed)
        seen_file = tmp_path / "seen.json"
        private = tmp_path / "client" / "global.safetensors"
        runner: TaskRunner
        if form == "command":
            runner = CommandRunner(
                _script(tmp_path, "vandal.py", VANDAL),
                None,
                env={"SEEN_FILE": str(seen_file)},
                workdir=tmp_path / "client",
            )
        else:
            _VANDAL_TARGET[:] = [private]
            runner = InProcessRunner(f"{__name__}:vandal_train", None)
        rt, t = _start_client(comb, runner, tmp_path, max_tasks=1)
        partial = comb.run_round(quota=1).result()
        t.join(30)
        assert not t.is_alive()
        rt.stop()
    finally:
        _VANDAL_TARGET.clear()
        comb.close()
    assert sha256_file(committed) == before, "user code changed the committed model"
    assert partial.n_updates == 1
    merged = load_model(comb.store.local_path(partial.key))
    for name, arr in seed_model().items():
        np.testing.assert_array_equal(merged[name], arr + 1)
    assert not private.exists(), "the private copy outlived its task"
    if form == "command":
        seen = json.loads(seen_file.read_text())
        assert Path(seen["in_model"]) == private and Path(seen["in_model"]) != committed
        assert seen["mode"] == 0o444
