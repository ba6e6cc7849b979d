"""Every exception fedkube raises on purpose. Pure module."""

from __future__ import annotations


class FedkubeError(Exception):
    """Base class of all fedkube errors."""


class SpecError(FedkubeError, ValueError):
    """A FederatedJob manifest is invalid; the message names each bad field."""


class ModelFileError(FedkubeError, ValueError):
    """A model or update file is corrupt, oversized or not like the global model."""


class UpdateRejected(FedkubeError):
    """A client's update was refused (bad file, unknown task, past round, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StoreError(FedkubeError):
    """The object store failed (auth, missing bucket, unreachable endpoint, ...)."""


class ObjectNotFound(StoreError, KeyError):
    """The object store has no object at the key."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "object not found"


class StateError(FedkubeError):
    """The state store failed or holds inconsistent data."""


class TaskError(FedkubeError):
    """A client's train or validate entrypoint failed."""


class AuthError(FedkubeError):
    """A missing or wrong bearer token."""
