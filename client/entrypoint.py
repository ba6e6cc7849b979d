"""The train-script helper: a Python train entrypoint in a few lines.

A script that ends with::

    from fedkube.client.entrypoint import run
    from mytask import init, train, validate

    if __name__ == "__main__":
        run(train=train, validate=validate, init=init)

implements the train entrypoint contract (docs: "Train entrypoint contract")::

    SCRIPT train IN_MODEL OUT_MODEL    -> OUT_MODEL (safetensors) + OUT_MODEL.json
    SCRIPT validate IN_MODEL OUT_JSON  -> OUT_JSON
    SCRIPT init OUT_MODEL              -> OUT_MODEL (the seed model)

The task comes from the environment (``FEDKUBE_JOB``, ``FEDKUBE_ROUND``,
``FEDKUBE_CLIENT``, ``FEDKUBE_CONFIG``, ...; see `TaskContext.env`). The result
JSON is ``{"num_examples": int, "metrics": {name: number}}``.

Exit codes: 0 on success; 2 with a one-line message on stderr for a bad command
line, a missing or corrupt input file or a bad task environment; any exception
raised by the user's function propagates (traceback on stderr, exit code 1).

`write_result_json` and `read_result_json` are the two halves of the result
file; the client runtime reads what a subprocess train command wrote with
`read_result_json`, which validates it and raises `TaskError` naming the bad
field.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from fedkube.errors import ModelFileError, TaskError
from fedkube.model import load_model, save_model
from fedkube.task import (
    InitFn,
    TaskContext,
    Tensors,
    TrainFn,
    TrainResult,
    ValidateFn,
    ValidationResult,
)

__all__ = [
    "MAX_RESULT_BYTES",
    "check_metrics",
    "check_num_examples",
    "check_train_output",
    "context_from_env",
    "read_result_json",
    "result_json_path",
    "run",
    "write_result_json",
]

# A result file is a count and a handful of metrics; anything larger is a bug.
MAX_RESULT_BYTES = 1024 * 1024

USAGE = """\
usage: {prog} train IN_MODEL OUT_MODEL
       {prog} validate IN_MODEL OUT_JSON
       {prog} init OUT_MODEL"""

_ARGS = {
    "train": ("IN_MODEL", "OUT_MODEL"),
    "validate": ("IN_MODEL", "OUT_JSON"),
    "init": ("OUT_MODEL",),
}


# ----------------------------------------------------------------- result JSON


def result_json_path(out_model: str | Path) -> Path:
    """Where a train command writes its result: ``OUT_MODEL + ".json"``."""
    return Path(str(out_model) + ".json")


def check_num_examples(value: Any, *, source: str = "result") -> int:
    """`value` as a non-negative int; TaskError naming ``num_examples`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TaskError(
            f"{source}: num_examples must be a non-negative integer, got {value!r} "
            f"({type(value).__name__})"
        )
    n = int(value)
    if n < 0:
        raise TaskError(f"{source}: num_examples must be a non-negative integer, got {n}")
    return n


def check_metrics(value: Any, *, source: str = "result") -> dict[str, float]:
    """`value` as ``{name: finite float}``; TaskError naming the bad metric otherwise."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TaskError(
            f"{source}: metrics must be a mapping of name -> number, got {type(value).__name__}"
        )
    out: dict[str, float] = {}
    for name, v in value.items():
        if not isinstance(name, str) or not name:
            raise TaskError(f"{source}: metrics: metric name {name!r} must be a non-empty string")
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TaskError(
                f"{source}: metrics.{name} must be a number, got {v!r} ({type(v).__name__})"
            )
        f = float(v)
        if not math.isfinite(f):
            raise TaskError(f"{source}: metrics.{name} must be finite, got {f}")
        out[name] = f
    return out


def write_result_json(
    path: str | Path, num_examples: int, metrics: Mapping[str, float] | None = None
) -> None:
    """Write ``{"num_examples": n, "metrics": {...}}`` atomically (temp file + rename).

    Raises TaskError, naming the field, for a negative or non-integer count or a
    non-finite or non-numeric metric; nothing is written then.
    """
    p = Path(path)
    n = check_num_examples(num_examples, source=str(p))
    m = check_metrics(metrics, source=str(p))
    text = json.dumps({"num_examples": n, "metrics": m}, allow_nan=False, sort_keys=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def read_result_json(path: str | Path) -> tuple[int, dict[str, float]]:
    """Read and validate a result file; return ``(num_examples, metrics)``.

    Raises TaskError naming the problem: missing or oversized file, not JSON, not
    an object, ``num_examples`` missing / not a non-negative integer, ``metrics``
    not a mapping or holding a non-numeric or non-finite (NaN, Infinity) value.
    A missing ``metrics`` field means no metrics.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise TaskError(f"result file {p} cannot be read: {exc.strerror}") from None
    if size > MAX_RESULT_BYTES:
        raise TaskError(f"result file {p} is {size} bytes, over the limit of {MAX_RESULT_BYTES}")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise TaskError(f"result file {p} cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TaskError(f"result file {p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TaskError(
            f"result file {p} must hold a JSON object with num_examples and metrics, "
            f"got {type(data).__name__}"
        )
    if "num_examples" not in data:
        raise TaskError(f"result file {p}: num_examples is missing")
    n = check_num_examples(data["num_examples"], source=f"result file {p}")
    m = check_metrics(data.get("metrics"), source=f"result file {p}")
    return n, m


# ------------------------------------------------------------- model checks


def check_train_output(reference: Mapping[str, np.ndarray], result: Any) -> Tensors:
    """Check what a train function returned against the model it was given.

    Returns the new tensors in the reference's order. Floating tensors of another
    float dtype (a float64 computation on a float32 model) are cast back; any other
    difference (missing or extra names, shapes, non-float dtype changes, NaN/Inf)
    raises TaskError naming the tensor.
    """
    if not isinstance(result, TrainResult):
        raise TaskError(
            f"the train function must return a TrainResult, got {type(result).__name__}"
        )
    if not isinstance(result.model, Mapping):
        raise TaskError(
            "TrainResult.model must be a mapping of name -> array, "
            f"got {type(result.model).__name__}"
        )
    missing = [k for k in reference if k not in result.model]
    extra = [k for k in result.model if k not in reference]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}")
        if extra:
            parts.append(f"unexpected tensors {extra[:5]}")
        raise TaskError("TrainResult.model has wrong tensor names: " + "; ".join(parts))
    out: Tensors = {}
    for name, ref in reference.items():
        arr = np.asarray(result.model[name])
        if arr.shape != ref.shape:
            raise TaskError(
                f"TrainResult.model tensor {name!r}: shape {list(arr.shape)}, "
                f"expected {list(ref.shape)}"
            )
        if arr.dtype != ref.dtype:
            if np.issubdtype(arr.dtype, np.floating) and np.issubdtype(ref.dtype, np.floating):
                arr = arr.astype(ref.dtype)
            else:
                raise TaskError(
                    f"TrainResult.model tensor {name!r}: dtype {arr.dtype}, expected {ref.dtype}"
                )
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise TaskError(f"TrainResult.model tensor {name!r} holds NaN or Inf values")
        out[name] = arr
    return out


# -------------------------------------------------------------- command line


class _UsageError(Exception):
    pass


def _int_env(environ: Mapping[str, str], name: str, *, optional: bool) -> None:
    value = environ.get(name)
    if value is None or (optional and value == ""):
        return
    try:
        int(value)
    except ValueError:
        raise _UsageError(f"environment variable {name}={value!r} is not an integer") from None


def context_from_env(environ: Mapping[str, str] | None = None) -> TaskContext:
    """`TaskContext.from_env` with a message naming the bad variable.

    Raises ValueError (message names the variable) for a non-integer
    ``FEDKUBE_ROUND``/``FEDKUBE_ATTEMPT``/``FEDKUBE_CLIENT_INDEX``/
    ``FEDKUBE_NUM_CLIENTS`` or a ``FEDKUBE_CONFIG`` that is not a JSON object.
    """
    e = os.environ if environ is None else environ
    try:
        for name in ("FEDKUBE_ROUND", "FEDKUBE_ATTEMPT"):
            _int_env(e, name, optional=False)
        for name in ("FEDKUBE_CLIENT_INDEX", "FEDKUBE_NUM_CLIENTS"):
            _int_env(e, name, optional=True)
    except _UsageError as exc:
        raise ValueError(str(exc)) from None
    config = e.get("FEDKUBE_CONFIG", "{}")
    try:
        parsed = json.loads(config)
    except json.JSONDecodeError as exc:
        raise ValueError(f"environment variable FEDKUBE_CONFIG is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError(
            "environment variable FEDKUBE_CONFIG must be a JSON object, "
            f"got {type(parsed).__name__}"
        )
    return TaskContext.from_env(e)


def _fail(prog: str, message: str, *, usage: bool = False) -> NoReturn:
    text = f"{prog}: error: {message}"
    if usage:
        text = USAGE.format(prog=prog) + "\n" + text
    print(text, file=sys.stderr)
    raise SystemExit(2)


def _input_model(path: str, what: str) -> Tensors:
    p = Path(path)
    if not p.is_file():
        reason = "is a directory" if p.is_dir() else "does not exist"
        raise _UsageError(f"{what} {path} {reason}")
    try:
        return load_model(p)
    except ModelFileError as exc:
        raise _UsageError(f"{what} {path}: {exc}") from None


def _output_path(path: str, what: str) -> Path:
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise _UsageError(f"{what} {path}: directory {parent} does not exist")
    if p.is_dir():
        raise _UsageError(f"{what} {path} is a directory")
    return p


def run(
    train: TrainFn | None = None,
    validate: ValidateFn | None = None,
    init: InitFn | None = None,
    argv: Sequence[str] | None = None,
) -> None:
    """Run the train entrypoint contract for the given functions.

    `argv` excludes the program name (default ``sys.argv[1:]``). Returns on
    success; raises SystemExit(2) after printing a message for a usage error; lets
    the functions' own exceptions propagate.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "entrypoint"
    available = {"train": train, "validate": validate, "init": init}
    offered = [name for name, fn in available.items() if fn is not None]
    if not offered:
        _fail(prog, "no train, validate or init function was passed to run()")
    if not args:
        _fail(prog, f"missing command (one of: {', '.join(offered)})", usage=True)
    command, rest = args[0], args[1:]
    if command not in _ARGS:
        _fail(prog, f"unknown command {command!r} (one of: {', '.join(offered)})", usage=True)
    if available[command] is None:
        _fail(prog, f"this script has no {command} function (it offers: {', '.join(offered)})")
    names = _ARGS[command]
    if len(rest) != len(names):
        want = " ".join(names)
        if len(rest) < len(names):
            missing = " ".join(names[len(rest) :])
            _fail(prog, f"{command}: missing {missing} (usage: {prog} {command} {want})")
        _fail(
            prog,
            f"{command}: too many arguments {rest[len(names) :]} (usage: {prog} {command} {want})",
        )

    try:
        if command == "init":
            out = _output_path(rest[0], "OUT_MODEL")
            assert init is not None
            _do_init(init, out)
            return
        model = _input_model(rest[0], "IN_MODEL")
        out = _output_path(rest[1], "OUT_MODEL" if command == "train" else "OUT_JSON")
        try:
            ctx = context_from_env()
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
    except _UsageError as exc:
        _fail(prog, f"{command}: {exc}")

    if command == "train":
        assert train is not None
        _do_train(train, model, ctx, out)
    else:
        assert validate is not None
        _do_validate(validate, model, ctx, out)


def _do_train(train: TrainFn, model: Tensors, ctx: TaskContext, out: Path) -> None:
    reference = dict(model)  # names, order, shapes, dtypes even if `train` edits `model`
    result = train(model, ctx)
    tensors = check_train_output(reference, result)
    n = check_num_examples(result.num_examples, source="TrainResult")
    metrics = check_metrics(result.metrics, source="TrainResult")
    json_path = result_json_path(out)
    save_model(out, tensors)
    write_result_json(json_path, n, metrics)


def _do_validate(validate: ValidateFn, model: Tensors, ctx: TaskContext, out: Path) -> None:
    result = validate(model, ctx)
    if not isinstance(result, ValidationResult):
        raise TaskError(
            f"the validate function must return a ValidationResult, got {type(result).__name__}"
        )
    n = check_num_examples(result.num_examples, source="ValidationResult")
    metrics = check_metrics(result.metrics, source="ValidationResult")
    write_result_json(out, n, metrics)


def _do_init(init: InitFn, out: Path) -> None:
    tensors = init()
    if not isinstance(tensors, Mapping) or not tensors:
        raise TaskError(
            f"the init function must return a non-empty mapping of name -> array, "
            f"got {type(tensors).__name__}"
        )
    arrays: Tensors = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TaskError(f"the init function returned a non-string tensor name {name!r}")
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise TaskError(f"the init function's tensor {name!r} holds NaN or Inf values")
        arrays[name] = arr
    save_model(out, arrays)
