"""fedkube.client.entrypoint: the train-script helper (the contract itself: test_contract.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedkube.client.entrypoint import context_from_env, run
from fedkube.contract import read_result_json, result_json_path
from fedkube.errors import TaskError
from fedkube.model import load_model, save_model
from fedkube.task import TaskContext, Tensors, TrainResult, ValidationResult

ENV = {
    "FEDKUBE_JOB": "job-a",
    "FEDKUBE_ROUND": "3",
    "FEDKUBE_ATTEMPT": "1",
    "FEDKUBE_CLIENT": "client-7",
    "FEDKUBE_CLIENT_INDEX": "2",
    "FEDKUBE_NUM_CLIENTS": "4",
    "FEDKUBE_CONFIG": json.dumps({"lr": "0.5", "steps": 2}),
}

SEEN: list[TaskContext] = []


def tiny_init() -> Tensors:
    return {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.zeros(3, dtype=np.float32),
        "step": np.array([0], dtype=np.int64),
    }


def tiny_train(model: Tensors, ctx: TaskContext) -> TrainResult:
    SEEN.append(ctx)
    lr = float(ctx.config["lr"])
    # Insertion order differs from the input on purpose; float64 math is cast back.
    new = {
        "step": model["step"] + 1,
        "b": model["b"] + 1.0,
        "w": model["w"].astype(np.float64) * lr,
    }
    return TrainResult(new, num_examples=10 + ctx.round, metrics={"loss": 0.25, "acc": 1})


def tiny_validate(model: Tensors, ctx: TaskContext) -> ValidationResult:
    SEEN.append(ctx)
    return ValidationResult(num_examples=5, metrics={"accuracy": float(model["w"].mean())})


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    SEEN.clear()


def _run(argv: list[str], **fns: object) -> None:
    fns = fns or {"train": tiny_train, "validate": tiny_validate, "init": tiny_init}
    run(argv=argv, **fns)


# ------------------------------------------------------------------ commands


def test_init_writes_seed_model(tmp_path: Path) -> None:
    out = tmp_path / "seed.safetensors"
    _run(["init", str(out)])
    got = load_model(out)
    assert list(got) == ["w", "b", "step"]
    np.testing.assert_array_equal(got["w"], tiny_init()["w"])
    assert got["step"].dtype == np.int64


def test_train_writes_model_and_result_json(tmp_path: Path, env: None) -> None:
    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_model(src, tiny_init())
    _run(["train", str(src), str(out)])

    ctx = SEEN[-1]
    assert (ctx.job, ctx.round, ctx.attempt, ctx.client_id) == ("job-a", 3, 1, "client-7")
    assert (ctx.client_index, ctx.num_clients) == (2, 4)
    assert ctx.config == {"lr": "0.5", "steps": 2}

    got = load_model(out)
    assert list(got) == ["w", "b", "step"]  # the input model's names and order
    assert got["w"].dtype == np.float32  # float64 result cast back to the model dtype
    np.testing.assert_allclose(got["w"], tiny_init()["w"] * 0.5)
    np.testing.assert_array_equal(got["b"], np.ones(3, dtype=np.float32))
    np.testing.assert_array_equal(got["step"], [1])

    assert result_json_path(out) == tmp_path / "out.safetensors.json"
    data = json.loads(result_json_path(out).read_text())
    assert data == {"num_examples": 13, "metrics": {"loss": 0.25, "acc": 1.0}}
    assert read_result_json(result_json_path(out)) == (13, {"acc": 1.0, "loss": 0.25})


def test_validate_writes_result_json(tmp_path: Path, env: None) -> None:
    src, out = tmp_path / "in.safetensors", tmp_path / "val.json"
    save_model(src, tiny_init())
    _run(["validate", str(src), str(out)])
    n, metrics = read_result_json(out)
    assert n == 5
    assert metrics == {"accuracy": pytest.approx(2.5)}
    assert SEEN[-1].round == 3


def test_defaults_without_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ENV:
        monkeypatch.delenv(k, raising=False)
    src, out = tmp_path / "in.safetensors", tmp_path / "val.json"
    save_model(src, tiny_init())
    SEEN.clear()
    _run(["validate", str(src), str(out)])
    ctx = SEEN[-1]
    assert (ctx.round, ctx.client_index, ctx.num_clients, dict(ctx.config)) == (0, None, None, {})


# ------------------------------------------------------------- usage errors


def _usage_error(capsys: pytest.CaptureFixture[str], argv: list[str], **fns: object) -> str:
    with pytest.raises(SystemExit) as exc:
        _run(argv, **fns)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    return err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "missing command"),
        (["fit", "a", "b"], "unknown command 'fit'"),
        (["train"], "missing IN_MODEL OUT_MODEL"),
        (["train", "in.safetensors"], "missing OUT_MODEL"),
        (["validate", "in.safetensors"], "missing OUT_JSON"),
        (["init"], "missing OUT_MODEL"),
        (["init", "a", "b"], "too many arguments"),
        (["train", "a", "b", "c"], "too many arguments"),
    ],
)
def test_bad_argv_exits_2(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    assert needle in _usage_error(capsys, argv)


def test_missing_input_model_exits_2(
    tmp_path: Path, env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.safetensors"
    err = _usage_error(capsys, ["train", str(missing), str(tmp_path / "out")])
    assert "IN_MODEL" in err and "does not exist" in err and str(missing) in err
    assert not SEEN  # the train function never ran


def test_corrupt_input_model_exits_2(
    tmp_path: Path, env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model at all")
    err = _usage_error(capsys, ["validate", str(bad), str(tmp_path / "v.json")])
    assert "IN_MODEL" in err and "corrupt" in err


def test_missing_output_directory_exits_2(
    tmp_path: Path, env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.safetensors"
    save_model(src, tiny_init())
    err = _usage_error(capsys, ["train", str(src), str(tmp_path / "no" / "out.safetensors")])
    assert "OUT_MODEL" in err and "does not exist" in err


def test_command_without_function_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _usage_error(capsys, ["validate", "a", "b"], train=tiny_train)
    assert "no validate function" in err


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("FEDKUBE_CONFIG", "{not json"),
        ("FEDKUBE_CONFIG", "[1, 2]"),
        ("FEDKUBE_ROUND", "three"),
        ("FEDKUBE_CLIENT_INDEX", "x"),
    ],
)
def test_bad_environment_exits_2_naming_the_variable(
    tmp_path: Path,
    env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    var: str,
    value: str,
) -> None:
    monkeypatch.setenv(var, value)
    src = tmp_path / "in.safetensors"
    save_model(src, tiny_init())
    err = _usage_error(capsys, ["train", str(src), str(tmp_path / "out")])
    assert var in err
    assert not SEEN


def test_context_from_env_matches_task_context_env() -> None:
    ctx = TaskContext("j", 4, 2, "c", {"a": 1}, client_index=0, num_clients=3)
    assert context_from_env(ctx.env()) == ctx


# ---------------------------------------------------------- user function errors


def test_train_exception_propagates(tmp_path: Path, env: None) -> None:
    def boom(model: Tensors, ctx: TaskContext) -> TrainResult:
        raise RuntimeError("out of data")

    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_model(src, tiny_init())
    with pytest.raises(RuntimeError, match="out of data"):
        run(train=boom, argv=["train", str(src), str(out)])
    assert not out.exists() and not result_json_path(out).exists()


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({"w": np.zeros((2, 3), np.float32)}, "missing tensors"),
        ({**tiny_init(), "extra": np.zeros(1, np.float32)}, "unexpected tensors ['extra']"),
        ({**tiny_init(), "w": np.zeros((3, 2), np.float32)}, "tensor 'w': shape"),
        ({**tiny_init(), "step": np.zeros(1, np.float32)}, "tensor 'step': dtype"),
        ({**tiny_init(), "b": np.full(3, np.nan, np.float32)}, "'b' holds NaN"),
    ],
)
def test_bad_train_output_raises_task_error(
    tmp_path: Path, env: None, bad: Tensors, needle: str
) -> None:
    def train(model: Tensors, ctx: TaskContext) -> TrainResult:
        return TrainResult(bad, 1)

    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_model(src, tiny_init())
    with pytest.raises(TaskError) as exc:
        run(train=train, argv=["train", str(src), str(out)])
    assert needle in str(exc.value)
    assert not out.exists() and not result_json_path(out).exists()


def test_bad_train_metrics_raise_and_write_nothing(tmp_path: Path, env: None) -> None:
    def nan_metric(model: Tensors, ctx: TaskContext) -> TrainResult:
        return TrainResult(dict(model), 4, {"loss": math.nan})

    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_model(src, tiny_init())
    with pytest.raises(TaskError, match=r"metrics\.loss"):
        run(train=nan_metric, argv=["train", str(src), str(out)])
    assert not out.exists() and not result_json_path(out).exists()


def test_script_exit_codes(tmp_path: Path) -> None:
    """As a real script: exit 2 with a message for usage errors, 1 with a traceback."""
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            from fedkube.client.entrypoint import run

            def train(model, ctx):
                raise ValueError("bad batch")

            run(train=train)
            """
        )
    )
    src = tmp_path / "in.safetensors"
    save_model(src, tiny_init())

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, timeout=60
        )

    usage = call("train", str(src))
    assert usage.returncode == 2
    assert "train.py: error: train: missing OUT_MODEL" in usage.stderr

    failed = call("train", str(src), str(tmp_path / "out.safetensors"))
    assert failed.returncode == 1
    assert "Traceback" in failed.stderr and "ValueError: bad batch" in failed.stderr
