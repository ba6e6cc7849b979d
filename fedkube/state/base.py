"""The StateStore interface and its records. Pure module (no I/O here).

The state store is the source of truth of a federation. Every write is
idempotent: keys derive from job / round / attempt / client, so a restarted
reducer or a repeated report never counts twice.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any

from fedkube.vocabulary import AttemptStatus, ClientStatus, Phase


def now() -> float:
    return time.time()


@dataclass
class JobRecord:
    name: str
    manifest: dict[str, Any]
    phase: str = Phase.PENDING
    message: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None
    current_round: int = 0
    completed_rounds: int = 0
    latest_model: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundRecord:
    job: str
    round: int
    attempt: int
    status: str = AttemptStatus.RUNNING
    started_at: float = 0.0
    completed_at: float | None = None
    reason: str = ""
    model_key: str | None = None
    n_updates: int = 0
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    validation_examples: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    participants: list[str] = field(default_factory=list)
    combiners: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class UpdateRecord:
    job: str
    round: int
    attempt: int
    client: str
    combiner: str
    status: str  # AssignmentStatus: accepted | rejected | failed
    num_examples: int = 0
    reason: str = ""
    sha256: str = ""
    at: float = 0.0


@dataclass
class EventRecord:
    job: str
    kind: str  # an EventKind: RoundStarted, RoundCompleted, UpdateRejected, ...
    message: str
    level: str = "info"  # info | warning | error
    round: int | None = None
    attempt: int | None = None
    client: str | None = None
    combiner: str | None = None
    at: float = 0.0
    seq: int = 0


@dataclass
class ClientRecord:
    job: str
    client: str
    combiner: str
    status: str = ClientStatus.CONNECTED
    last_seen: float = 0.0
    participations: int = 0


@dataclass
class ModelRecord:
    job: str
    round: int
    key: str
    parent: str | None
    sha256: str
    size: int
    created_at: float = 0.0


class StateStore(abc.ABC):
    """Jobs, round attempts, updates, events, clients and model lineage.

    Implementations: SqliteStateStore (embedded default) and MongoStateStore.
    All methods raise fedkube.errors.StateError on failure. Timestamps are Unix
    seconds (float).
    """

    #: a URI naming this store without credentials (for logs and status)
    uri: str

    # ---- jobs
    @abc.abstractmethod
    def create_job(self, name: str, manifest: dict[str, Any]) -> JobRecord:
        """Create the job if absent (phase Pending) and return it; if it exists,
        store the new manifest and return the existing record (idempotent)."""

    @abc.abstractmethod
    def get_job(self, name: str) -> JobRecord | None: ...

    @abc.abstractmethod
    def list_jobs(self) -> list[JobRecord]:
        """All jobs, sorted by name."""

    @abc.abstractmethod
    def update_job(self, name: str, **fields: Any) -> JobRecord:
        """Set the given JobRecord fields (phase, message, current_round, ...).

        Raises StateError for an unknown job or field."""

    # ---- rounds
    @abc.abstractmethod
    def begin_attempt(self, job: str, round: int, attempt: int) -> RoundRecord:
        """Record attempt `attempt` of `round` as running (idempotent)."""

    @abc.abstractmethod
    def set_progress(
        self, job: str, round: int, attempt: int, combiner: str, progress: dict[str, Any]
    ) -> None:
        """Replace the per-combiner progress of a running attempt (``combiners[combiner]``)."""

    @abc.abstractmethod
    def fail_attempt(self, job: str, round: int, attempt: int, reason: str) -> None:
        """Mark a running attempt failed (no-op if it is already completed or failed)."""

    @abc.abstractmethod
    def commit_round(
        self,
        job: str,
        round: int,
        attempt: int,
        *,
        model_key: str,
        n_updates: int,
        num_examples: int,
        metrics: dict[str, float],
        timings: dict[str, float],
        participants: list[str],
        combiners: dict[str, dict[str, Any]],
    ) -> bool:
        """Atomically mark the attempt completed, unless another attempt of the same
        round is already completed. Returns True if this call committed the round,
        False if the round was committed before (nothing is changed then)."""

    @abc.abstractmethod
    def set_validation(
        self, job: str, round: int, metrics: dict[str, float], num_examples: int
    ) -> None:
        """Attach validation metrics of the global model after `round` to the
        committed attempt of that round (idempotent; last write wins)."""

    @abc.abstractmethod
    def get_rounds(self, job: str) -> list[RoundRecord]:
        """Every attempt of every round, sorted by (round, attempt)."""

    def committed_rounds(self, job: str) -> list[RoundRecord]:
        return [r for r in self.get_rounds(job) if r.status == AttemptStatus.COMPLETED]

    def last_committed_round(self, job: str) -> int:
        """The highest committed round, 0 if none."""
        return max((r.round for r in self.committed_rounds(job)), default=0)

    # ---- updates
    @abc.abstractmethod
    def record_update(self, rec: UpdateRecord) -> bool:
        """Insert if no record has the same (job, round, attempt, client); return
        True if inserted, False if it was a duplicate (nothing changed)."""

    @abc.abstractmethod
    def list_updates(self, job: str, round: int | None = None) -> list[UpdateRecord]:
        """Sorted by (round, attempt, client)."""

    # ---- events
    @abc.abstractmethod
    def add_event(self, ev: EventRecord) -> None:
        """Append an event (seq and `at` are assigned when 0)."""

    @abc.abstractmethod
    def list_events(
        self, job: str, *, since_seq: int = 0, limit: int | None = None
    ) -> list[EventRecord]:
        """Events with seq > since_seq, oldest first."""

    # ---- clients
    @abc.abstractmethod
    def upsert_client(self, rec: ClientRecord) -> None:
        """Insert or replace by (job, client); `participations` is kept at the
        larger of the stored and the given value."""

    @abc.abstractmethod
    def list_clients(self, job: str) -> list[ClientRecord]: ...

    # ---- models
    @abc.abstractmethod
    def add_model(self, rec: ModelRecord) -> None:
        """Insert or replace by (job, round)."""

    @abc.abstractmethod
    def get_model(self, job: str, round: int | None = None) -> ModelRecord | None:
        """The model after `round`, or the latest one when round is None."""

    @abc.abstractmethod
    def list_models(self, job: str) -> list[ModelRecord]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
