"""A combiner's Prometheus metrics (served at ``/metrics`` of ``--metrics-port``).

Every metric carries ``job`` and ``combiner``; the other labels are words of a
fixed vocabulary (``AssignmentStatus``, ``Reason``, ``EventKind``, the task
kind), never a client id. `CombinerTelemetry` holds them in a registry of its
own (``fedkube.telemetry.new_registry``) with the latency and error metrics of
the combiner's state and object stores.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.telemetry import LONG_BUCKETS, SHORT_BUCKETS, StoreTelemetry, new_registry
from fedkube.vocabulary import AssignmentStatus, EventKind, Reason

#: the kinds of refused calls counted in ``fedkube_refused_calls_total``
REFUSAL_KINDS = (EventKind.AUTH_FAILED, EventKind.IMPERSONATION, EventKind.DUPLICATE_STREAM)


def task_kind(kind: int) -> str:
    """The ``kind`` label of a TaskKind: train, validate or init."""
    return pb.TaskKind.Name(kind).removeprefix("TASK_KIND_").lower()


class CombinerTelemetry:
    """The metrics of one combiner of one job."""

    def __init__(self, job: str, combiner: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.labels = {"job": job, "combiner": combiner}
        reg, jc = self.registry, ("job", "combiner")
        self.stores = StoreTelemetry(reg, self.labels)
        self._updates = Counter(
            "fedkube_updates_total",
            "Settled train and init tasks, by status (accepted, rejected, failed) and "
            "reason (empty for accepted): one per UpdateRecord.",
            (*jc, "status", "reason"),
            registry=reg,
        )
        self._validations = Counter(
            "fedkube_validation_reports_total",
            "Settled validate tasks, by status and reason.",
            (*jc, "status", "reason"),
            registry=reg,
        )
        self._ignored = Counter(
            "fedkube_reports_ignored_total",
            "Reports that belong to no running task (unknown task, past round, duplicate).",
            (*jc, "reason"),
            registry=reg,
        )
        self._refused = Counter(
            "fedkube_refused_calls_total",
            "Calls refused before any work: bad tokens, impersonation, second streams.",
            (*jc, "kind"),
            registry=reg,
        )
        self._served = Counter(
            "fedkube_attempts_served_total",
            "RunRound calls of the reducer this combiner served, by task kind.",
            (*jc, "kind"),
            registry=reg,
        )
        self._fanout = Histogram(
            "fedkube_task_fanout_seconds",
            "From a RunRound received (or a freed slot reassigned) to each task pushed "
            "on its client's stream.",
            (*jc, "kind"),
            registry=reg,
            buckets=SHORT_BUCKETS,
        )
        self.aggregate_seconds = Histogram(
            "fedkube_aggregate_seconds",
            "Seconds to fetch, check and fold one update into the running aggregate "
            "(whatever its outcome).",
            jc,
            registry=reg,
            buckets=SHORT_BUCKETS,
        ).labels(**self.labels)
        self.aggregate_bytes = Counter(
            "fedkube_aggregate_bytes_total",
            "Bytes of update files fetched and checked for aggregation.",
            jc,
            registry=reg,
        ).labels(**self.labels)
        self.client_train_seconds = Histogram(
            "fedkube_client_train_seconds",
            "Seconds from a train task's push to the client's report, for accepted updates.",
            jc,
            registry=reg,
            buckets=LONG_BUCKETS,
        ).labels(**self.labels)
        self._connected = Gauge(
            "fedkube_clients_connected", "Clients holding a task stream.", jc, registry=reg
        ).labels(**self.labels)
        self._busy = Gauge(
            "fedkube_clients_busy", "Connected clients with a task.", jc, registry=reg
        ).labels(**self.labels)
        self._zeros()

    def _zeros(self) -> None:
        """The series a dashboard sums exist from the start (0, not absent)."""
        self._updates.labels(**self.labels, status=AssignmentStatus.ACCEPTED, reason="")
        for kind in REFUSAL_KINDS:
            self._refused.labels(**self.labels, kind=kind)

    def watch_clients(self, connected: Callable[[], int], busy: Callable[[], int]) -> None:
        """Read the client gauges from `connected()` and `busy()` at every scrape."""
        self._connected.set_function(connected)
        self._busy.set_function(busy)

    def settled(self, kind: int, status: AssignmentStatus, reason: Reason | None) -> None:
        counter = self._validations if kind == pb.TASK_KIND_VALIDATE else self._updates
        counter.labels(**self.labels, status=status, reason=reason or "").inc()

    def ignored(self, reason: Reason) -> None:
        self._ignored.labels(**self.labels, reason=reason).inc()

    def refused(self, kind: EventKind) -> None:
        self._refused.labels(**self.labels, kind=kind).inc()

    def served(self, kind: int) -> None:
        self._served.labels(**self.labels, kind=task_kind(kind)).inc()

    def pushed(self, kind: int, seconds: float) -> None:
        self._fanout.labels(**self.labels, kind=task_kind(kind)).observe(seconds)
