"""Model 0, the seed every round starts from.

It comes from ``spec.model.seedUri`` (a file next to the job, a ``file://`` URI
or an object key), or one connected client makes it with the job's init
function or command (``spec.model.initFn`` / ``initCommand``) in an init task:
the reducer never runs user code, so its image needs none. Either way the file
is checked (size limit, safetensors header, finite values) before it is
recorded as model 0 of the lineage.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from fedkube.errors import FedkubeError, ModelFileError, RoundFailed
from fedkube.logs import Logger
from fedkube.model import MappedModel, check_finite, read_header, sha256_file
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.reducer.events import EventLog
from fedkube.reducer.plan import round_plan
from fedkube.reducer.pool import CombinerPool, CombinerResult
from fedkube.spec import FederatedJob
from fedkube.state import ModelRecord, StateStore
from fedkube.store import ObjectStore, model_key
from fedkube.vocabulary import EventKind

#: combiner events that say why a client's task gave no result
CLIENT_FAILURES = (
    EventKind.TRAIN_FAILED,
    EventKind.UPDATE_REJECTED,
    EventKind.UPDATE_FAILED,
    EventKind.CLIENT_LOST,
    EventKind.TASK_TIMED_OUT,
)
#: how long to wait for the combiner's event about a failed init task (it is
#: written asynchronously, possibly just after the combiner returned its result)
EVENT_WAIT_SECONDS = 3.0


class SeedMaker:
    """Makes sure model 0 exists, is valid and is recorded (idempotent)."""

    def __init__(
        self,
        job: FederatedJob,
        store: ObjectStore,
        state: StateStore,
        pool: CombinerPool,
        events: EventLog,
        log: Logger,
        *,
        job_dir: Path,
        workdir: Path,
    ) -> None:
        self.job, self.store, self.state, self.pool = job, store, state, pool
        self.events, self.log = events, log
        self.job_dir, self.workdir = job_dir, workdir

    def ensure(self) -> None:
        name = self.job.key
        if self.state.get_model(name, 0) is not None:
            return
        key = model_key(name, 0)
        tmp = self.workdir / "seed.safetensors"
        self._fetch(key, tmp)
        try:
            header = read_header(tmp, max_bytes=self.job.spec.model.max_bytes)
            with MappedModel(tmp) as mm:
                check_finite(mm)
        except ModelFileError as exc:
            self.store.delete(key)
            raise RoundFailed(f"seed model is invalid: {exc}") from None
        sha = sha256_file(tmp)
        size = tmp.stat().st_size
        if not self.store.exists(key):
            self.store.put_file(key, tmp)
        self.state.add_model(ModelRecord(name, 0, key, None, sha, size, time.time()))
        tmp.unlink()
        tensors = len(header.tensors)
        self.events(EventKind.SEED_STORED, f"seed model stored ({tensors} tensors, {size} bytes)")
        self.log.info("seed model stored", key=key, tensors=tensors, bytes=size)

    def _fetch(self, key: str, tmp: Path) -> None:
        """The seed's bytes into `tmp`, from wherever the spec says they come from."""
        m = self.job.spec.model
        if self.store.exists(key):
            self.store.get_file(key, tmp)  # made before a restart, not yet recorded
        elif m.seed_uri:
            src = m.seed_uri.removeprefix("file://")
            path = Path(src) if Path(src).is_absolute() else self.job_dir / src
            try:
                if path.exists():
                    shutil.copyfile(path, tmp)
                else:
                    self.store.get_file(src, tmp)
            except FedkubeError as exc:
                raise RoundFailed(f"spec.model.seedUri {m.seed_uri!r}: {exc}") from None
        elif m.init_fn or m.init_command:
            self._by_client(key)
            self.store.get_file(key, tmp)
        else:
            raise RoundFailed("no seed model: set spec.model.seedUri, initFn or initCommand")

    def _by_client(self, key: str) -> None:
        """Ask one connected client to create the seed model (an init task)."""
        spec = self.job.spec
        reason = ""
        for attempt in range(1, spec.retry.max_attempts + 1):
            reason = self._init_attempt(key, attempt)
            if not reason:
                return
            self.events(
                EventKind.SEED_FAILED, f"init attempt {attempt}: {reason}", "warning", round=0
            )
            self.log.warning("seed model not created", attempt=attempt, reason=reason)
        raise RoundFailed(
            f"the seed model could not be created by a client (spec.model.initFn/initCommand) "
            f"after {spec.retry.max_attempts} attempts: {reason}"
        )

    def _init_attempt(self, key: str, attempt: int) -> str:
        """One init task on the first combiner with a client; '' on success, else why not."""
        connected = self.pool.wait_for_clients(
            1, 1, timeout=self.job.spec.clients.wait_timeout_seconds
        )
        live = sorted(n for n, k in connected.items() if k > 0)
        if not live:
            return self._nobody_connected()
        seen = self._last_event_seq()
        plan = round_plan(
            self.job,
            round=0,
            attempt=attempt,
            kind=pb.TASK_KIND_INIT,
            model_key=key,
            timeout_seconds=self.job.spec.clients.round_timeout_seconds,
        )
        results = self.pool.run(plan, {live[0]: 1})
        if any(r.partial is not None and r.partial.n_updates == 1 for r in results):
            return ""
        return self._why_failed(results, seen)

    # ------------------------------------------------------------ why not

    def _nobody_connected(self) -> str:
        """No client is connected: say whether any ever was (and left)."""
        why = "no client connected to create the seed model"
        try:
            gone = [c.client for c in self.state.list_clients(self.job.key)]
        except FedkubeError:
            return why
        if not gone:
            return f"{why} (none has connected yet)"
        shown = ", ".join(gone[:5]) + (f" and {len(gone) - 5} more" if len(gone) > 5 else "")
        return f"{why} ({len(gone)} connected earlier and left: {shown})"

    def _last_event_seq(self) -> int:
        try:
            events = self.state.list_events(self.job.key)
        except FedkubeError:
            return 0
        return events[-1].seq if events else 0

    def _client_errors(self, since_seq: int) -> list[str]:
        """The combiners' events about clients whose init task gave no result."""
        deadline = time.monotonic() + EVENT_WAIT_SECONDS
        while True:
            try:
                found = [
                    e.message
                    for e in self.state.list_events(self.job.key, since_seq=since_seq)
                    if e.round == 0 and e.client and e.kind in CLIENT_FAILURES
                ]
            except FedkubeError:
                found = []
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def _why_failed(self, results: list[CombinerResult], since_seq: int) -> str:
        """'clients connected but failed' (with the client's own error), not 'no client'."""
        failed = sum(r.partial.failed + r.partial.rejected for r in results if r.partial)
        errors = self._client_errors(since_seq) if failed else []
        if len(errors) > 1:
            n = len(errors)
            return f"{n} clients connected but failed the init task, the last: {errors[-1]}"
        if errors:
            return f"a client connected but failed the init task: {errors[-1]}"
        if failed:
            return f"{failed} client(s) connected but failed the init task"
        return "; ".join(r.error for r in results if r.error) or "the client sent no seed model"
