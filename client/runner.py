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

A command is contained (`fedkube.process.run_contained`): it runs in a process
group of its own, which is killed whole when its time is up (`task_timeout`
ends that time a margin before the combiner's deadline) or the client stops;
its output goes to a size-capped log file per task (WORKDIR/tasks/), whose
tail is logged and shown in the failure; its environment holds no credential
(`fedkube.contract.command_environ`).
"""

from __future__ import annotations

import os
import shlex
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from fedkube import contract
from fedkube.contract import Outcome
from fedkube.errors import TaskError
from fedkube.logs import get_logger
from fedkube.model import load_model, read_header
from fedkube.process import CommandResult, run_contained
from fedkube.spec import FederatedJob
from fedkube.task import TaskContext, load_callable

#: A task's time limit ends this long before the combiner's deadline, so that a
#: failure report (or the update) still arrives in time: REPORT_MARGIN_FRACTION
#: of the time left, at least REPORT_MARGIN_MIN and at most REPORT_MARGIN_MAX
#: seconds; the limit is never below MIN_TASK_SECONDS.
REPORT_MARGIN_FRACTION: Final = 0.1
REPORT_MARGIN_MIN: Final = 2.0
REPORT_MARGIN_MAX: Final = 15.0
MIN_TASK_SECONDS: Final = 1.0
#: the time limit of a task without a deadline
NO_DEADLINE_SECONDS: Final = 3600.0
#: per-task command logs kept in WORKDIR/tasks/ (the oldest are removed)
KEEP_TASK_LOGS: Final = 50
#: characters of a command's output tail in its TaskError
MESSAGE_TAIL_CHARS: Final = 3000


def task_timeout(deadline_unix_ms: int, now: float | None = None) -> float:
    """Seconds the user's code may run for a task due at `deadline_unix_ms` (0: none):
    the time left minus the report margin (see REPORT_MARGIN_FRACTION)."""
    if not deadline_unix_ms:
        return NO_DEADLINE_SECONDS
    left = deadline_unix_ms / 1000 - (time.time() if now is None else now)
    margin = max(REPORT_MARGIN_MIN, min(REPORT_MARGIN_MAX, REPORT_MARGIN_FRACTION * left))
    return max(MIN_TASK_SECONDS, left - margin)


class TaskRunner(Protocol):
    def train(self, in_path: Path, out_path: Path, ctx: TaskContext, timeout: float) -> Outcome: ...

    def init(self, out_path: Path, ctx: TaskContext, timeout: float) -> None: ...

    def validate(self, in_path: Path, ctx: TaskContext, timeout: float) -> Outcome: ...

    def cancel(self) -> None:
        """The client is stopping: end the running task (and refuse new ones)."""


class InProcessRunner:
    def __init__(
        self, train_fn: str | None, validate_fn: str | None, init_fn: str | None = None
    ) -> None:
        self._train = load_callable(train_fn) if train_fn else None
        self._validate = load_callable(validate_fn) if validate_fn else None
        self._init = load_callable(init_fn) if init_fn else None

    def cancel(self) -> None:
        """Nothing to do: a function cannot be stopped from outside; it returns."""

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
    """Runs the contract's commands, contained (see the module docstring).

    `env` (spec.train.env) is added to the client's own environment minus its
    credentials and the names in `hidden_env`. Each command's output goes to
    ``workdir/tasks/<round>-<attempt>-<kind>.log``."""

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
        hidden_env: frozenset[str] = frozenset(),
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
        self.hidden_env = hidden_env
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop the running command's whole process group; refuse new commands."""
        self._cancel.set()

    def _run(self, argv: list[str], ctx: TaskContext, timeout: float, what: str) -> None:
        if self._cancel.is_set():
            raise TaskError(f"{what} command not started: the client is stopping")
        env = contract.command_environ(os.environ, self.env, ctx.env(), hidden=self.hidden_env)
        if argv and argv[0] in ("python", "python3"):
            # A bare `python` means this client's own interpreter (its venv), not
            # whatever `python` happens to be first on PATH.
            argv = [sys.executable, *argv[1:]]
        try:
            res = run_contained(
                argv,
                log_path=self._log_path(ctx, what),
                timeout=max(MIN_TASK_SECONDS, timeout),
                cwd=self.cwd,
                env=env,
                cancel=self._cancel,
            )
        except FileNotFoundError:
            raise TaskError(f"{what} command not found: {argv[0]!r}") from None
        except OSError as exc:
            raise TaskError(f"{what} command {argv[0]!r} cannot be run: {exc}") from None
        _log_output(res, ctx, what)
        # The report of a failure is bounded (4000 characters): the log's path
        # first, then the newest output.
        tail = (
            f"(whole output: {res.log_path})\n--- output tail ---\n"
            f"{res.tail[-MESSAGE_TAIL_CHARS:] or '(no output)'}"
        )
        if res.timed_out:
            raise TaskError(
                f"{what} command timed out after {timeout:.0f}s (before the round's "
                f"deadline); its process group was killed\n{tail}"
            )
        if res.cancelled:
            raise TaskError(f"{what} command stopped: the client is stopping\n{tail}")
        if res.returncode != 0:
            lines = [ln for ln in res.tail.splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else "(no output)"
            raise TaskError(f"{what} command exited with {res.returncode}: {last}\n{tail}")

    def _log_path(self, ctx: TaskContext, what: str) -> Path:
        """This task's log file, after removing all but the newest KEEP_TASK_LOGS - 1."""
        logs = self.workdir / "tasks"
        logs.mkdir(parents=True, exist_ok=True)
        old = sorted(logs.glob("*.log"), key=_mtime)
        for p in old[: max(0, len(old) - KEEP_TASK_LOGS + 1)]:
            p.unlink(missing_ok=True)
        return logs / f"{ctx.round}-{ctx.attempt}-{what}.log"

    def train(self, in_path: Path, out_path: Path, ctx: TaskContext, timeout: float) -> Outcome:
        if not self.train_cmd:
            raise TaskError("this client has no train command (--train-cmd)")
        out_path.unlink(missing_ok=True)
        meta = contract.result_json_path(out_path)
        meta.unlink(missing_ok=True)
        like = read_header(in_path)  # before the command could touch IN_MODEL
        self._run([*self.train_cmd, str(in_path), str(out_path)], ctx, timeout, "train")
        if not out_path.exists():
            raise TaskError(f"train command wrote no model to {out_path}")
        if not meta.exists():
            raise TaskError(f"train command wrote no {meta.name} (num_examples, metrics)")
        try:
            claims = contract.load_result_json(meta)
            return contract.finish_train(like, out_path, *claims)
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


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _log_output(res: CommandResult, ctx: TaskContext, what: str) -> None:
    """One event in the client's log for a command that ran: its tail and log file."""
    log = get_logger("client", job=ctx.job, client=ctx.client_id)
    ok = res.returncode == 0
    (log.info if ok else log.warning)(
        f"{what} command output",
        round=ctx.round,
        attempt=ctx.attempt,
        exit_code=res.returncode,
        timed_out=res.timed_out or None,
        seconds=round(res.seconds, 3),
        output_bytes=res.output_bytes,
        log=str(res.log_path),
        tail=res.tail,
    )


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
        mongodb = job.spec.state_store.mongodb if job is not None else None
        return CommandRunner(
            chosen.train_cmd,
            chosen.validate_cmd,
            cwd=cwd,
            env=dict(job.spec.train.env) if job is not None else {},
            workdir=workdir,
            init_cmd=chosen.init_cmd,
            init_fn=chosen.seed_fn,
            hidden_env=frozenset({mongodb.uri_env}) if mongodb is not None else frozenset(),
        )
    raise ValueError(
        "no train entrypoint: pass --train-fn or --train-cmd, or a job file with spec.train"
    )
