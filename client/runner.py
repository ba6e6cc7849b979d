"""Runs the user's train/validate/init code for a task: in-process or as a command.

In-process (``--train-fn package.module:function``): the function is imported
once and called for every task, so imports, data and caches stay warm.
Command (``--train-cmd "python train.py"``): the train entrypoint contract,
``CMD IN_MODEL OUT_MODEL`` with FEDKUBE_* environment, any language. A bare
leading ``python`` runs with the client's own interpreter.

Both forms finish through `fedkube.contract`, so a bad result (``num_examples``
not > 0, a wrong tensor name, a non-finite metric, ...) fails here, on the
client, with the same message whichever form produced it. `make_runner` picks
the form from the command-line flags or the job spec.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fedkube import contract
from fedkube.contract import Outcome
from fedkube.errors import TaskError
from fedkube.model import load_model, read_header
from fedkube.spec import FederatedJob
from fedkube.task import TaskContext, load_callable


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
        contract.write_tensors(contract.INIT, out_path, contract.init_tensors(self._init()))
        contract.finish_init(out_path)

    def train(self, in_path: Path, out_path: Path, ctx: TaskContext, timeout: float) -> Outcome:
        if self._train is None:
            raise TaskError("this client has no train function (--train-fn)")
        like = read_header(in_path)
        res = self._train(load_model(in_path), ctx)
        contract.write_tensors(contract.TRAIN, out_path, contract.train_tensors(res, like))
        return contract.finish_train(like, out_path, res.num_examples, res.metrics)

    def validate(self, in_path: Path, ctx: TaskContext, timeout: float) -> Outcome:
        if self._validate is None:
            raise TaskError("this client has no validate function (--validate-fn)")
        return contract.finish_validation(self._validate(load_model(in_path), ctx))


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
        meta = contract.result_json_path(out_path)
        meta.unlink(missing_ok=True)
        self._run([*self.train_cmd, str(in_path), str(out_path)], ctx, timeout, "train")
        if not out_path.exists():
            raise TaskError(f"train command wrote no model to {out_path}")
        if not meta.exists():
            raise TaskError(f"train command wrote no {meta.name} (num_examples, metrics)")
        try:
            claims = contract.load_result_json(meta)
            return contract.finish_train(read_header(in_path), out_path, *claims)
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
        contract.finish_init(out_path)

    def validate(self, in_path: Path, ctx: TaskContext, timeout: float) -> Outcome:
        if not self.validate_cmd:
            raise TaskError("this client has no validate command (--validate-cmd)")
        out = self.workdir / "validation.json"
        out.unlink(missing_ok=True)
        self._run([*self.validate_cmd, str(in_path), str(out)], ctx, timeout, "validate")
        if not out.exists():
            raise TaskError(f"validate command wrote no {out}")
        try:
            return contract.check_result(contract.VALIDATION, *contract.load_result_json(out))
        finally:
            out.unlink(missing_ok=True)


# ---------------------------------------------------------------- which runner


@dataclass(frozen=True)
class Entrypoints:
    """The user code a client runs: in-process functions or commands, not both.

    `seed_fn` is the one exception: a job's spec.model.initFn beside its
    spec.train.command (the seed made in-process, training run as a command).
    """

    train_fn: str | None = None
    validate_fn: str | None = None
    init_fn: str | None = None
    train_cmd: list[str] | None = None
    validate_cmd: list[str] | None = None
    init_cmd: list[str] | None = None
    seed_fn: str | None = None

    @property
    def functions(self) -> bool:
        return bool(self.train_fn or self.validate_fn or self.init_fn)

    @property
    def commands(self) -> bool:
        return bool(self.train_cmd or self.validate_cmd or self.init_cmd)

    @classmethod
    def from_spec(cls, job: FederatedJob) -> Entrypoints:
        """The job's spec.train / spec.model entry points: the in-process form when it
        has one and spec.clients.simulation.inProcess (or the lack of a command) says so."""
        t, m = job.spec.train, job.spec.model
        if t.fn and (job.spec.clients.simulation.in_process or not t.command):
            return cls(train_fn=t.fn, validate_fn=t.validate_fn, init_fn=m.init_fn)
        return cls(
            train_cmd=split_command(t.command),
            validate_cmd=split_command(t.validate_command),
            init_cmd=split_command(m.init_command),
            seed_fn=m.init_fn,
        )


def make_runner(
    flags: Entrypoints, job: FederatedJob | None, *, cwd: Path | None, workdir: Path
) -> TaskRunner:
    """The runner for the flags given (``--train-fn``, ``--train-cmd``, ...), else for
    the job spec; commands run in `cwd` with the spec's spec.train.env. ValueError for
    flags that mix both forms, or no entry point at all."""
    if flags.functions and flags.commands:
        raise ValueError(
            "use either the in-process functions (--train-fn, --validate-fn, --init-fn) "
            "or the commands (--train-cmd, --validate-cmd, --init-cmd)"
        )
    chosen = flags
    if not (flags.functions or flags.commands) and job is not None:
        chosen = Entrypoints.from_spec(job)
    if chosen.functions:
        return InProcessRunner(chosen.train_fn, chosen.validate_fn, chosen.init_fn)
    if chosen.commands:
        return CommandRunner(
            chosen.train_cmd,
            chosen.validate_cmd,
            cwd=cwd,
            env=dict(job.spec.train.env) if job is not None else {},
            workdir=workdir,
            init_cmd=chosen.init_cmd,
            init_fn=chosen.seed_fn,
        )
    raise ValueError(
        "no train entrypoint: pass --train-fn or --train-cmd, or a job file with spec.train"
    )
