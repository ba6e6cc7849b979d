"""The combiner: serves its clients (Combiner) and the reducer (CombinerControl).

asyncio + grpc.aio, so thousands of idle client streams cost little. CPU work
(checking and aggregating update files) runs in one worker thread, which also
serialises access to the running sum. State-store writes run in other threads:
records (clients, updates) in one, events in another, so a flood of events
never queues ahead of an update's record; credentials reload in a third.

Every settled task is counted (`CombinerTelemetry`) and, for train and init
tasks, recorded as the client's UpdateRecord: accepted, rejected (a Reason of
the report or the file) or failed (the client's error, lost, deadline, the
combiner's own error), with the seconds from the task's push to the report
and, for a refusal, what was wrong.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from fedkube.aggregate import make_aggregator
from fedkube.aggregate.base import Aggregator
from fedkube.combiner.auth import ClientAuth, RefusalLog, peer_host
from fedkube.combiner.telemetry import CombinerTelemetry
from fedkube.combiner.verify import check_report, read_update
from fedkube.digest import UPDATE_ALGORITHM, format_digest
from fedkube.errors import FedkubeError, UpdateRejected
from fedkube.identity import Credential, Credentials
from fedkube.ingest import ChunkBuffer
from fedkube.logs import Logger, get_logger
from fedkube.model import ModelHeader, save_model
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.proto.v1 import fedkube_pb2_grpc as pb_grpc
from fedkube.rpc import token_ok
from fedkube.selection import derive_seed, select_steady, weighted_metrics
from fedkube.spec import FederatedJob
from fedkube.state import ClientRecord, EventRecord, StateStore, UpdateRecord
from fedkube.state.base import MAX_UPDATE_MESSAGE
from fedkube.store import ObjectStore, partial_key, update_key
from fedkube.vocabulary import (
    SETTLED,
    AssignmentStatus,
    ClientStatus,
    EventKind,
    MetadataKey,
    Reason,
)

T = TypeVar("T")


#: a freed slot is given to another idle client only while at least this share
#: of the attempt's time is left (a task started later would rarely finish)
REFILL_MIN_TIME_SHARE = 0.2


@dataclass
class ConnectedClient:
    client_id: str
    queue: asyncio.Queue[pb.Task | None]
    session: str
    index: int = -1
    num: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    busy: str | None = None  # task id
    digest: str = ""  # the credential its stream was opened with
    closed_because: str = ""  # set when the combiner ends the stream as a refusal
    connected_at: float = field(default_factory=time.monotonic)


@dataclass
class Assignment:
    task_id: str
    client_id: str
    status: AssignmentStatus = AssignmentStatus.PENDING
    reason: Reason | None = None
    num_examples: int = 0  # claimed
    weight: float = 0.0  # counted (after spec.weights)
    metrics: dict[str, float] = field(default_factory=dict)
    pushed_at: float | None = None  # time.monotonic() the task went on the client's stream
    reported_at: float | None = None  # time.monotonic() the client's report came in
    message: str = ""  # what went wrong, for a rejected or failed task

    @property
    def train_s(self) -> float:
        """Seconds from the push to the report (0.0 without either)."""
        if self.pushed_at is None or self.reported_at is None:
            return 0.0
        return max(0.0, self.reported_at - self.pushed_at)


class RoundRun:
    """One round attempt (train or validate) on this combiner."""

    def __init__(
        self,
        plan: pb.RoundPlan,
        deadline: float,
        on_settle: Callable[[Assignment], None] | None = None,
    ) -> None:
        self.plan = plan
        self.on_settle = on_settle
        self.deadline = deadline  # time.monotonic() based
        self.assignments: dict[str, Assignment] = {}
        self.by_client: dict[str, str] = {}
        self.changed = asyncio.Event()
        self.cancelled = False
        self.aggregator: Aggregator | None = None
        self.template: ModelHeader | None = None
        self.workdir: Path | None = None
        self.started = time.monotonic()  # the RunRound came in
        self.agg_seconds = 0.0
        self.weight_capped = 0
        # assignments by status, kept as they change: counting them by a scan on
        # every report made a round with thousands of clients quadratic
        self._counts: collections.Counter[str] = collections.Counter()
        # the combiner's idle epoch when a look for idle clients this attempt has
        # not tried found none (see CombinerService._idle_epoch)
        self.none_idle_at: int | None = None

    def add(self, a: Assignment) -> None:
        """Select a client: its task is the assignment `a`."""
        self.assignments[a.task_id] = a
        self.by_client[a.client_id] = a.task_id
        self._counts[a.status] += 1

    def set_status(self, a: Assignment, status: AssignmentStatus) -> None:
        self._counts[a.status] -= 1
        a.status = status
        self._counts[status] += 1

    def open_slots(self) -> int:
        """Selections the quota still allows: failed tasks free their slot."""
        used = len(self.assignments) - self._counts[AssignmentStatus.FAILED]
        return max(0, self.plan.quota - used)

    def may_refill(self, now: float) -> bool:
        """Enough of the attempt's time is left to start another client's task."""
        total = max(self.deadline - self.started, 1e-9)
        return (self.deadline - now) / total >= REFILL_MIN_TIME_SHARE

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.plan.round, self.plan.attempt, self.plan.kind)

    def count(self, status: str) -> int:
        return self._counts[status]

    @property
    def finished(self) -> bool:
        return sum(self._counts[s] for s in SETTLED) == len(self.assignments)

    def progress(self) -> pb.Progress:
        return pb.Progress(
            selected=len(self.assignments),
            received=self.count(AssignmentStatus.ACCEPTED),
            rejected=self.count(AssignmentStatus.REJECTED),
            failed=self.count(AssignmentStatus.FAILED),
        )

    def settle(
        self,
        a: Assignment,
        status: AssignmentStatus,
        reason: Reason | None = None,
        message: str = "",
    ) -> None:
        if a.status in SETTLED:  # the first settlement stands (the deadline passed while
            return  # the update was checked): counted and recorded once
        self.set_status(a, status)
        a.reason, a.message = reason, message[:MAX_UPDATE_MESSAGE]
        self.changed.set()
        if self.on_settle is not None:
            self.on_settle(a)


class CombinerService(pb_grpc.CombinerServicer, pb_grpc.CombinerControlServicer):
    """Both gRPC services of one combiner: its clients' (``Combiner``) and the reducer's
    (``CombinerControl``).

    It keeps the connected clients and their task streams; on ``RunRound`` it
    picks its quota among the idle ones, pushes each a task, checks every report
    and update against the running attempt (`RoundRun`), folds accepted updates
    into one running aggregate, and returns its `Partial` at quota or deadline.
    Every refusal carries a `fedkube.vocabulary.Reason`; nothing a client sends
    changes the aggregate unless every check passed.
    """

    def __init__(
        self,
        *,
        name: str,
        job: FederatedJob,
        store: ObjectStore,
        state: StateStore,
        reducer_token: str,
        workdir: Path,
        telemetry: CombinerTelemetry | None = None,
    ) -> None:
        self.name = name
        self.job = job
        self.telemetry = telemetry or CombinerTelemetry(job.key, name)
        # Every store call is timed and its errors counted (fedkube_*_store_*).
        self.store = self.telemetry.stores.objects(store)
        self.state = self.telemetry.stores.state(state)
        self.reducer_token = reducer_token
        self.workdir = workdir
        self.clients: dict[str, ConnectedClient] = {}
        self.run: RoundRun | None = None
        # Counts the events that can give an attempt a client it has not tried: a
        # client connects, or one the current attempt never selected goes idle.
        # While it stands still, a refill that found no such client finds none again
        # without a scan of every client (one per report made a round of thousands of
        # clients whose slots were freed by failures quadratic).
        self._idle_epoch = 0
        self._cpu = ThreadPoolExecutor(1, thread_name_prefix="aggregate")
        self._chunk = ChunkBuffer()  # the aggregate thread's read buffer (one: one thread)
        self._io = ThreadPoolExecutor(1, thread_name_prefix="state")
        self._events = ThreadPoolExecutor(1, thread_name_prefix="events")
        self._creds_io = ThreadPoolExecutor(1, thread_name_prefix="credentials")
        self.log = get_logger("combiner", job=job.key, combiner=name)
        self.heartbeat_seconds = job.spec.clients.heartbeat_seconds
        self.auth = ClientAuth(self._load_credentials)
        self.refusals = RefusalLog()
        self._housekeeper: asyncio.Task[None] | None = None
        self.telemetry.watch_clients(
            lambda: len(self.clients),
            lambda: sum(1 for c in list(self.clients.values()) if c.busy),
        )

    # ------------------------------------------------------------ helpers

    async def _cpu_call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._cpu, fn, *args)

    async def _io_call(self, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)
        except Exception as exc:  # state writes are best effort for the combiner
            self.log.warning("state store write failed", error=str(exc))
            return None

    def _event(self, kind: EventKind, message: str, level: str = "info", **kw: Any) -> None:
        ev = EventRecord(
            job=self.job.key, kind=kind, message=message, level=level, combiner=self.name, **kw
        )
        asyncio.get_running_loop().run_in_executor(self._events, self._add_event_safe, ev)

    def _add_event_safe(self, ev: EventRecord) -> None:
        try:
            self.state.add_event(ev)
        except Exception as exc:
            self.log.warning("state store write failed", error=str(exc))

    # ------------------------------------------------------------ who is calling

    async def start(self) -> None:
        """Load the job's client credentials; then reload them, drop the streams of
        revoked clients and flush the merged refusal counts, every few seconds."""
        await self.auth.refresh()
        self.log.info("client credentials loaded", credentials=len(self.auth.credentials))
        self._housekeeper = asyncio.ensure_future(self._housekeeping())

    async def _load_credentials(self) -> Credentials | None:
        loop = asyncio.get_running_loop()
        try:
            records = await loop.run_in_executor(
                self._creds_io, self.state.list_credentials, self.job.key
            )
        except Exception as exc:  # keep the last snapshot
            self.log.warning("cannot load client credentials", error=str(exc))
            return None
        return Credentials.from_records(records)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.auth.refresh_seconds)
            with contextlib.suppress(Exception):
                await self.auth.refresh()
                self._drop_revoked()
                self._flush_refusals()

    def _drop_revoked(self) -> None:
        for c in list(self.clients.values()):
            if c.digest and not self.auth.credentials.is_live(c.digest):
                self.log.warning(
                    "client credential revoked; closing its stream", client=c.client_id
                )
                self._event(
                    EventKind.CREDENTIAL_REVOKED,
                    f"the credential of client {c.client_id} was revoked; its stream was closed",
                    "warning",
                    client=c.client_id,
                )
                del self.clients[c.client_id]
                self._drop(c, "lost its credential")
                c.closed_because = "the client's credential was revoked"
                c.queue.put_nowait(None)

    def _refused(self, context: grpc.aio.ServicerContext, kind: EventKind, message: str) -> None:
        """Count a refused call; log and record it, merged per peer and kind (`RefusalLog`)."""
        self.telemetry.refused(kind)
        peer = peer_host(context.peer() or "")
        if self.refusals.note(peer, kind, message):
            self.log.warning("refused call", kind=kind, peer=peer, detail=message)
            self._event(kind, f"{message} (from {peer})", "warning")

    def _flush_refusals(self) -> None:
        for peer, kind, count, sample in self.refusals.due():
            self.log.warning("refused calls", kind=kind, peer=peer, count=count, detail=sample)
            self._event(
                EventKind(kind),
                f"{count} more calls from {peer} refused like this: {sample}",
                "warning",
            )

    async def _auth(self, context: grpc.aio.ServicerContext, token: str, who: str) -> None:
        ok, why = token_ok(context.invocation_metadata(), token)
        if not ok:
            self._refused(context, EventKind.AUTH_FAILED, f"{who} call rejected: {why}")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{who} token: {why}")

    async def _client(self, context: grpc.aio.ServicerContext, claimed: str) -> Credential:
        """The credential of a client's call; aborts the call when there is none or
        when it was issued to another client than `claimed` (empty: any)."""
        cred, why = await self.auth.identify(context.invocation_metadata())
        if cred is None:
            self._refused(context, EventKind.AUTH_FAILED, f"client call rejected: {why}")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"client token: {why}")
            raise AssertionError("unreachable")  # abort raises
        if claimed and claimed != cred.client:
            self._refused(
                context,
                EventKind.IMPERSONATION,
                f"a call as client {claimed!r} used the credential {cred.token_id} "
                f"of client {cred.client!r}",
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this token was issued to client {cred.client!r}, not {claimed!r}",
            )
        return cred

    def shutdown(self) -> None:
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        for c in self.clients.values():
            c.queue.put_nowait(None)
        self._cpu.shutdown(wait=False, cancel_futures=True)
        self._chunk.close(wait=False)
        self._io.shutdown(wait=True)
        self._events.shutdown(wait=True)
        self._creds_io.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ client-facing

    async def Connect(
        self, request: pb.Hello, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Task]:
        cred = await self._client(context, request.client_id.strip())
        cid = cred.client
        if request.job and request.job != self.job.key:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this combiner serves job {self.job.key!r}, not {request.job!r}",
            )
        await self._one_stream(context, cid)
        me = ConnectedClient(
            cid,
            asyncio.Queue(),
            uuid.uuid4().hex,
            request.client_index,
            request.num_clients,
            digest=cred.digest,
        )
        self.clients[cid] = me
        self._idle_epoch += 1
        # Tell the client how often to heartbeat (we forget it after 3 missed beats).
        await context.send_initial_metadata(
            ((MetadataKey.HEARTBEAT_SECONDS.value, str(self.heartbeat_seconds)),)
        )
        self.log.info("client connected", client=cid, connected=len(self.clients))
        await self._io_call(
            self.state.upsert_client,
            ClientRecord(self.job.key, cid, self.name, ClientStatus.CONNECTED, time.time()),
        )
        try:
            while True:
                task = await me.queue.get()
                if task is None:
                    if me.closed_because:
                        await context.abort(grpc.StatusCode.UNAUTHENTICATED, me.closed_because)
                    return
                yield task
        finally:
            if self.clients.get(cid) is me:
                del self.clients[cid]
                self._drop(me, "disconnected")
                self.log.info("client disconnected", client=cid, connected=len(self.clients))
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().run_in_executor(
                        self._io,
                        self.state.upsert_client,
                        ClientRecord(
                            self.job.key, cid, self.name, ClientStatus.DISCONNECTED, time.time()
                        ),
                    )

    async def _one_stream(self, context: grpc.aio.ServicerContext, cid: str) -> None:
        """One task stream per client: a second one is refused (ALREADY_EXISTS; the
        client retries) while the first is alive; a first one that stopped
        heartbeating (a half-open connection) is replaced."""
        old = self.clients.get(cid)
        if old is None:
            return
        if time.monotonic() - old.last_seen < 2 * self.heartbeat_seconds:
            self._refused(
                context,
                EventKind.DUPLICATE_STREAM,
                f"a second task stream for connected client {cid!r} was refused",
            )
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"client {cid!r} is already connected"
            )
        del self.clients[cid]
        self._drop(old, "reconnected")
        old.queue.put_nowait(None)

    def _drop(self, client: ConnectedClient, why: str) -> None:
        """A client went away: its pending task in the current round fails now."""
        run = self.run
        if run is None or client.busy is None:
            return
        a = run.assignments.get(client.busy)
        if a is not None and a.status == AssignmentStatus.PENDING:
            run.settle(a, AssignmentStatus.FAILED, Reason.CLIENT_LOST, f"the client {why}")
            self._record_later(run, a)
            self._event(
                EventKind.CLIENT_LOST,
                f"client {client.client_id} {why} during round {run.plan.round}",
                "warning",
                round=run.plan.round,
                attempt=run.plan.attempt,
                client=client.client_id,
            )
        client.busy = None

    async def Heartbeat(self, request: pb.Ping, context: grpc.aio.ServicerContext) -> pb.Ack:
        await self._client(context, request.client_id)
        c = self.clients.get(request.client_id)
        if c is None:
            return pb.Ack(accepted=False, reason=Reason.NOT_CONNECTED, message="connect first")
        c.last_seen = time.monotonic()
        return pb.Ack(accepted=True)

    def _expected(
        self, task_id: str, client_id: str, round_: int, attempt: int, kind: int
    ) -> tuple[RoundRun, Assignment]:
        run = self.run
        if run is None or run.cancelled:
            raise UpdateRejected(
                Reason.PAST_ROUND
                if run is None or round_ <= run.plan.round
                else Reason.UNKNOWN_TASK,
                "no round is running on this combiner",
            )
        a = run.assignments.get(task_id)
        if a is None:
            if (round_, attempt) < (run.plan.round, run.plan.attempt):
                raise UpdateRejected(
                    Reason.PAST_ROUND,
                    f"report for round {round_} attempt {attempt}; round "
                    f"{run.plan.round} attempt {run.plan.attempt} is running",
                )
            raise UpdateRejected(
                Reason.UNKNOWN_TASK, f"task {task_id!r} is not a task of this round"
            )
        if run.plan.kind != kind:
            raise UpdateRejected(
                Reason.UNKNOWN_TASK, f"task {task_id!r} is not a task of this kind"
            )
        if a.client_id != client_id:
            raise UpdateRejected(
                Reason.UNKNOWN_TASK,
                f"task {task_id!r} was given to another client, not {client_id!r}",
            )
        if (round_, attempt) != (run.plan.round, run.plan.attempt):
            raise UpdateRejected(Reason.UNKNOWN_TASK, "round/attempt do not match the task")
        if a.status != AssignmentStatus.PENDING:
            raise UpdateRejected(
                Reason.DUPLICATE, f"task {task_id!r} was already reported ({a.status})"
            )
        return run, a

    async def ReportUpdate(self, request: pb.Update, context: grpc.aio.ServicerContext) -> pb.Ack:
        await self._client(context, request.client_id)
        log = self.log.bind(round=request.round, attempt=request.attempt, client=request.client_id)
        init = self.run is not None and self.run.plan.kind == pb.TASK_KIND_INIT
        kind = pb.TASK_KIND_INIT if init else pb.TASK_KIND_TRAIN
        try:
            run, a = self._expected(
                request.task_id, request.client_id, request.round, request.attempt, kind
            )
        except UpdateRejected as rej:  # not a task of this round: counted nowhere else
            self.telemetry.ignored(rej.reason)
            log.warning("update ignored", reason=rej.reason, detail=str(rej))
            self._report_event(
                EventKind.UPDATE_IGNORED,
                request,
                f"update from {request.client_id} for round {request.round} ignored: {rej}",
            )
            return pb.Ack(accepted=False, reason=rej.reason, message=str(rej))
        a.reported_at = time.monotonic()
        self._release(a.client_id, a.task_id)
        if request.error:
            return await self._client_failed(run, a, request, log)
        run.set_status(a, AssignmentStatus.CHECKING)  # a second report is now a duplicate
        try:
            check_report(request.num_examples, dict(request.metrics))
            a.weight = self._weight(run, request)
            if init:
                digest = await self._cpu_call(self._check_seed, run, request)
            else:
                digest = await self._cpu_call(self._aggregate, run, request, a.weight)
        except UpdateRejected as rej:
            return await self._rejected(run, a, request, rej, log)
        except Exception as exc:  # storage failure etc.: the client is not at fault
            run.settle(a, AssignmentStatus.FAILED, Reason.COMBINER_ERROR, str(exc))
            log.error("update could not be processed", error=str(exc), exc_info=True)
            await self._record(run, a)
            self._report_event(
                EventKind.UPDATE_FAILED,
                request,
                f"update from {request.client_id} could not be processed: {exc}",
                "error",
            )
            return pb.Ack(accepted=False, reason=Reason.COMBINER_ERROR, message=str(exc))
        if run.cancelled:
            return pb.Ack(
                accepted=False, reason=Reason.PAST_ROUND, message="the round was cancelled"
            )
        if a.status != AssignmentStatus.CHECKING:  # settled meanwhile (the deadline passed)
            return pb.Ack(accepted=False, reason=Reason.DEADLINE, message=a.message)
        a.num_examples = request.num_examples
        a.metrics = dict(request.metrics)
        run.settle(a, AssignmentStatus.ACCEPTED)
        if not init:
            self.telemetry.client_train_seconds.observe(a.train_s)
        log.info(
            "update accepted",
            num_examples=request.num_examples,
            weight=a.weight,
            received=run.count(AssignmentStatus.ACCEPTED),
            selected=len(run.assignments),
        )
        await self._record(run, a, digest)
        return pb.Ack(accepted=True)

    def _weight(self, run: RoundRun, request: pb.Update | pb.Validation) -> float:
        """What an update counts for: its claimed num_examples, clipped to the plan's
        weight cap (spec.weights), with an event when the cap bites."""
        claimed = float(request.num_examples)
        cap = run.plan.weight_cap
        if cap <= 0 or claimed <= cap:
            return claimed
        run.weight_capped += 1
        self._report_event(
            EventKind.WEIGHT_CAPPED,
            request,
            f"client {request.client_id} claimed {request.num_examples} examples for round "
            f"{request.round}; counted as {cap:g} (spec.weights)",
        )
        return cap

    async def _client_failed(
        self, run: RoundRun, a: Assignment, request: pb.Update, log: Logger
    ) -> pb.Ack:
        """The client reports that its own code failed: no update, nobody proved wrong."""
        run.settle(a, AssignmentStatus.FAILED, Reason.CLIENT_ERROR, request.error)
        log.warning("client training failed", error=request.error[:2000])
        self._report_event(
            EventKind.TRAIN_FAILED,
            request,
            f"client {request.client_id} failed round {request.round}: {request.error[:500]}",
        )
        await self._record(run, a)
        return pb.Ack(accepted=False, reason=Reason.CLIENT_ERROR, message="failure recorded")

    async def _rejected(
        self, run: RoundRun, a: Assignment, request: pb.Update, rej: UpdateRejected, log: Logger
    ) -> pb.Ack:
        run.settle(a, AssignmentStatus.REJECTED, rej.reason, str(rej))
        log.warning("update rejected", reason=rej.reason, detail=str(rej))
        self._report_event(
            EventKind.UPDATE_REJECTED,
            request,
            f"update from client {request.client_id} for round "
            f"{request.round} rejected ({rej.reason}): {rej}",
        )
        await self._record(run, a)
        return pb.Ack(accepted=False, reason=rej.reason, message=str(rej))

    def _report_event(
        self,
        kind: EventKind,
        request: pb.Update | pb.Validation,
        message: str,
        level: str = "warning",
    ) -> None:
        """An event about a client's report, naming its round, attempt and client."""
        self._event(
            kind,
            message,
            level,
            round=request.round,
            attempt=request.attempt,
            client=request.client_id,
        )

    def _update_record(self, run: RoundRun, a: Assignment, digest: str = "") -> UpdateRecord | None:
        """The settled train or init task as the client's UpdateRecord (None for a
        validate task: validation reports are no updates)."""
        if run.plan.kind == pb.TASK_KIND_VALIDATE:
            return None
        return UpdateRecord(
            job=self.job.key,
            round=run.plan.round,
            attempt=run.plan.attempt,
            client=a.client_id,
            combiner=self.name,
            status=a.status,
            num_examples=a.num_examples,
            weight=a.weight if a.status == AssignmentStatus.ACCEPTED else 0.0,
            reason=a.reason or "",
            digest=digest,
            at=time.time(),
            train_s=a.train_s,
            message=a.message,
        )

    async def _record(self, run: RoundRun, a: Assignment, digest: str = "") -> None:
        """Write the settled assignment's UpdateRecord (status, reason, message, and the
        digest of an accepted file)."""
        rec = self._update_record(run, a, digest)
        if rec is not None:
            await self._io_call(self.state.record_update, rec)

    def _record_later(self, run: RoundRun, a: Assignment) -> None:
        """`_record` from code that cannot wait (a client lost, the deadline)."""
        rec = self._update_record(run, a)
        if rec is None:
            return
        with contextlib.suppress(RuntimeError):  # shutting down: the executor is closed
            asyncio.get_running_loop().run_in_executor(self._io, self._record_safe, rec)

    def _record_safe(self, rec: UpdateRecord) -> None:
        try:
            self.state.record_update(rec)
        except Exception as exc:
            self.log.warning("state store write failed", error=str(exc))

    def _release(self, client_id: str, task_id: str) -> None:
        c = self.clients.get(client_id)
        if c is not None and c.busy == task_id:
            c.busy = None
            if self.run is None or client_id not in self.run.by_client:
                self._idle_epoch += 1

    def _check_seed(self, run: RoundRun, req: pb.Update) -> str:
        """Check a seed model a client created for an init task, in one read (worker
        thread); return its digest."""
        key = run.plan.model_key
        try:
            return read_update(
                self.store,
                key,
                None,
                max_bytes=run.plan.max_bytes,
                digest=req.digest or None,
                buffer=self._chunk,
            ).digest
        except UpdateRejected:
            self.store.delete(key)  # never leave a bad seed where the reducer looks
            raise

    def _aggregate(self, run: RoundRun, req: pb.Update, weight: float) -> str:
        """Read, check and fold one update into the running sum in one pass (worker
        thread); return its digest. A rejected update leaves the sum as it was."""
        aggregator, template = run.aggregator, run.template
        if run.cancelled or aggregator is None or template is None:
            raise UpdateRejected(Reason.PAST_ROUND, "the round was cancelled")
        key = update_key(self.job.key, run.plan.round, run.plan.attempt, req.client_id)
        t0 = time.perf_counter()
        try:
            got = read_update(
                self.store,
                key,
                template,
                max_bytes=run.plan.max_bytes,
                digest=req.digest or None,
                begin=lambda header: aggregator.begin(header, weight),
                buffer=self._chunk,
            )
            self.telemetry.aggregate_bytes.inc(got.size)
            self.store.delete(key)  # accepted updates are folded in and dropped
            return got.digest
        finally:
            seconds = time.perf_counter() - t0
            run.agg_seconds += seconds
            self.telemetry.aggregate_seconds.observe(seconds)

    async def ReportValidation(
        self, request: pb.Validation, context: grpc.aio.ServicerContext
    ) -> pb.Ack:
        await self._client(context, request.client_id)
        try:
            run, a = self._expected(
                request.task_id,
                request.client_id,
                request.round,
                request.attempt,
                pb.TASK_KIND_VALIDATE,
            )
        except UpdateRejected as rej:
            self.telemetry.ignored(rej.reason)
            return pb.Ack(accepted=False, reason=rej.reason, message=str(rej))
        a.reported_at = time.monotonic()
        self._release(a.client_id, a.task_id)
        if request.error:
            run.settle(a, AssignmentStatus.FAILED, Reason.CLIENT_ERROR, request.error)
            self._event(
                EventKind.VALIDATION_FAILED,
                f"client {request.client_id} failed validation of "
                f"round {request.round}: {request.error[:500]}",
                "warning",
                round=request.round,
                client=request.client_id,
            )
            return pb.Ack(accepted=False, reason=Reason.CLIENT_ERROR)
        try:
            check_report(request.num_examples, dict(request.metrics))
        except UpdateRejected as rej:
            run.settle(a, AssignmentStatus.REJECTED, rej.reason, str(rej))
            return pb.Ack(accepted=False, reason=rej.reason, message=str(rej))
        a.num_examples = request.num_examples
        a.weight = self._weight(run, request)
        a.metrics = dict(request.metrics)
        run.settle(a, AssignmentStatus.ACCEPTED)
        return pb.Ack(accepted=True)

    # ------------------------------------------------------------ reducer-facing

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.CombinerStatus:
        await self._auth(context, self.reducer_token, "reducer")
        self._reap()
        run = self.run
        return pb.CombinerStatus(
            name=self.name,
            job=self.job.key,
            connected=len(self.clients),
            busy=sum(1 for c in self.clients.values() if c.busy),
            round=run.plan.round if run else 0,
            attempt=run.plan.attempt if run else 0,
        )

    def _reap(self) -> None:
        """Forget clients whose heartbeats stopped (their stream is dead)."""
        limit = time.monotonic() - 3 * self.heartbeat_seconds
        for c in list(self.clients.values()):
            if c.last_seen < limit:
                self.log.warning("client heartbeat lost", client=c.client_id)
                del self.clients[c.client_id]
                self._drop(c, "stopped heartbeating")
                c.queue.put_nowait(None)

    async def RunRound(
        self, plan: pb.RoundPlan, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RoundEvent]:
        await self._auth(context, self.reducer_token, "reducer")
        if plan.job != self.job.key:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this combiner serves job {self.job.key!r}, not {plan.job!r}",
            )
        run = self._start_run(plan)
        self.telemetry.served(plan.kind)
        log = self.log.bind(round=plan.round, attempt=plan.attempt)
        try:
            if plan.kind == pb.TASK_KIND_TRAIN:
                try:
                    await self._cpu_call(self._prepare_train, run)
                except FedkubeError as exc:
                    log.error("cannot prepare the round", error=str(exc))
                    await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot prepare round: {exc}")
            self._reap()
            await self._assign(run, since=run.started)
            log.info(
                "round started",
                kind=pb.TaskKind.Name(plan.kind),
                selected=len(run.assignments),
                connected=len(self.clients),
                quota=plan.quota,
            )
            async for progress in self._progress_until_settled(run):
                yield pb.RoundEvent(progress=progress)
            self._expire(run)
            partial = await self._finish(run)
            log.info(
                "round finished",
                n_updates=partial.n_updates,
                rejected=partial.rejected,
                failed=partial.failed,
            )
            yield pb.RoundEvent(partial=partial)
        finally:
            if self.run is run:
                self._cancel(run)
                self.run = None

    def _start_run(self, plan: pb.RoundPlan) -> RoundRun:
        """The new attempt supersedes a running one (a restarted reducer's retry)."""
        if self.run is not None and not self.run.cancelled:
            self.log.warning(
                "superseding the running round",
                old_round=self.run.plan.round,
                old_attempt=self.run.plan.attempt,
                round=plan.round,
                attempt=plan.attempt,
            )
            self._cancel(self.run)
        remaining = max(0.0, plan.deadline_unix_ms / 1000 - time.time())
        self.run = RoundRun(
            plan,
            time.monotonic() + remaining,
            on_settle=lambda a: self.telemetry.settled(plan.kind, a.status, a.reason),
        )
        return self.run

    async def _progress_until_settled(self, run: RoundRun) -> AsyncIterator[pb.Progress]:
        """Progress now, then at every change (at least each second) until every
        assignment is settled and no freed slot can be refilled, the deadline
        passes or the run is cancelled."""
        yield run.progress()
        while not run.cancelled:
            await self._refill(run)
            if run.finished:
                return
            left = run.deadline - time.monotonic()
            if left <= 0:
                return
            run.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.changed.wait(), timeout=min(left, 1.0))
            yield run.progress()

    def _expire(self, run: RoundRun) -> None:
        """Assignments still open at the deadline fail (Reason.DEADLINE)."""
        plan = run.plan
        for a in run.assignments.values():
            if a.status in (AssignmentStatus.PENDING, AssignmentStatus.CHECKING):
                run.settle(
                    a, AssignmentStatus.FAILED, Reason.DEADLINE, "no report before the deadline"
                )
                self._record_later(run, a)
                self._release(a.client_id, a.task_id)
                self._event(
                    EventKind.TASK_TIMED_OUT,
                    f"client {a.client_id} did not report round {plan.round} before the deadline",
                    "warning",
                    round=plan.round,
                    attempt=plan.attempt,
                    client=a.client_id,
                )

    def _cancel(self, run: RoundRun) -> None:
        run.cancelled = True
        run.changed.set()
        for a in run.assignments.values():
            self._release(a.client_id, a.task_id)
        agg, workdir = run.aggregator, run.workdir
        run.aggregator = None

        def cleanup() -> None:
            if agg is not None:
                agg.close()
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)

        self._cpu.submit(cleanup)

    def _prepare_train(self, run: RoundRun) -> None:
        """Read the global model's header (the template every update must match)."""
        run.workdir = Path(tempfile.mkdtemp(prefix=f"r{run.plan.round}-", dir=self.workdir))
        # ranged reads of the header only: the combiner never needs the model's values
        run.template, _ = self.store.read_header(run.plan.model_key)
        run.aggregator = make_aggregator(
            self.job.spec.aggregator, run.template, spill_dir=run.workdir / "spill"
        )

    async def _assign(self, run: RoundRun, since: float) -> int:
        """Give the attempt's open slots to idle clients it has not tried yet, the
        steadiest first (`select_steady`); build their tasks (store calls, off the
        event loop) and push them on the clients' streams (the fan-out latency is
        counted from `since`, a time.monotonic()). Returns how many."""
        plan = run.plan
        if not run.open_slots() or run.none_idle_at == self._idle_epoch:
            return 0
        now = time.monotonic()
        idle = {
            c.client_id: now - c.connected_at
            for c in self.clients.values()
            if c.busy is None and c.client_id not in run.by_client
        }
        if not idle:
            run.none_idle_at = self._idle_epoch
            return 0
        # A refill draws anew (the number already tried is part of its seed).
        tried = (len(run.by_client),) if run.by_client else ()
        seed = derive_seed(plan.seed, plan.round, plan.attempt, plan.kind, self.name, *tried)
        picked = select_steady(
            idle, run.open_slots(), seed, settle_seconds=2 * self.heartbeat_seconds
        )
        new: list[Assignment] = []
        for cid in picked:  # reserve them before yielding to the loop
            a = Assignment(uuid.uuid4().hex, cid)
            run.add(a)
            self.clients[cid].busy = a.task_id
            new.append(a)
        if not new:
            return 0
        tasks = await self._cpu_call(self._make_tasks, run, new)
        for task in tasks:
            a = run.assignments[task.task_id]
            c_now = self.clients.get(a.client_id)
            if c_now is not None and c_now.busy == task.task_id:
                c_now.queue.put_nowait(task)
                a.pushed_at = time.monotonic()
                self.telemetry.pushed(plan.kind, a.pushed_at - since)
            elif a.status == AssignmentStatus.PENDING:  # it went away meanwhile
                run.settle(
                    a,
                    AssignmentStatus.FAILED,
                    Reason.CLIENT_LOST,
                    "the client left before its task",
                )
                self._record_later(run, a)
        return len(new)

    async def _refill(self, run: RoundRun) -> None:
        """A selected client that left or failed frees its slot: give it to another
        idle client while the deadline allows."""
        now = time.monotonic()
        if run.cancelled or not run.open_slots() or not run.may_refill(now):
            return
        n = await self._assign(run, since=now)
        if n:
            self.log.info(
                "freed slots reassigned",
                round=run.plan.round,
                attempt=run.plan.attempt,
                assigned=n,
                selected=len(run.assignments),
            )

    def _make_tasks(self, run: RoundRun, assignments: list[Assignment]) -> list[pb.Task]:
        plan = run.plan
        # Presigned URLs live as long as the attempt (plus a margin), no longer.
        ttl = int(max(60.0, plan.deadline_unix_ms / 1000 - time.time() + 300))
        model = (
            pb.Transfer()
            if plan.kind == pb.TASK_KIND_INIT
            else self._transfer(plan.model_key, put=False, ttl=ttl)
        )
        stale: set[str] = set()
        if plan.kind == pb.TASK_KIND_TRAIN:
            # files a crashed run of this attempt left must not count: one listing of
            # the attempt's updates, not a delete request per client
            prefix = update_key(plan.job, plan.round, plan.attempt, "x").rsplit("/", 1)[0] + "/"
            stale = set(self.store.list(prefix))
        tasks = []
        for a in assignments:
            task = pb.Task(
                task_id=a.task_id,
                kind=plan.kind,
                job=plan.job,
                round=plan.round,
                attempt=plan.attempt,
                config_json=plan.config_json,
                deadline_unix_ms=plan.deadline_unix_ms,
                max_bytes=plan.max_bytes,
            )
            if plan.kind == pb.TASK_KIND_INIT:
                self.store.delete(plan.model_key)
                task.upload.CopyFrom(self._transfer(plan.model_key, put=True, ttl=ttl))
                tasks.append(task)
                continue
            task.model.CopyFrom(model)
            if plan.kind == pb.TASK_KIND_TRAIN:
                key = update_key(plan.job, plan.round, plan.attempt, a.client_id)
                if key in stale:
                    self.store.delete(key)
                task.upload.CopyFrom(self._transfer(key, put=True, ttl=ttl))
            tasks.append(task)
        return tasks

    def _transfer(self, key: str, *, put: bool, ttl: int) -> pb.Transfer:
        ref = self.store.presign_put(key, ttl) if put else self.store.presign_get(key, ttl)
        if self.store.local_path(key) is not None:
            return pb.Transfer(path=ref)
        return pb.Transfer(url=ref)

    async def _finish(self, run: RoundRun) -> pb.Partial:
        plan = run.plan
        accepted = [a for a in run.assignments.values() if a.status == AssignmentStatus.ACCEPTED]
        metrics = weighted_metrics([(a.metrics, a.weight) for a in accepted])
        partial = pb.Partial(
            n_updates=len(accepted),
            participants=sorted(a.client_id for a in accepted),
            selected=len(run.assignments),
            rejected=run.count(AssignmentStatus.REJECTED),
            failed=run.count(AssignmentStatus.FAILED),
            num_examples=sum(a.num_examples for a in accepted),
            metrics=metrics,
            weight_capped=run.weight_capped,
            claims=sorted(a.num_examples for a in accepted),
        )
        if plan.kind == pb.TASK_KIND_INIT and accepted:
            partial.key, partial.weight = plan.model_key, 1.0
        if plan.kind == pb.TASK_KIND_TRAIN and accepted:
            key = partial_key(plan.job, plan.round, plan.attempt, self.name)
            partial.weight, partial.digest = await self._cpu_call(self._write_partial, run, key)
            partial.key = key
        partial.timings["aggregate_s"] = run.agg_seconds
        partial.timings["round_s"] = time.monotonic() - run.started
        return partial

    def _write_partial(self, run: RoundRun, key: str) -> tuple[float, str]:
        """Store the attempt's aggregate; return its weight in the reducer's merge
        (fedavg: the (capped) examples behind it; a robust aggregator: the number of
        updates, counted here, so no claim can outweigh another combiner) and the
        digest of its file, which the reducer checks as it reads it."""
        assert run.aggregator is not None and run.workdir is not None
        tensors = run.aggregator.result(consume=True)  # no second model-sized array
        weight = (
            run.aggregator.total_weight
            if self.job.spec.aggregator.name == "fedavg"
            else float(run.aggregator.n_updates)
        )
        path = run.workdir / "partial.safetensors"
        meta = {"weight": repr(weight), "n_updates": str(run.aggregator.n_updates)}
        hexdigest = save_model(path, tensors, meta, algorithm=UPDATE_ALGORITHM)
        self.store.put_file(key, path)
        path.unlink(missing_ok=True)
        return weight, format_digest(UPDATE_ALGORITHM, hexdigest)
