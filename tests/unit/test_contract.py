"""fedkube.contract: the train entrypoint contract, the same for both forms.

The same bad result (num_examples 0, a wrong tensor name, a non-finite metric,
NaN weights, ...) fails on the client with the same message whether an
in-process function (InProcessRunner) or a command (CommandRunner) produced it.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedkube.client.runner import CommandRunner, InProcessRunner, TaskRunner
from fedkube.contract import (
    check_num_examples,
    read_result_json,
    write_result_json,
)
from fedkube.errors import TaskError
from fedkube.model import load_model, save_model
from fedkube.task import TaskContext, Tensors, TrainResult, ValidationResult

CTX = TaskContext(job="j", round=1, attempt=1, client_id="c1")


def model() -> Tensors:
    return {"w": np.arange(4, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}


# What a bad train result holds: tensors, num_examples, metrics. The in-process
# function returns it; the command writes it (OUT_MODEL and OUT_MODEL.json).
BAD_TRAIN: dict[str, tuple[dict[str, list[float]], object, dict[str, float]]] = {
    "zero_examples": ({"w": [0, 1, 2, 3], "b": [0, 0]}, 0, {"loss": 0.5}),
    "negative_examples": ({"w": [0, 1, 2, 3], "b": [0, 0]}, -2, {}),
    "wrong_name": ({"w": [0, 1, 2, 3], "bias": [0, 0]}, 4, {}),
    "wrong_shape": ({"w": [0, 1, 2], "b": [0, 0]}, 4, {}),
    "nan_metric": ({"w": [0, 1, 2, 3], "b": [0, 0]}, 4, {"loss": math.nan}),
    "inf_weights": ({"w": [0, math.inf, 2, 3], "b": [0, 0]}, 4, {}),
}
NEEDLES = {
    "zero_examples": "train result: num_examples must be a positive integer, got 0",
    "negative_examples": "train result: num_examples must be a positive integer, got -2",
    "wrong_name": "train result: wrong tensor names: missing tensors ['b']; "
    "unexpected tensors ['bias']",
    "wrong_shape": "train result: tensor 'w': shape [3], expected [4]",
    "nan_metric": "train result: metrics.loss must be finite, got nan",
    "inf_weights": "train result: tensor 'w' holds NaN or Inf values",
}


def _tensors(case: str) -> Tensors:
    return {k: np.array(v, dtype=np.float32) for k, v in BAD_TRAIN[case][0].items()}


def bad_train(model: Tensors, ctx: TaskContext) -> TrainResult:
    _, n, metrics = BAD_TRAIN[ctx.config["case"]]
    return TrainResult(_tensors(ctx.config["case"]), n, dict(metrics))  # type: ignore[arg-type]


def bad_validate(model: Tensors, ctx: TaskContext) -> ValidationResult:
    return ValidationResult(0, {"accuracy": 0.5})


COMMAND = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from fedkube.model import save_model
    in_model, out = sys.argv[1], sys.argv[2]
    case = json.loads(os.environ["FEDKUBE_CONFIG"])["case"]
    tensors, n, metrics = json.loads(os.environ["CASE_JSON"])
    if case == "validate":
        open(out, "w").write(json.dumps({"num_examples": 0, "metrics": {"accuracy": 0.5}}))
        sys.exit(0)
    save_model(out, {k: np.array(v, dtype=np.float32) for k, v in tensors.items()})
    open(out + ".json", "w").write(json.dumps({"num_examples": n, "metrics": metrics}))
    """
)


def _failure(runner: TaskRunner, tmp: Path, case: str) -> str:
    """The TaskError message of `runner` on one bad case."""
    src = tmp / "in.safetensors"
    save_model(src, model())
    ctx = TaskContext(job="j", round=1, attempt=1, client_id="c1", config={"case": case})
    with pytest.raises(TaskError) as exc:
        if case == "validate":
            runner.validate(src, ctx, 60)
        else:
            runner.train(src, tmp / "out.safetensors", ctx, 60)
    return str(exc.value)


def _in_process(tmp: Path, case: str) -> str:
    return _failure(InProcessRunner(f"{__name__}:bad_train", f"{__name__}:bad_validate"), tmp, case)


def _command(tmp: Path, case: str) -> str:
    script = tmp / "train.py"
    script.write_text(COMMAND)
    env = {"CASE_JSON": json.dumps(BAD_TRAIN.get(case, ({}, 0, {})))}
    argv = [sys.executable, "-P", str(script)]
    return _failure(CommandRunner(argv, argv, env=env, workdir=tmp), tmp, case)


@pytest.mark.parametrize("case", sorted(BAD_TRAIN))
def test_a_bad_train_result_fails_the_same_in_both_forms(tmp_path: Path, case: str) -> None:
    in_process = _in_process(tmp_path, case)
    command = _command(tmp_path, case)
    assert in_process == command
    assert in_process == NEEDLES[case]


def test_a_bad_validation_result_fails_the_same_in_both_forms(tmp_path: Path) -> None:
    in_process = _in_process(tmp_path, "validate")
    assert in_process == _command(tmp_path, "validate")
    assert in_process == "validation result: num_examples must be a positive integer, got 0"


def test_a_good_in_process_result_is_cast_and_written(tmp_path: Path) -> None:
    """float64 math on a float32 model is cast back; tensors keep the input order."""

    def train(m: Tensors, ctx: TaskContext) -> TrainResult:
        return TrainResult({"b": m["b"] + 1, "w": m["w"].astype(np.float64) * 2}, 3, {"l": 1})

    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_model(src, model())
    runner = InProcessRunner(None, None)
    runner._train = train
    assert runner.train(src, out, CTX, 30) == (3, {"l": 1.0})
    got = load_model(out)
    assert list(got) == ["w", "b"] and got["w"].dtype == np.float32
    np.testing.assert_array_equal(got["w"], np.arange(4, dtype=np.float32) * 2)


@pytest.mark.parametrize("value", [0, -1, 2.5, "3", True, None])
def test_num_examples_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(TaskError, match="num_examples must be a positive integer"):
        check_num_examples(value)


def test_num_examples_accepts_numpy_integers() -> None:
    assert check_num_examples(np.int64(7)) == 7


# ---------------------------------------------------------------- result JSON


def test_write_read_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    write_result_json(p, np.int64(12), {"loss": np.float32(0.5), "acc": 1})
    assert read_result_json(p) == (12, {"loss": 0.5, "acc": 1.0})
    assert json.loads(p.read_text()) == {"num_examples": 12, "metrics": {"acc": 1.0, "loss": 0.5}}


def test_write_rejects_bad_values(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    with pytest.raises(TaskError, match="num_examples"):
        write_result_json(p, -1, {})
    with pytest.raises(TaskError, match=r"metrics\.loss"):
        write_result_json(p, 1, {"loss": math.inf})
    assert not p.exists()


def test_missing_metrics_means_none(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    p.write_text('{"num_examples": 1}')
    assert read_result_json(p) == (1, {})


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"metrics": {}}', "num_examples is missing"),
        ('{"num_examples": -3, "metrics": {}}', "num_examples"),
        ('{"num_examples": 0, "metrics": {}}', "num_examples must be a positive integer"),
        ('{"num_examples": 2.5, "metrics": {}}', "num_examples"),
        ('{"num_examples": "10", "metrics": {}}', "num_examples"),
        ('{"num_examples": true, "metrics": {}}', "num_examples"),
        ('{"num_examples": 1, "metrics": [1]}', "metrics must be a mapping"),
        ('{"num_examples": 1, "metrics": {"loss": NaN}}', "metrics.loss"),
        ('{"num_examples": 1, "metrics": {"loss": Infinity}}', "metrics.loss"),
        ('{"num_examples": 1, "metrics": {"acc": -Infinity}}', "metrics.acc"),
        ('{"num_examples": 1, "metrics": {"acc": "0.9"}}', "metrics.acc"),
        ('{"num_examples": 1, "metrics": {"acc": null}}', "metrics.acc"),
    ],
)
def test_read_rejects_bad_json(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "r.json"
    p.write_text(text)
    with pytest.raises(TaskError) as exc:
        read_result_json(p)
    assert needle in str(exc.value)
    assert str(p) in str(exc.value)


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="cannot be read"):
        read_result_json(tmp_path / "absent.json")


def test_read_oversized_file(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    p.write_text('{"num_examples": 1, "metrics": {}}' + " " * (2 * 1024 * 1024))
    with pytest.raises(TaskError, match="over the limit"):
        read_result_json(p)
