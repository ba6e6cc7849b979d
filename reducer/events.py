"""The reducer's events in the state store (what `fedkube status` lists as warnings).

Recording an event is best effort: a state store that cannot take one is
logged, never allowed to stop the round loop.
"""

from __future__ import annotations

from typing import Any

from fedkube.logs import Logger
from fedkube.state import EventRecord, StateStore
from fedkube.vocabulary import EventKind


class EventLog:
    """``events(EventKind.ROUND_STARTED, "round 3 ...", round=3)`` records one event of the job."""

    def __init__(self, state: StateStore, job: str, log: Logger) -> None:
        self._state = state
        self._job = job
        self._log = log

    def __call__(self, kind: EventKind, message: str, level: str = "info", **kw: Any) -> None:
        try:
            self._state.add_event(
                EventRecord(job=self._job, kind=kind, message=message, level=level, **kw)
            )
        except Exception as exc:
            self._log.warning("cannot record event", kind=kind, error=str(exc))
