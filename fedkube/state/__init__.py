"""Round state: SQLite (embedded) or MongoDB (pymongo)."""

from fedkube.state.base import (
    ATTEMPT_COMPLETED,
    ATTEMPT_FAILED,
    ATTEMPT_RUNNING,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    ClientRecord,
    EventRecord,
    JobRecord,
    ModelRecord,
    RoundRecord,
    StateStore,
    UpdateRecord,
)
from fedkube.state.factory import open_state_store

__all__ = [
    "ATTEMPT_COMPLETED",
    "ATTEMPT_FAILED",
    "ATTEMPT_RUNNING",
    "FAILED",
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "SUSPENDED",
    "ClientRecord",
    "EventRecord",
    "JobRecord",
    "ModelRecord",
    "RoundRecord",
    "StateStore",
    "UpdateRecord",
    "open_state_store",
]
