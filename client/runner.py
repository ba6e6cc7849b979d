"""Runs the user's train/validate code for a task: in-process or as a command.

In-process (`--train-fn package.module:function`): the function is imported
once and called for every task, so imports, data and caches stay warm.
Command (`--train-cmd "python train.py"`): the train entrypoint contract,
`CMD IN_MODEL OUT_MODEL` with FEDKUBE_* environment, any language. A bare
leading `python` runs with the client's own interpreter.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from fedkube.client.entrypoint import read_result_json
from fedkube.errors import TaskError
from fedkube.model import load_model, save_model
from fedkube.task import TaskContext, TrainResult, ValidationResult, load_callable

Outcome = tuple[int, dict[str, float]]


class TaskRunner(Protocol):
    def train(self, in_path: Path, out_path: Path, ctx: TaskContext, timeout: float) -> Outcome: ...

    def init(self, out_path: Path, ctx: TaskContext, timeout: float) -> None: ...

    def validate(self, in_path: Path, ctx: TaskContext, timeout: float) -> Outcome: ...


class InProcessRunner:
    def __init__(
        self, train_fn: str | None, validate_fn: str | None, init_fn: str | None = None
    ) -> None:
        self._train = load_callable(train_fn) if train_fn else None
        self._validate = load_callable(validate_fn) if validate_fn else None
        self._init = load_callable(init_fn) if init_fn else None

    def init(self, out_path: Path, ctx: TaskContext, timeout: float) -> None:
        if self._init is None:
            raise TaskError("this client has no init function (--init-fn)")
        tensors = self._init()
        try:
            save_model(out_path, tensors, {"round": "0"})
        except (AttributeError, TypeError) as exc:
            raise TaskError(
                f"init function must return a mapping of name -> numpy array: {exc}"
            ) from None

    def train(self, in_path: Path, out_path: Path, ctx: TaskContext, timeout: float) -> Outcome:
        if self._train is None:
            raise TaskError("this client has no train function (--train-fn)")
        model = load_model(in_path)
        res = self._train(model, ctx)
        if not isinstance(res, TrainResult):
            raise TaskError(f"train function returned {type(res).__name__}, not TrainResult")
        save_model(out_path, res.model)
        return int(res.num_examples), {k: float(v) for k, v in res.metrics.items()}

    def validate(self, in_path: Path, ctx: TaskContext, timeout: float) -> Outcome:
        if self._validate is None:
            raise TaskError("this client has no validate function (--validate-fn)")
        res = self._validate(load_model(in_path), ctx)
        if not isinstance(res, ValidationResult):
            raise TaskError(
                f"validate function returned {type(res).__name__}, not ValidationResult"
            )
        return int(res.num_examples), {k: float(v) for k, v in res.metrics.items()}


def split_command(cmd: str | Sequence[str] | None) -> list[str] | None:
    if cmd is None:
        return None
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


class CommandRunner:
    def __init__(
        self,
        train_cmd: Sequence[str] | None,
        validate_cmd: Sequence[str] | None,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        workdir: Path,
        init_cmd: Sequence[str] | None = None,
        init_fn: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.init_cmd = list(init_cmd) if init_cmd else None
        # A job may name its seed as an in-process function while training runs
        # as a command (spec.model.initFn with spec.train.command).
        self._init_fn = InProcessRunner(None, None, init_fn) if init_fn else None
        self.train_cmd = list(train_cmd) if train_cmd else None
        self.validate_cmd = list(validate_cmd) if validate_cmd else None
        self.cwd = cwd
        self.env = env or {}

    def _run(self, argv: list[str], ctx: TaskContext, timeout: float, what: str) -> None:
        env = {**os.environ, **self.env, **ctx.env()}
        if argv and argv[0] in ("python", "python3"):
            # A bare `python` means this client's own interpreter (its venv), not
            # whatever `python` happens to be first on PATH.
            argv = [sys.executable, *argv[1:]]
        try:
            proc = subprocess.run(
                argv,
                cwd=self.cwd,
                env=env,
                timeout=max(1.0, timeout),
                capture_output=True,
                text=True,
            )
        except FileNotFoundError:
            raise TaskError(f"{what} command not found: {argv[0]!r}") from None
        except subprocess.TimeoutExpired:
            raise TaskError(f"{what} command timed out after {timeout:.0f}s") from None
        if proc.returncode != 0:
            out = proc.stderr or proc.stdout or ""
            lines = [ln for ln in out.splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else "(no output)"
            raise TaskError(
                f"{what} command exited with {proc.returncode}: {last}\n"
                f"--- output tail ---\n{out[-2000:]}"
            )

    def train(self, in_path: Path, out_path: Path, ctx: TaskContext, timeout: float) -> Outcome:
        if not self.train_cmd:
            raise TaskError("this client has no train command (--train-cmd)")
        out_path.unlink(missing_ok=True)
        meta = Path(str(out_path) + ".json")
        meta.unlink(missing_ok=True)
        self._run([*self.train_cmd, str(in_path), str(out_path)], ctx, timeout, "train")
        if not out_path.exists():
            raise TaskError(f"train command wrote no model to {out_path}")
        if not meta.exists():
            raise TaskError(f"train command wrote no {meta.name} (num_examples, metrics)")
        try:
            return read_result_json(meta)
        finally:
            meta.unlink(missing_ok=True)

    def init(self, out_path: Path, ctx: TaskContext, timeout: float) -> None:
        if not self.init_cmd and self._init_fn is not None:
            self._init_fn.init(out_path, ctx, timeout)
            return
        if not self.init_cmd:
            raise TaskError("this client has no init command (--init-cmd)")
        out_path.unlink(missing_ok=True)
        self._run([*self.init_cmd, str(out_path)], ctx, timeout, "init")
        if not out_path.exists():
            raise TaskError(f"init command wrote no model to {out_path}")

    def validate(self, in_path: Path, ctx: TaskContext, timeout: float) -> Outcome:
        if not self.validate_cmd:
            raise TaskError("this client has no validate command (--validate-cmd)")
        out = self.workdir / "validation.json"
        out.unlink(missing_ok=True)
        self._run([*self.validate_cmd, str(in_path), str(out)], ctx, timeout, "validate")
        if not out.exists():
            raise TaskError(f"validate command wrote no {out}")
        try:
            return read_result_json(out)
        finally:
            out.unlink(missing_ok=True)
