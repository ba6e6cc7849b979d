"""The client: connects to a combiner, heartbeats, runs tasks, reconnects.

One task at a time. For a train task: fetch the global model -> run the user's
code -> upload the update -> report. A failure of the user's code is reported
as such (the round goes on without this client). The connection is retried
with capped exponential backoff and jitter, so a combiner restart or a client
restart mid-round is harmless.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedkube.client.runner import TaskRunner, task_timeout
from fedkube.client.transfer import DefaultTransport, Transport, private_copy
from fedkube.digest import file_digest
from fedkube.errors import AuthError
from fedkube.logs import get_logger
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.proto.v1 import fedkube_pb2_grpc as pb_grpc
from fedkube.rpc import ClientTLS, bearer, open_channel
from fedkube.task import TaskContext
from fedkube.vocabulary import MetadataKey, Reason

# Errors that retrying cannot fix.
_FATAL = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
}


@dataclass
class ClientConfig:
    address: str
    client_id: str
    job: str
    token: str
    workdir: Path
    tls: ClientTLS | None = None
    heartbeat_seconds: float = 5.0
    client_index: int = -1
    num_clients: int = 0
    min_backoff: float = 0.2
    max_backoff: float = 30.0
    max_tasks: int | None = None  # stop after this many tasks (tests)


class ClientRuntime:
    """One client's connection to its combiner, for as long as it runs.

    ``ClientRuntime(cfg, runner).run()`` connects, heartbeats, and serves tasks
    one at a time: fetch the global model through the `Transport`, run the
    user's code through the `TaskRunner`, upload the result, report it. A
    lost connection is retried with capped, jittered backoff; a refused token
    raises AuthError.
    """

    def __init__(
        self, cfg: ClientConfig, runner: TaskRunner, transport: Transport | None = None
    ) -> None:
        self.cfg = cfg
        self.runner = runner
        self.transport = transport or DefaultTransport()
        self.log = get_logger("client", job=cfg.job, client=cfg.client_id)
        self._stop = threading.Event()
        self._call: grpc.Future | None = None
        self._current_task = ""
        self.tasks_done = 0
        self.heartbeat_seconds = cfg.heartbeat_seconds  # the combiner may ask for another
        cfg.workdir.mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        self._stop.set()
        self.runner.cancel()  # a running command's process group is killed
        call = self._call
        if call is not None:
            call.cancel()

    def run(self) -> None:
        """Serve tasks until stop() (or max_tasks). Raises AuthError on a bad token."""
        backoff = self.cfg.min_backoff
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._session()
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if self._stop.is_set():
                    break
                if code in _FATAL:
                    msg = (
                        f"combiner refused the connection: {code.name if code else ''}: "
                        f"{exc.details() if hasattr(exc, 'details') else exc}"
                    )
                    self.log.error("connection refused", error=msg)
                    raise AuthError(msg) from None
                self.log.warning(
                    "connection lost",
                    error=f"{code.name if code else exc}",
                    retry_in=round(backoff, 2),
                )
            if self._stop.is_set() or self._done():
                break
            if time.monotonic() - started > 30:
                backoff = self.cfg.min_backoff  # the session was healthy for a while
            self._stop.wait(backoff * (0.5 + random.random()))
            backoff = min(self.cfg.max_backoff, backoff * 2)

    def _done(self) -> bool:
        return self.cfg.max_tasks is not None and self.tasks_done >= self.cfg.max_tasks

    def _session(self) -> None:
        cfg = self.cfg
        md = bearer(cfg.token)
        with open_channel(cfg.address, cfg.tls) as channel:
            stub = pb_grpc.CombinerStub(channel)
            hello = pb.Hello(
                client_id=cfg.client_id,
                job=cfg.job,
                client_index=cfg.client_index,
                num_clients=cfg.num_clients,
            )
            call = stub.Connect(hello, metadata=md)
            self._call = call
            if self._stop.is_set():
                call.cancel()
            for key, value in call.initial_metadata() or ():
                if key == MetadataKey.HEARTBEAT_SECONDS:
                    self.heartbeat_seconds = max(0.05, float(value))
            if not call.done():  # else refused or unreachable: iterating raises why
                hb = threading.Thread(target=self._heartbeat, args=(stub, call), daemon=True)
                hb.start()
                self.log.info("connected", combiner=cfg.address)
            try:
                for task in call:
                    self._handle(stub, task)
                    if self._done():
                        call.cancel()
                        return
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED and (
                    self._stop.is_set() or self._done()
                ):
                    return
                raise
            finally:
                self._call = None
            self.log.info("combiner closed the task stream")

    def _heartbeat(self, stub: pb_grpc.CombinerStub, call: grpc.Future) -> None:
        md = bearer(self.cfg.token)
        while not self._stop.wait(self.heartbeat_seconds) and call.running():
            try:
                ack = stub.Heartbeat(
                    pb.Ping(
                        client_id=self.cfg.client_id, job=self.cfg.job, task_id=self._current_task
                    ),
                    metadata=md,
                    timeout=10,
                )
            except grpc.RpcError:
                continue
            if not ack.accepted and ack.reason == Reason.NOT_CONNECTED:
                self.log.warning("the combiner forgot this client; reconnecting")
                call.cancel()
                return

    def _handle(self, stub: pb_grpc.CombinerStub, task: pb.Task) -> None:
        md = bearer(self.cfg.token)
        log = self.log.bind(round=task.round, attempt=task.attempt, task=task.task_id)
        ctx = TaskContext(
            job=task.job,
            round=task.round,
            attempt=task.attempt,
            client_id=self.cfg.client_id,
            config=json.loads(task.config_json or "{}"),
            client_index=self.cfg.client_index if self.cfg.client_index >= 0 else None,
            num_clients=self.cfg.num_clients or None,
        )
        timeout = task_timeout(task.deadline_unix_ms)  # a margin before the deadline
        self._current_task = task.task_id
        t0 = time.monotonic()
        try:
            if task.kind == pb.TASK_KIND_TRAIN:
                self._train(stub, task, ctx, timeout, md)
            elif task.kind == pb.TASK_KIND_INIT:
                self._init(stub, task, ctx, timeout, md)
            elif task.kind == pb.TASK_KIND_VALIDATE:
                self._validate(stub, task, ctx, timeout, md)
            else:
                log.warning("unknown task kind", kind=task.kind)
        finally:
            self._current_task = ""
            self.tasks_done += 1
            log.info(
                "task done",
                kind=pb.TaskKind.Name(task.kind),
                seconds=round(time.monotonic() - t0, 3),
            )

    def _train(
        self,
        stub: pb_grpc.CombinerStub,
        task: pb.Task,
        ctx: TaskContext,
        timeout: float,
        md: tuple[tuple[str, str]],
    ) -> None:
        def train(upd: pb.Update, out: Path) -> None:
            with self._private_model(task) as in_path:
                upd.num_examples, metrics = self.runner.train(
                    in_path, out, ctx, _time_left(task, timeout)
                )
            upd.metrics.update(metrics)

        ack, upd = self._upload_and_report(stub, task, md, "update.safetensors", "training", train)
        if ack.accepted:
            self.log.info("update accepted", round=task.round, num_examples=upd.num_examples)
        else:
            self.log.warning(
                "update not accepted", round=task.round, reason=ack.reason, detail=ack.message
            )

    def _init(
        self,
        stub: pb_grpc.CombinerStub,
        task: pb.Task,
        ctx: TaskContext,
        timeout: float,
        md: tuple[tuple[str, str]],
    ) -> None:
        def init(upd: pb.Update, out: Path) -> None:
            upd.num_examples = 1
            self.runner.init(out, ctx, timeout)

        ack, _ = self._upload_and_report(stub, task, md, "seed.safetensors", "init", init)
        self.log.info("seed model reported", accepted=ack.accepted, reason=ack.reason)

    def _upload_and_report(
        self,
        stub: pb_grpc.CombinerStub,
        task: pb.Task,
        md: tuple[tuple[str, str]],
        filename: str,
        what: str,
        produce: Callable[[pb.Update, Path], None],
    ) -> tuple[pb.Ack, pb.Update]:
        """Let `produce` write a model file (and fill the report), upload it to the
        task's location and report it; a failure is reported as the client's error."""
        upd = pb.Update(
            task_id=task.task_id,
            client_id=self.cfg.client_id,
            job=task.job,
            round=task.round,
            attempt=task.attempt,
        )
        out = self.cfg.workdir / filename
        try:
            produce(upd, out)
            upd.size = out.stat().st_size
            upd.digest = file_digest(out)
            self.transport.upload(out, task.upload)
        except Exception as exc:
            self.log.error(f"{what} failed", round=task.round, error=str(exc), exc_info=True)
            upd.error = _error_text(exc)
        finally:
            out.unlink(missing_ok=True)
        return stub.ReportUpdate(upd, metadata=md, timeout=120), upd

    def _validate(
        self,
        stub: pb_grpc.CombinerStub,
        task: pb.Task,
        ctx: TaskContext,
        timeout: float,
        md: tuple[tuple[str, str]],
    ) -> None:
        rep = pb.Validation(
            task_id=task.task_id,
            client_id=self.cfg.client_id,
            job=task.job,
            round=task.round,
            attempt=task.attempt,
        )
        try:
            with self._private_model(task) as in_path:
                num, metrics = self.runner.validate(in_path, ctx, _time_left(task, timeout))
            rep.num_examples = num
            rep.metrics.update(metrics)
        except Exception as exc:
            self.log.error("validation failed", round=task.round, error=str(exc), exc_info=True)
            rep.error = _error_text(exc)
        stub.ReportValidation(rep, metadata=md, timeout=60)

    @contextlib.contextmanager
    def _private_model(self, task: pb.Task) -> Iterator[Path]:
        """The task's global model as a private, read-only copy in the workdir (what
        the user's code gets, never the committed object), removed afterwards."""
        dest = self.cfg.workdir / "global.safetensors"
        path = self.transport.download(task.model, dest)
        if path != dest:  # a transport that handed out the object itself
            path = private_copy(path, dest)
        try:
            yield path
        finally:
            dest.unlink(missing_ok=True)


def _time_left(task: pb.Task, fallback: float) -> float:
    """The time limit for the user's code now (after the download), or `fallback`."""
    return task_timeout(task.deadline_unix_ms) if task.deadline_unix_ms else fallback


def _error_text(exc: BaseException) -> str:
    """The exception as the client reports it (type and message, bounded)."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[:4000]
