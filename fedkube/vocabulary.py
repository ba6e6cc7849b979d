"""The round's vocabulary: one word for each concept of a round. Pure module.

Every role speaks these words: the combiners in ``Ack.reason`` and their gRPC
metadata, the reducer in its decisions, the client when it reads an Ack, the
state store in its records (``JobRecord.phase``, ``RoundRecord.status`` and
``reason``, ``UpdateRecord.status`` and ``reason``, ``ClientRecord.status``,
``EventRecord.kind``), the operator in the FederatedJob status, and the docs in
their tables. They are ``StrEnum`` members, so a member *is* its string
(``Reason.DUPLICATE == "duplicate"``): they are sent and stored as plain text,
and records read back from a store compare equal to them.

Add a word here before using it anywhere; ``tests/unit/test_vocabulary.py``
checks that the combiner sends no reason outside `Reason`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final


class Phase(StrEnum):
    """A job's phase: ``JobRecord.phase`` and the FederatedJob's ``status.phase``."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


#: Phases a job does not leave by itself (a restarted reducer may run a Failed job again).
TERMINAL_PHASES: Final = (Phase.SUCCEEDED, Phase.FAILED)

#: The message of a job whose reducer was stopped (SIGTERM) before the end: its phase
#: goes back to Pending, its state is kept, and the next reducer resumes it.
INTERRUPTED_MESSAGE: Final = "interrupted; resumes when a reducer starts"
#: How often a running reducer renews ``JobRecord.reducer_seen_at`` (seconds).
REDUCER_LIVENESS_SECONDS: Final = 5.0
#: A Running job whose reducer was not seen for longer than this (seconds) has no
#: reducer behind it (killed, OOM, power loss): `fedkube status` and the operator say so.
REDUCER_STALE_SECONDS: Final = 30.0


def reducer_silence(
    phase: str, seen_at: float | None, now: float, stale_after: float = REDUCER_STALE_SECONDS
) -> float | None:
    """Seconds since a Running job's reducer was last seen, when that is longer than
    `stale_after` (the job has no reducer behind it); None otherwise (another phase,
    a reducer seen recently, or a record from before reducers renewed their liveness)."""
    if phase != Phase.RUNNING or seen_at is None:
        return None
    silent = now - seen_at
    return silent if silent > stale_after else None


#: The headline metric of a job (the FederatedJob's Metric column, the dashboard's Jobs
#: page) is the first of these it reports.
HEADLINE_METRICS: Final = ("accuracy", "acc", "f1", "auc", "loss")
#: How the headline metric's value is written (4 significant digits).
HEADLINE_FORMAT: Final = ".4g"
HEADLINE_RULE: Final = (
    "NAME=VALUE of the first of "
    + ", ".join(HEADLINE_METRICS)
    + " in metrics (else the first metric by name)"
)


def headline_name(metrics: Mapping[str, float] | None) -> str | None:
    """The name of the headline metric among `metrics` (None if there are none)."""
    if not metrics:
        return None
    return next((m for m in HEADLINE_METRICS if m in metrics), None) or sorted(metrics)[0]


def headline_metric(metrics: Mapping[str, float] | None) -> str | None:
    """The headline metric's text, e.g. ``accuracy=0.968`` (None without metrics)."""
    name = headline_name(metrics)
    if name is None or metrics is None:
        return None
    return f"{name}={float(metrics[name]):{HEADLINE_FORMAT}}"


class AttemptStatus(StrEnum):
    """The status of one attempt of a round (``RoundRecord.status``)."""

    RUNNING = "running"
    COMPLETED = "completed"  # committed: the round's model is this attempt's
    FAILED = "failed"


class AttemptReason(StrEnum):
    """The ``RoundRecord.reason`` of a failed attempt, where the reducer must tell
    cases apart. Any other failure's reason is a message naming what went wrong
    (no quorum, a store outage, ...) and counts against ``retry.maxAttempts``."""

    #: The reducer restarted while the attempt ran; it does not count as a failure.
    REDUCER_RESTARTED = "reducer_restarted"


#: What fedkube 0.1 stored for `AttemptReason.REDUCER_RESTARTED`; still read as such.
LEGACY_REDUCER_RESTARTED: Final = "reducer restarted"


def interrupted_by_restart(reason: str) -> bool:
    """True for the reason of an attempt a reducer restart interrupted."""
    return reason in (AttemptReason.REDUCER_RESTARTED, LEGACY_REDUCER_RESTARTED)


class AssignmentStatus(StrEnum):
    """Where a task a combiner gave one client stands (the combiner's Assignment).

    The final three are also ``UpdateRecord.status`` in the state store.
    """

    PENDING = "pending"  # given to the client, no report yet
    CHECKING = "checking"  # reported; the file is being checked (a second report is a duplicate)
    ACCEPTED = "accepted"  # checked and folded into the combiner's aggregate
    REJECTED = "rejected"  # the client's report or file was refused (see Reason)
    FAILED = "failed"  # no usable result, nobody proved wrong: client error, lost, deadline


#: Statuses an assignment does not leave.
SETTLED: Final = (AssignmentStatus.ACCEPTED, AssignmentStatus.REJECTED, AssignmentStatus.FAILED)


class Reason(StrEnum):
    """Why a report was not accepted: ``Ack.reason``, ``UpdateRecord.reason`` and
    the reason of a settled assignment. The Ack's ``message`` says the details."""

    # -- the report does not belong to the running round
    UNKNOWN_TASK = "unknown_task"  # not a task of this round, kind or client
    PAST_ROUND = "past_round"  # for a round or attempt that is over (or was cancelled)
    DUPLICATE = "duplicate"  # the task was reported already
    NOT_CONNECTED = "not_connected"  # a heartbeat from a client the combiner does not know
    # -- the report's claims
    BAD_WEIGHT = "bad_weight"  # num_examples is not > 0
    BAD_METRICS = "bad_metrics"  # a metric is not finite
    # -- the file
    MISSING = "missing"  # nothing was uploaded
    TOO_LARGE = "too_large"  # over spec.model.maxBytes
    CHECKSUM = "checksum"  # its digest is not the one reported (or names no known hash)
    CORRUPT = "corrupt"  # not a well-formed safetensors file
    WRONG_NAMES = "wrong_names"  # tensor names differ from the global model's
    WRONG_SHAPE = "wrong_shape"
    WRONG_DTYPE = "wrong_dtype"  # another dtype than the global model's, or unsupported
    NOT_FINITE = "not_finite"  # NaN or Inf in a floating tensor
    # -- no result, and nobody proved wrong
    CLIENT_ERROR = "client_error"  # the client reported that its own code failed
    CLIENT_LOST = "client_lost"  # disconnected or stopped heartbeating mid-task
    DEADLINE = "deadline"  # no report before the attempt's deadline
    COMBINER_ERROR = "combiner_error"  # the combiner could not process it (storage, ...)


class ClientStatus(StrEnum):
    """``ClientRecord.status``: whether a client holds a task stream to a combiner."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


class MetadataKey(StrEnum):
    """gRPC metadata keys fedkube sets and reads."""

    #: ``Bearer <token>`` on every call.
    AUTHORIZATION = "authorization"
    #: Initial metadata of a client's task stream: how often to heartbeat, in seconds
    #: (the combiner forgets a client after 3 missed beats).
    HEARTBEAT_SECONDS = "fedkube-heartbeat-seconds"


class EventKind(StrEnum):
    """``EventRecord.kind``: what an event in the state store reports."""

    # -- the job (reducer)
    JOB_RUNNING = "JobRunning"
    JOB_RESTARTED = "JobRestarted"
    JOB_SUSPENDED = "JobSuspended"
    JOB_RESUMED = "JobResumed"
    JOB_SUCCEEDED = "JobSucceeded"
    JOB_FAILED = "JobFailed"
    JOB_INTERRUPTED = "JobInterrupted"  # the reducer was stopped (SIGTERM): phase back to Pending
    SEED_STORED = "SeedStored"
    SEED_FAILED = "SeedFailed"
    # -- rounds and attempts (reducer)
    ROUND_STARTED = "RoundStarted"
    ROUND_COMPLETED = "RoundCompleted"
    ROUND_VALIDATED = "RoundValidated"
    ATTEMPT_FAILED = "AttemptFailed"
    ATTEMPT_ABANDONED = "AttemptAbandoned"
    COMBINER_FAILED = "CombinerFailed"
    VALIDATION_INCOMPLETE = "ValidationIncomplete"
    VALIDATION_FAILED = "ValidationFailed"  # also a client's failed validate task (combiner)
    # -- clients and their reports (combiner)
    AUTH_FAILED = "AuthFailed"  # a call without a valid token (merged: "N more ...")
    IMPERSONATION = "Impersonation"  # a valid token used for another client id
    DUPLICATE_STREAM = "DuplicateStream"  # a second stream for a connected client, refused
    CREDENTIAL_REVOKED = "CredentialRevoked"  # a connected client's credential was revoked
    WEIGHT_CAPPED = "WeightCapped"  # spec.weights clipped a claimed num_examples
    TASK_REASSIGNED = "TaskReassigned"  # a freed slot went to another idle client
    CLIENT_LOST = "ClientLost"
    TASK_TIMED_OUT = "TaskTimedOut"
    TRAIN_FAILED = "TrainFailed"
    UPDATE_IGNORED = "UpdateIgnored"  # not a task of the running round: counted nowhere
    UPDATE_REJECTED = "UpdateRejected"
    UPDATE_FAILED = "UpdateFailed"  # the combiner could not process an update
