"""The train entrypoint contract: what train, validate and init code must produce.

Pure module (local files only, like fedkube.model). User code comes in two
forms, and both are checked here, by the same functions, in the same order and
with the same messages:

- in-process: ``train(model, ctx) -> TrainResult``, ``validate(model, ctx) ->
  ValidationResult``, ``init() -> tensors`` (fedkube writes the files);
- a command (any language): ``CMD IN_MODEL OUT_MODEL`` writes ``OUT_MODEL``
  (safetensors) and ``OUT_MODEL.json``; ``CMD IN_MODEL OUT_JSON`` writes the
  validation result; ``CMD OUT_MODEL`` writes the seed model.

The result JSON is ``{"num_examples": int, "metrics": {name: number}}``.
What is checked, and named in the `TaskError` when it fails:

- ``num_examples`` is an integer > 0 (the combiner refuses anything else);
- every metric is a finite number under a non-empty string name;
- a trained model has exactly the input model's tensor names, shapes and
  dtypes (`fedkube.model.check_compatible`) and only finite values;
- a seed model is a readable safetensors file with finite values.

Messages start with ``train result:``, ``validation result:`` or ``init
result:``, whichever form produced it, so a failure reads the same in both.

A command's environment is the client's minus every credential
(`command_environ`, `is_credential_env`): user code gets no fedkube token and
no store credential, only what the contract gives it.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from fedkube.errors import ModelFileError, TaskError
from fedkube.model import (
    MappedModel,
    ModelHeader,
    check_compatible,
    check_finite,
    numpy_dtype,
    save_model,
)
from fedkube.task import Tensors, TrainResult, ValidationResult

#: A result file is a count and a handful of metrics; anything larger is a bug.
MAX_RESULT_BYTES: Final = 1024 * 1024

TRAIN: Final = "train result"
VALIDATION: Final = "validation result"
INIT: Final = "init result"

Outcome = tuple[int, dict[str, float]]


# ----------------------------------------------------------------- the environment

#: Variables a train/validate/init command never inherits from its client: the
#: client's and reducer's bearer tokens (fedkube.rpc.CLIENT_TOKEN_ENV and
#: REDUCER_TOKEN_ENV), the MongoDB URI (spec.stateStore.mongodb.uriEnv's default)
#: and S3 credentials.
CREDENTIAL_ENV: Final = frozenset(
    {
        "FEDKUBE_CLIENT_TOKEN",
        "FEDKUBE_REDUCER_TOKEN",
        "FEDKUBE_MONGODB_URI",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    }
)
#: ... nor any variable whose name starts with one of these
CREDENTIAL_ENV_PREFIXES: Final = ("FEDKUBE_S3_",)
#: ... nor any FEDKUBE_* variable whose name holds one of these words
CREDENTIAL_ENV_WORDS: Final = ("TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "KEY", "MONGODB")


def is_credential_env(name: str) -> bool:
    """True for an environment variable that holds a credential (see CREDENTIAL_ENV)."""
    upper = name.upper()
    if upper in CREDENTIAL_ENV or upper.startswith(CREDENTIAL_ENV_PREFIXES):
        return True
    return upper.startswith("FEDKUBE_") and any(w in upper for w in CREDENTIAL_ENV_WORDS)


def command_environ(
    inherited: Mapping[str, str],
    *extra: Mapping[str, str],
    hidden: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """A command's environment: `inherited` (the client's own) without its credentials
    (`is_credential_env`) and without the names in `hidden` (e.g. a job's own
    spec.stateStore.mongodb.uriEnv), then each of `extra` (spec.train.env, the
    task's FEDKUBE_* variables) as given."""
    env = {k: v for k, v in inherited.items() if not is_credential_env(k) and k not in hidden}
    for more in extra:
        env.update(more)
    return env


# ----------------------------------------------------------------- the claims


def check_num_examples(value: Any, *, source: str = TRAIN) -> int:
    """`value` as an int > 0; TaskError naming ``num_examples`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TaskError(
            f"{source}: num_examples must be a positive integer, got {value!r} "
            f"({type(value).__name__})"
        )
    n = int(value)
    if n <= 0:
        raise TaskError(f"{source}: num_examples must be a positive integer, got {n}")
    return n


def check_metrics(value: Any, *, source: str = TRAIN) -> dict[str, float]:
    """`value` as ``{name: finite float}`` (None: no metrics); TaskError naming the
    bad metric otherwise."""
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


def check_result(source: str, num_examples: Any, metrics: Any) -> Outcome:
    """The checked ``(num_examples, metrics)`` of a train or validation result."""
    return check_num_examples(num_examples, source=source), check_metrics(metrics, source=source)


# ----------------------------------------------------------------- the result JSON


def result_json_path(out_model: str | Path) -> Path:
    """Where a train command writes its result: ``OUT_MODEL + ".json"``."""
    return Path(str(out_model) + ".json")


def write_result_json(
    path: str | Path, num_examples: int, metrics: Mapping[str, float] | None = None
) -> None:
    """Write ``{"num_examples": n, "metrics": {...}}`` atomically (temp file + rename).

    Raises TaskError, naming the field, for a count that is not a positive integer
    or a non-finite or non-numeric metric; nothing is written then.
    """
    p = Path(path)
    n, m = check_result(str(p), num_examples, metrics)
    text = json.dumps({"num_examples": n, "metrics": m}, allow_nan=False, sort_keys=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def load_result_json(path: str | Path) -> tuple[Any, Any]:
    """The raw ``(num_examples, metrics)`` of a result file, for `check_result`.

    Raises TaskError for a missing, unreadable or oversized file, one that is not
    JSON or not an object, or lacks ``num_examples``. A missing ``metrics`` field
    means no metrics.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_RESULT_BYTES:
            raise TaskError(
                f"result file {p} is {size} bytes, over the limit of {MAX_RESULT_BYTES}"
            )
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
    return data["num_examples"], data.get("metrics")


def read_result_json(path: str | Path, *, source: str | None = None) -> Outcome:
    """Read and check a result file; return ``(num_examples, metrics)``. Value errors
    are named after `source` (default: the file)."""
    return check_result(source or f"result file {path}", *load_result_json(path))


# ----------------------------------------------------------------- the models


def train_tensors(result: Any, like: ModelHeader) -> Tensors:
    """What an in-process train function returned, as the tensors fedkube writes.

    TaskError unless it is a `TrainResult` whose model maps names to arrays.
    Tensors come in the input model's order (any others after them, so the model
    check names them); a floating tensor of another float dtype (float64 math on
    a float32 model) is cast back to the input's dtype. Everything else is left
    for `finish_train` to check on the written file.
    """
    if not isinstance(result, TrainResult):
        raise TaskError(
            f"the train function must return a TrainResult, got {type(result).__name__}"
        )
    if not isinstance(result.model, Mapping):
        raise TaskError(
            f"{TRAIN}: TrainResult.model must be a mapping of name -> array, "
            f"got {type(result.model).__name__}"
        )
    dtypes = {t.name: t.dtype for t in like.tensors}
    names = [n for n in like.names if n in result.model]
    names += [n for n in result.model if n not in dtypes]
    out: Tensors = {}
    for name in names:
        arr = np.asarray(result.model[name])
        want = numpy_dtype(dtypes[name]) if name in dtypes else None
        if (
            want is not None
            and arr.dtype != want
            and np.issubdtype(arr.dtype, np.floating)
            and np.issubdtype(want, np.floating)
        ):
            arr = arr.astype(want)
        out[name] = arr
    return out


def write_tensors(source: str, path: Path, tensors: Tensors) -> None:
    """Write what in-process code returned; TaskError for what safetensors cannot hold."""
    try:
        save_model(path, tensors)
    except ModelFileError as exc:
        raise TaskError(f"{source}: {exc}") from None


def finish_train(like: ModelHeader, out_model: Path, num_examples: Any, metrics: Any) -> Outcome:
    """Check a train result, in either form: the claims, then ``out_model`` against
    the input model's header `like` (names, shapes, dtypes, finite values).
    Returns the checked claims."""
    outcome = check_result(TRAIN, num_examples, metrics)
    check_train_model(like, out_model)
    return outcome


def check_train_model(like: ModelHeader, out_model: Path) -> None:
    """``out_model`` has the tensor names, shapes and dtypes of the input model's
    header `like`, and only finite values; TaskError naming the first tensor that
    does not."""
    _check_model(TRAIN, out_model, like)


def finish_validation(result: Any) -> Outcome:
    """Check what an in-process validate function returned."""
    if not isinstance(result, ValidationResult):
        raise TaskError(
            f"the validate function must return a ValidationResult, got {type(result).__name__}"
        )
    return check_result(VALIDATION, result.num_examples, result.metrics)


def init_tensors(result: Any) -> Tensors:
    """What an in-process init function returned, as the tensors fedkube writes."""
    if not isinstance(result, Mapping) or not result:
        raise TaskError(
            f"the init function must return a non-empty mapping of name -> array, "
            f"got {type(result).__name__}"
        )
    out: Tensors = {}
    for name, value in result.items():
        if not isinstance(name, str):
            raise TaskError(f"{INIT}: tensor name {name!r} is not a string")
        out[name] = np.asarray(value)
    return out


def finish_init(out_model: Path) -> None:
    """Check a seed model, in either form: readable safetensors, finite values."""
    _check_model(INIT, out_model, None)


def _check_model(source: str, path: Path, like: ModelHeader | None) -> None:
    if not path.exists():
        raise TaskError(f"{source}: no model was written to {path}")
    try:
        with MappedModel(path) as model:
            if like is not None:
                check_compatible(like, model.header)
            check_finite(model)
    except ModelFileError as exc:
        raise TaskError(f"{source}: {exc}") from None
