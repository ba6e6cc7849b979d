"""Why an attempt failed, as a bounded class next to its message. Pure module.

The reducer records a failed attempt with a message naming what went wrong
(``RoundRecord.reason``: free text, read by people); the metrics count failed
attempts by `Cause`, a word from a small fixed set, so a dashboard can tell
"no quorum" from "store outage" without parsing messages. The reducer's code
raises `AttemptFailed` with the cause where it knows it; `cause_of` names the
cause of whatever ended an attempt.
"""

from __future__ import annotations

from enum import StrEnum

from fedkube.errors import RoundFailed, StateError, StoreError


class Cause(StrEnum):
    """The ``reason`` label of ``fedkube_attempts_failed_total``."""

    NO_CLIENTS = "no_clients"  # fewer clients connected than clients.minUpdates
    COMBINER_REFUSED = "combiner_refused"  # a combiner refused the reducer (token, job)
    NO_QUORUM = "no_quorum"  # fewer updates aggregated than clients.minUpdates
    INVALID_PARTIAL = "invalid_partial"  # a combiner's partial failed its checks or the merge
    MODEL_CHANGED = "model_changed"  # the committed base model is not the one recorded
    STORE_ERROR = "store_error"  # the object store or the state store failed
    OTHER = "other"


class AttemptFailed(RoundFailed):
    """A RoundFailed whose cause the reducer knows."""

    def __init__(self, cause: Cause, message: str) -> None:
        super().__init__(message)
        self.cause = cause


def cause_of(exc: BaseException) -> Cause:
    if isinstance(exc, AttemptFailed):
        return exc.cause
    if isinstance(exc, StoreError | StateError):
        return Cause.STORE_ERROR
    return Cause.OTHER
