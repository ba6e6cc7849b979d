"""Round state: SQLite (embedded) or MongoDB (pymongo)."""

from fedkube.state.base import (
    ClientRecord,
    ClientSummary,
    CredentialRecord,
    EventRecord,
    JobOverview,
    JobRecord,
    ModelRecord,
    ParticipationCell,
    RoundRecord,
    StateStore,
    UpdateCount,
    UpdateRecord,
)
from fedkube.state.factory import open_state_store

__all__ = [
    "ClientRecord",
    "ClientSummary",
    "CredentialRecord",
    "EventRecord",
    "JobOverview",
    "JobRecord",
    "ModelRecord",
    "ParticipationCell",
    "RoundRecord",
    "StateStore",
    "UpdateCount",
    "UpdateRecord",
    "open_state_store",
]
