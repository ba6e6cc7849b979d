"""Every exception fedkube raises on purpose. Pure module."""

from __future__ import annotations

from fedkube.vocabulary import Reason


class FedkubeError(Exception):
    """Base class of all fedkube errors."""


class SpecError(FedkubeError, ValueError):
    """A FederatedJob manifest is invalid; the message names each bad field."""


class ModelFileError(FedkubeError, ValueError):
    """A model or update file is corrupt, oversized or not like the global model.

    `reason` is the machine word for what is wrong (``Reason.CORRUPT``,
    ``TOO_LARGE``, ``WRONG_NAMES``, ``WRONG_SHAPE``, ``WRONG_DTYPE``,
    ``NOT_FINITE``); the message names the tensor or the limit.
    """

    def __init__(self, message: str, reason: Reason = Reason.CORRUPT) -> None:
        super().__init__(message)
        self.reason = reason


class UpdateRejected(FedkubeError):
    """A client's report or update was refused (bad file, unknown task, past round, ...).

    `reason` goes into ``Ack.reason``, the update record and the event; the
    message names the problem."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    @classmethod
    def from_file_error(cls, exc: ModelFileError) -> UpdateRejected:
        return cls(exc.reason, str(exc))


class StoreError(FedkubeError):
    """The object store failed (auth, missing bucket, unreachable endpoint, ...)."""


class ObjectNotFound(StoreError, KeyError):
    """The object store has no object at the key."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "object not found"


class StateError(FedkubeError):
    """The state store failed or holds inconsistent data."""


class RoundFailed(FedkubeError):
    """An attempt of a round (or of the seed model) could not complete: no quorum,
    a combiner refused the reducer, an invalid partial, ... The reducer retries the
    round up to ``retry.maxAttempts`` and fails the job after that."""


class TaskError(FedkubeError):
    """A client's train or validate entrypoint failed."""


class AuthError(FedkubeError):
    """A missing or wrong bearer token."""


class ServiceUnavailable(FedkubeError, RuntimeError):
    """A process or server fedkube needs could not be found or started: a role
    process of `fedkube run`, a real server of fedkube.devenv. The message has
    the reason (and the process's log tail); `hint` says how to get it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint
