"""The numpy-only linear example (examples/linear), the job the real-cluster tests
run in pods, on one machine through the real CLI: `fedkube run` succeeds in both
train forms (in-process functions and the entrypoint command) and the global model
approaches the true weights; its task functions are deterministic, so a round can
be recomputed from the recorded participants (tests/cluster rely on that)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedkube.task import TaskContext

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "linear"


@pytest.fixture
def linear_task(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import linear_fl.task as task

    yield task
    sys.modules.pop("linear_fl.task", None)
    sys.modules.pop("linear_fl", None)


def fedkube(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "fedkube", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "command"])
def test_fedkube_run_converges(tmp_path: Path, in_process: bool) -> None:
    job = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
    job["spec"]["clients"]["simulation"]["inProcess"] = in_process
    path = EXAMPLE / f".job-{tmp_path.name}.yaml"  # next to the code the command form runs
    path.write_text(yaml.safe_dump(job))
    try:
        proc = fedkube("run", str(path), "--workdir", str(tmp_path))
    finally:
        path.unlink()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    st = fedkube("status", "linear", "--workdir", str(tmp_path), "-o", "json")
    assert st.returncode == 0, st.stderr
    data = json.loads(st.stdout)
    assert data["phase"] == "Succeeded" and data["completedRounds"] == 5
    history = data["roundHistory"]
    errors = [r["validation"]["weight_error"] for r in history]
    assert errors == sorted(errors, reverse=True), errors  # every round gets closer
    assert errors[-1] < 0.1 < errors[0], errors


def test_train_is_deterministic_and_shards_differ(linear_task) -> None:  # type: ignore[no-untyped-def]
    task = linear_task
    model = task.init()
    cfg = {"features": 16}

    def ctx(i: int) -> TaskContext:
        return TaskContext("linear", 1, 1, f"linear-client-{i}", cfg, client_index=i)

    a, b = task.train(model, ctx(1)), task.train(model, ctx(1))
    assert a.num_examples == b.num_examples == 125
    for name in model:
        np.testing.assert_array_equal(a.model[name], b.model[name])
    other = task.train(model, ctx(2))
    assert other.num_examples == 150
    assert not np.array_equal(a.model["w"], other.model["w"])
    # without an index the shard comes from a stable hash of the client id
    no_index = TaskContext("linear", 1, 1, "site-x", cfg, num_clients=4)
    assert task.shard_of(no_index) == task.shard_of(no_index) in range(4)


def test_a_model_of_another_size_is_refused_naming_the_setting(linear_task) -> None:  # type: ignore[no-untyped-def]
    task = linear_task
    model = {"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)}
    with pytest.raises(ValueError, match=r"train\.config\.features is 16"):
        task.train(model, TaskContext("linear", 1, 1, "c", {}, client_index=0))
