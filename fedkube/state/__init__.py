"""Round state: SQLite (embedded) or MongoDB (pymongo)."""

from fedkube.state.base import (
    ClientRecord,
    CredentialRecord,
    EventRecord,
    JobRecord,
    ModelRecord,
    RoundRecord,
    StateStore,
    UpdateRecord,
)
from fedkube.state.factory import open_state_store

__all__ = [
    "ClientRecord",
    "CredentialRecord",
    "EventRecord",
    "JobRecord",
    "ModelRecord",
    "RoundRecord",
    "StateStore",
    "UpdateRecord",
    "open_state_store",
]
