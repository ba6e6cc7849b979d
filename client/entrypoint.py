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

The checks on what the functions return are the contract's own
(`fedkube.contract`): the client runtime applies the same ones to what any
train command writes, so a script built on this helper fails on the same
results, with the same messages, as an in-process function.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from fedkube import contract
from fedkube.errors import ModelFileError
from fedkube.model import load_model, read_header
from fedkube.task import InitFn, TaskContext, Tensors, TrainFn, ValidateFn

__all__ = ["context_from_env", "run"]

USAGE = """\
usage: {prog} train IN_MODEL OUT_MODEL
       {prog} validate IN_MODEL OUT_JSON
       {prog} init OUT_MODEL"""

_ARGS = {
    "train": ("IN_MODEL", "OUT_MODEL"),
    "validate": ("IN_MODEL", "OUT_JSON"),
    "init": ("OUT_MODEL",),
}


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
        _do_train(train, Path(rest[0]), model, ctx, out)
    else:
        assert validate is not None
        _do_validate(validate, model, ctx, out)


def _do_train(train: TrainFn, in_model: Path, model: Tensors, ctx: TaskContext, out: Path) -> None:
    like = read_header(in_model)
    result = train(model, ctx)
    tensors = contract.train_tensors(result, like)
    n, metrics = contract.check_result(contract.TRAIN, result.num_examples, result.metrics)
    contract.write_tensors(contract.TRAIN, out, tensors)
    try:
        contract.check_train_model(like, out)
    except BaseException:
        out.unlink(missing_ok=True)  # nothing is written for a bad result
        raise
    contract.write_result_json(contract.result_json_path(out), n, metrics)


def _do_validate(validate: ValidateFn, model: Tensors, ctx: TaskContext, out: Path) -> None:
    n, metrics = contract.finish_validation(validate(model, ctx))
    contract.write_result_json(out, n, metrics)


def _do_init(init: InitFn, out: Path) -> None:
    contract.write_tensors(contract.INIT, out, contract.init_tensors(init()))
    try:
        contract.finish_init(out)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
