"""The StateStore interface and its records. Pure module (no I/O here).

The state store is the source of truth of a federation. Every write is
idempotent: keys derive from job / round / attempt / client, so a restarted
reducer or a repeated report never counts twice.

What the backends share lives here too: SCHEMA_VERSION and the error for a
newer stored schema, the canonical JSON of free-form dicts (encode_json), the
default MongoDB database, and update_job / commit_round themselves, which
check and assemble the values and leave the write to the backend's _set_job /
_commit_round.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedkube.errors import StateError
from fedkube.identity import check_client_id, new_token, token_digest, token_id
from fedkube.vocabulary import AttemptStatus, ClientStatus, Phase

#: the version of the stored layout (tables, collections) this fedkube reads and writes.
#: 2 added client credentials, ``UpdateRecord.weight`` and ``JobRecord.reducer_seen_at``;
#: 3 added ``UpdateRecord.train_s`` and ``UpdateRecord.message`` (for the dashboard).
#: An older store is upgraded in place when opened.
SCHEMA_VERSION = 4
#: the MongoDB database of a store whose URI names none
DEFAULT_DATABASE = "fedkube"


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
    #: when the job's reducer last renewed its liveness (Unix seconds; None: never)
    reducer_seen_at: float | None = None


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
    num_examples: int = 0  # what the client claimed
    reason: str = ""
    #: "<algorithm>:<hex>" of an accepted file as the combiner read it (fedkube.digest)
    digest: str = ""
    at: float = 0.0
    weight: float = 0.0  # what the update counted for (num_examples after spec.weights)
    #: seconds from the task's push to the client's report (the combiner's clock): the
    #: client's download, training and upload
    train_s: float = 0.0
    #: what went wrong, for a rejected or failed update (at most MAX_UPDATE_MESSAGE chars)
    message: str = ""


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
class CredentialRecord:
    """A client's credential: the sha256 of its bearer token, never the token.

    Issued by ``fedkube clients issue`` (or `fedkube run` for its simulated
    clients); a combiner accepts a client's calls only with a token whose digest
    is recorded for that client and not revoked (`fedkube.identity`).
    """

    job: str
    client: str
    token_id: str  # the first characters of the digest: how `fedkube clients` names it
    digest: str  # sha256 hex of the token
    issued_at: float = 0.0
    revoked_at: float | None = None
    note: str = ""


@dataclass
class ModelRecord:
    job: str
    round: int
    key: str
    parent: str | None
    sha256: str
    size: int
    created_at: float = 0.0


#: the longest UpdateRecord.message a store keeps (longer ones are cut)
MAX_UPDATE_MESSAGE = 500


@dataclass
class JobOverview:
    """One row of the dashboard's Jobs page: the job and its clients, counted."""

    job: JobRecord
    clients: int  # clients ever seen (ClientRecord rows)
    connected: int  # of those, connected now (ClientStatus.CONNECTED)


@dataclass
class UpdateCount:
    """Update records of one attempt counted by combiner, status and reason."""

    round: int
    attempt: int
    combiner: str
    status: str  # AssignmentStatus: accepted | rejected | failed
    reason: str  # a Reason, "" for accepted updates
    count: int
    weight: float  # summed UpdateRecord.weight (what the accepted updates counted for)


@dataclass
class ParticipationCell:
    """How many update records one client has in one round with one status."""

    client: str
    round: int
    status: str
    count: int


@dataclass
class ClientSummary:
    """One row of the dashboard's Clients page: a ClientRecord and its updates, counted."""

    client: str
    combiner: str
    status: str  # ClientStatus
    last_seen: float
    participations: int  # ClientRecord.participations
    rounds: int  # distinct rounds with an accepted update
    accepted: int
    rejected: int  # refused by a check (a Reason of the report or the file)
    failed: int  # no usable result (client error, lost, deadline, ...)
    mean_train_s: float | None  # over accepted updates that recorded train_s (> 0)
    last_error: str  # "reason: message" of the latest rejected or failed update, "" if none
    last_error_at: float | None


#: every JobRecord field; update_job may set all of them but `name`
JOB_FIELDS = frozenset(f.name for f in dataclasses.fields(JobRecord))
#: the JobRecord fields a store keeps as JSON text
JOB_JSON_FIELDS = frozenset({"manifest", "metrics"})
_PHASES = tuple(p.value for p in Phase)


def encode_json(value: Any) -> str:
    """The canonical JSON text of `value` (sorted keys, no spaces): how the stores
    keep free-form dicts."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def encode_json_fields(values: Mapping[str, Any], json_fields: frozenset[str]) -> dict[str, Any]:
    """`values` with those named in `json_fields` as JSON text (encode_json)."""
    return {k: encode_json(v) if k in json_fields else v for k, v in values.items()}


def check_job_fields(name: str, fields: Mapping[str, Any]) -> None:
    """StateError unless update_job(`name`, **fields) names settable JobRecord
    fields only (not `name`) and, if it sets `phase`, a known Phase."""
    bad = sorted(k for k in fields if k not in JOB_FIELDS or k == "name")
    if bad:
        raise StateError(f"update_job({name!r}): unknown or read-only field(s) {bad}")
    if "phase" in fields and fields["phase"] not in _PHASES:
        raise StateError(
            f"update_job({name!r}): unknown phase {fields['phase']!r} (one of {_PHASES})"
        )


def check_schema_version(store: str, version: int) -> None:
    """StateError if `version`, the schema version found in `store` (its URI, and
    more where that helps), is newer than SCHEMA_VERSION."""
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state store {store} has schema version {version}, newer than this "
            f"fedkube supports ({SCHEMA_VERSION}); upgrade fedkube"
        )


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

    def update_job(self, name: str, **fields: Any) -> JobRecord:
        """Set the given JobRecord fields (phase, message, current_round, ...);
        `updated_at` is now unless given.

        Raises StateError for an unknown job or field."""
        check_job_fields(name, fields)
        fields.setdefault("updated_at", now())
        return self._set_job(name, encode_json_fields(fields, JOB_JSON_FIELDS))

    @abc.abstractmethod
    def _set_job(self, name: str, values: dict[str, Any]) -> JobRecord:
        """update_job's write: store `values` (checked JobRecord fields, those in
        JOB_JSON_FIELDS as JSON text) in job `name` and return the record.
        Raises StateError if there is no such job."""

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
        False if the round was committed before (nothing is changed then).

        An attempt that was never begun is created completed; committing a
        *failed* attempt raises StateError."""
        result = {
            "completed_at": now(),
            "model_key": model_key,
            "n_updates": n_updates,
            "num_examples": num_examples,
            "metrics": metrics,
            "timings": timings,
            "participants": list(participants),
            "combiners": combiners,
        }
        return self._commit_round(job, round, attempt, result)

    @abc.abstractmethod
    def _commit_round(self, job: str, round: int, attempt: int, result: dict[str, Any]) -> bool:
        """commit_round's write. `result` holds the RoundRecord fields a commit sets
        besides `status`: `completed_at` (now) and commit_round's keyword
        arguments, not yet encoded."""

    @abc.abstractmethod
    def set_validation(
        self, job: str, round: int, metrics: dict[str, float], num_examples: int
    ) -> None:
        """Attach validation metrics of the global model after `round` to the
        committed attempt of that round (idempotent; last write wins)."""

    @abc.abstractmethod
    def get_rounds(self, job: str, *, participants: bool = True) -> list[RoundRecord]:
        """Every attempt of every round, sorted by (round, attempt). With
        ``participants=False`` the (large) participant lists are left empty and
        not read: what the dashboard asks for."""

    def committed_rounds(self, job: str) -> list[RoundRecord]:
        return [r for r in self.get_rounds(job) if r.status == AttemptStatus.COMPLETED]

    def last_committed_round(self, job: str) -> int:
        """The highest committed round, 0 if none."""
        rounds = self.get_rounds(job, participants=False)
        return max((r.round for r in rounds if r.status == AttemptStatus.COMPLETED), default=0)

    # ---- updates
    @abc.abstractmethod
    def record_update(self, rec: UpdateRecord) -> bool:
        """Insert if no record has the same (job, round, attempt, client); return
        True if inserted, False if it was a duplicate (nothing changed)."""

    @abc.abstractmethod
    def list_updates(self, job: str, round: int | None = None) -> list[UpdateRecord]:
        """Sorted by (round, attempt, client)."""

    # ---- aggregate queries (the dashboard): computed by the backend (SQL, MongoDB
    # aggregation pipelines), fast for 1,000 rounds x 1,000 clients
    @abc.abstractmethod
    def job_overviews(self) -> list[JobOverview]:
        """Every job with its client counts, sorted by name."""

    @abc.abstractmethod
    def count_updates(
        self, job: str, *, round_from: int | None = None, round_to: int | None = None
    ) -> list[UpdateCount]:
        """The job's update records (rounds round_from..round_to inclusive, when given)
        grouped by (round, attempt, combiner, status, reason), sorted by those."""

    @abc.abstractmethod
    def participation(
        self, job: str, *, clients: Sequence[str], round_from: int, round_to: int
    ) -> list[ParticipationCell]:
        """Update records of `clients` in rounds round_from..round_to (inclusive),
        grouped by (client, round, status), sorted by (client, round, status)."""

    @abc.abstractmethod
    def client_summaries(self, job: str) -> list[ClientSummary]:
        """Every client of the job (its ClientRecords) with its updates counted,
        sorted by client."""

    @abc.abstractmethod
    def query_events(
        self,
        job: str,
        *,
        kinds: Sequence[str] = (),
        levels: Sequence[str] = (),
        round: int | None = None,
        client: str | None = None,
        combiner: str | None = None,
        before_seq: int | None = None,
        limit: int = 200,
    ) -> list[EventRecord]:
        """The job's newest events first (seq descending), at most `limit`, that match
        every filter given (an empty sequence or None filters nothing); with
        `before_seq`, only events with a smaller seq (the next page)."""

    @abc.abstractmethod
    def count_events(self, job: str) -> dict[str, int]:
        """The job's number of events per kind."""

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

    # ---- credentials
    @abc.abstractmethod
    def add_credential(self, rec: CredentialRecord) -> None:
        """Record a newly issued credential (its token_id is unique per job)."""

    @abc.abstractmethod
    def list_credentials(self, job: str) -> list[CredentialRecord]:
        """Every credential of the job, revoked ones too, sorted by (client, issued_at)."""

    def issue_credential(
        self, job: str, client: str, note: str = ""
    ) -> tuple[str, CredentialRecord]:
        """A new token for `client` of `job`: its digest is recorded, the token itself
        is returned to show once. ValueError for an invalid client id."""
        check_client_id(client)
        token = new_token()
        digest = token_digest(token)
        rec = CredentialRecord(job, client, token_id(digest), digest, now(), None, note)
        self.add_credential(rec)
        return token, rec

    @abc.abstractmethod
    def revoke_credentials(
        self, job: str, client: str, token_id: str | None = None, *, at: float | None = None
    ) -> int:
        """Revoke the client's credentials (only `token_id` when given); return how
        many were revoked now (already revoked ones do not count)."""

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
