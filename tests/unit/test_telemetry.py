"""The metrics plumbing (fedkube.telemetry) and the role metrics' label sets.

The timing proxy runs against a pure in-memory ObjectStore (no I/O in the
store itself); the HTTP endpoint is a real server on a loopback port.
"""

from __future__ import annotations

import abc
import io
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from fedkube.combiner.telemetry import CombinerTelemetry, task_kind
from fedkube.errors import ObjectNotFound, RoundFailed, StateError, StoreError
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.reducer.failure import AttemptFailed, Cause, cause_of
from fedkube.reducer.telemetry import ReducerTelemetry, ValidationOutcome
from fedkube.store import ObjectStore
from fedkube.telemetry import (
    OTHER_ERROR,
    HttpEndpoint,
    StoreTelemetry,
    exposition,
    health_route,
    interface_methods,
    metrics_route,
    new_registry,
    timed,
)
from fedkube.vocabulary import AssignmentStatus, EventKind, Reason


class BytesReader(io.BytesIO):
    """`ObjectReader` over bytes."""

    def __init__(self, data: bytes, size: int) -> None:
        super().__init__(data)
        self.size = size


class MemoryStore(ObjectStore):
    """An ObjectStore in a dict; `broken` makes every put raise StoreError."""

    uri = "memory://"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.broken = False

    def put_file(self, key: str, path: str | Path) -> None:
        if self.broken:
            raise StoreError("the disk is on fire")
        self.objects[key] = Path(path).read_bytes()

    def get_file(self, key: str, path: str | Path) -> None:
        if key not in self.objects:
            raise ObjectNotFound(key)
        Path(path).write_bytes(self.objects[key])

    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> BytesReader:
        if key not in self.objects:
            raise ObjectNotFound(key)
        data = self.objects[key]
        return BytesReader(data[offset : None if length is None else offset + length], len(data))

    def version(self, key: str) -> str:
        if key not in self.objects:
            raise ObjectNotFound(key)
        return str(hash(self.objects[key]))

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def exists(self, key: str) -> bool:
        return key in self.objects

    def size(self, key: str) -> int:
        if key not in self.objects:
            raise ObjectNotFound(key)
        return len(self.objects[key])

    def list(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def presign_get(self, key: str, expires_seconds: int = 900) -> str:
        raise ValueError("no URLs here")  # not a FedkubeError: counted as "other"

    def presign_put(self, key: str, expires_seconds: int = 900) -> str:
        return f"memory://{key}"

    def backend_only(self) -> str:
        """A method that is not part of the ObjectStore interface."""
        return "mine"


@pytest.fixture
def telemetry() -> StoreTelemetry:
    return StoreTelemetry(new_registry(), {"job": "toy", "combiner": "c0"})


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"job": "toy", "combiner": "c0", **labels})


def test_every_interface_call_is_observed_by_operation(
    telemetry: StoreTelemetry, tmp_path: Path
) -> None:
    reg = telemetry.registry
    raw = MemoryStore()
    store = telemetry.objects(raw)
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    store.put_file("a", f)
    store.put_file("b", f)
    assert store.exists("a") and not store.exists("zzz")
    assert store.size("a") == 3 and raw.objects["a"] == b"abc"
    assert sample(reg, "fedkube_object_store_seconds_count", operation="put_file") == 2
    assert sample(reg, "fedkube_object_store_seconds_count", operation="exists") == 2
    assert sample(reg, "fedkube_object_store_seconds_count", operation="size") == 1
    total = sample(reg, "fedkube_object_store_seconds_sum", operation="put_file")
    assert total is not None and total > 0
    # nothing raised, so no error series exists
    assert (
        sample(reg, "fedkube_object_store_errors_total", operation="put_file", error="StoreError")
        is None
    )


def test_errors_are_counted_by_operation_and_class_and_still_raised(
    telemetry: StoreTelemetry, tmp_path: Path
) -> None:
    reg = telemetry.registry
    raw = MemoryStore()
    store = telemetry.objects(raw)
    raw.broken = True
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with pytest.raises(StoreError, match="on fire"):
        store.put_file("a", f)
    with pytest.raises(ObjectNotFound):
        store.size("missing")
    with pytest.raises(ValueError, match="no URLs"):
        store.presign_get("a")
    errors = "fedkube_object_store_errors_total"
    assert sample(reg, errors, operation="put_file", error="StoreError") == 1
    assert sample(reg, errors, operation="size", error="ObjectNotFound") == 1
    assert sample(reg, errors, operation="presign_get", error=OTHER_ERROR) == 1
    # a failed call is timed too
    assert sample(reg, "fedkube_object_store_seconds_count", operation="put_file") == 1


def test_only_interface_methods_are_observed(telemetry: StoreTelemetry, tmp_path: Path) -> None:
    reg = telemetry.registry
    raw = MemoryStore()
    raw.objects["k"] = b"12345"
    store = telemetry.objects(raw)
    assert store.uri == "memory://"  # attributes pass through
    assert store.backend_only() == "mine"  # type: ignore[attr-defined]
    assert store.fetch("k", tmp_path / "out").read_bytes() == b"12345"
    text = exposition(reg)[0].decode()
    operations = {
        s.labels["operation"]
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if "operation" in s.labels
    }
    # fetch calls local_path and get_file on the store itself: those inner calls
    # are the backend's business, not another store round trip of the role
    assert operations == {"fetch"}
    assert operations <= interface_methods(ObjectStore)
    assert "backend_only" not in interface_methods(ObjectStore)


def test_timed_wraps_any_interface_and_keeps_the_return_value() -> None:
    class Greeter(abc.ABC):
        @abc.abstractmethod
        def greet(self, name: str) -> str: ...

    class Impl(Greeter):
        def greet(self, name: str) -> str:
            if not name:
                raise StateError("nobody to greet")
            return f"hello {name}"

    reg = CollectorRegistry()
    seconds = Histogram("t_seconds", "t", ("who", "operation"), registry=reg)
    errors = Counter("t_errors_total", "t", ("who", "operation", "error"), registry=reg)
    g = timed(Impl(), Greeter, seconds=seconds, errors=errors, labels={"who": "me"})
    assert g.greet("ada") == "hello ada"
    with pytest.raises(StateError):
        g.greet("")
    labels = {"who": "me", "operation": "greet"}
    assert reg.get_sample_value("t_seconds_count", labels) == 2
    assert reg.get_sample_value("t_errors_total", {**labels, "error": "StateError"}) == 1


def test_registries_are_per_role_not_global() -> None:
    # The same metric names twice in one process: each role has its own registry.
    a, b = ReducerTelemetry("one"), ReducerTelemetry("two")
    a.rounds_committed.inc()
    assert a.registry.get_sample_value("fedkube_rounds_committed_total", {"job": "one"}) == 1
    assert b.registry.get_sample_value("fedkube_rounds_committed_total", {"job": "two"}) == 0
    assert a.registry.get_sample_value("fedkube_rounds_committed_total", {"job": "two"}) is None
    c1, c2 = CombinerTelemetry("one", "c0"), CombinerTelemetry("one", "c0")
    assert c1.registry is not c2.registry


def _label_names(registry: CollectorRegistry) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(exposition(registry)[0].decode()):
        if fam.name.startswith("fedkube_"):
            for s in fam.samples:
                out.setdefault(fam.name, set()).update(k for k in s.labels if k != "le")
    return out


BOUNDED = {"operation", "error", "status", "reason", "kind", "stage"}


def test_reducer_metrics_carry_job_and_bounded_labels_only() -> None:
    t = ReducerTelemetry("toy")
    t.round_committed(
        1,
        5,
        {
            "wait_s": 0.1,
            "train_s": 2,
            "aggregate_s": 1,
            "merge_s": 0.2,
            "commit_s": 0.1,
            "total_s": 3,
        },
    )
    t.attempt_failed(Cause.NO_QUORUM, 4.0)
    t.validated(ValidationOutcome.COMPLETED)
    t.stores.state_seconds.labels(job="toy", operation="get_job").observe(0.01)
    names = _label_names(t.registry)
    assert {
        "fedkube_rounds_committed",
        "fedkube_attempts_failed",
        "fedkube_attempt_duration_seconds",
        "fedkube_round_stage_seconds",
        "fedkube_round_current",
        "fedkube_rounds_completed",
        "fedkube_validations",
        "fedkube_state_store_seconds",
    } <= set(names)
    for name, labels in names.items():
        assert "job" in labels, name
        assert labels - {"job"} <= BOUNDED, (name, labels)
    reg = t.registry
    assert reg.get_sample_value("fedkube_rounds_completed", {"job": "toy"}) == 1
    assert reg.get_sample_value("fedkube_round_updates_total", {"job": "toy"}) == 5
    stage = {"job": "toy", "stage": "aggregate"}
    assert reg.get_sample_value("fedkube_round_stage_seconds_sum", stage) == 1
    failed = {"job": "toy", "reason": "no_quorum"}
    assert reg.get_sample_value("fedkube_attempts_failed_total", failed) == 1
    # every cause is there from the start, at 0
    zero = {"job": "toy", "reason": "store_error"}
    assert reg.get_sample_value("fedkube_attempts_failed_total", zero) == 0


def test_combiner_metrics_carry_job_combiner_and_bounded_labels_only() -> None:
    t = CombinerTelemetry("toy", "c0")
    t.settled(pb.TASK_KIND_TRAIN, AssignmentStatus.REJECTED, Reason.NOT_FINITE)
    t.settled(pb.TASK_KIND_TRAIN, AssignmentStatus.ACCEPTED, None)
    t.settled(pb.TASK_KIND_VALIDATE, AssignmentStatus.FAILED, Reason.CLIENT_ERROR)
    t.ignored(Reason.DUPLICATE)
    t.refused(EventKind.IMPERSONATION)
    t.served(pb.TASK_KIND_TRAIN)
    t.pushed(pb.TASK_KIND_TRAIN, 0.01)
    t.watch_clients(lambda: 3, lambda: 1)
    names = _label_names(t.registry)
    for name, labels in names.items():
        assert {"job", "combiner"} <= labels, name
        assert labels - {"job", "combiner"} <= BOUNDED, (name, labels)
    reg = t.registry
    jc = {"job": "toy", "combiner": "c0"}
    assert reg.get_sample_value("fedkube_clients_connected", jc) == 3
    assert reg.get_sample_value("fedkube_clients_busy", jc) == 1
    upd = "fedkube_updates_total"
    assert reg.get_sample_value(upd, {**jc, "status": "rejected", "reason": "not_finite"}) == 1
    assert reg.get_sample_value(upd, {**jc, "status": "accepted", "reason": ""}) == 1
    val = {**jc, "status": "failed", "reason": "client_error"}
    assert reg.get_sample_value("fedkube_validation_reports_total", val) == 1
    assert reg.get_sample_value(upd, val) is None  # validation reports are no updates
    assert reg.get_sample_value("fedkube_task_fanout_seconds_count", {**jc, "kind": "train"}) == 1
    refused = "fedkube_refused_calls_total"
    assert reg.get_sample_value(refused, {**jc, "kind": "Impersonation"}) == 1
    assert reg.get_sample_value(refused, {**jc, "kind": "AuthFailed"}) == 0


def test_task_kind_words() -> None:
    assert [
        task_kind(k) for k in (pb.TASK_KIND_TRAIN, pb.TASK_KIND_VALIDATE, pb.TASK_KIND_INIT)
    ] == [
        "train",
        "validate",
        "init",
    ]


def test_cause_of_a_failed_attempt() -> None:
    assert cause_of(AttemptFailed(Cause.NO_QUORUM, "2 updates")) == Cause.NO_QUORUM
    assert isinstance(AttemptFailed(Cause.NO_CLIENTS, "x"), RoundFailed)  # retried as before
    assert str(AttemptFailed(Cause.NO_CLIENTS, "only 1 client")) == "only 1 client"
    assert cause_of(StoreError("down")) == Cause.STORE_ERROR
    assert cause_of(StateError("down")) == Cause.STORE_ERROR
    assert cause_of(RoundFailed("something else")) == Cause.OTHER


# ---------------------------------------------------------------- the HTTP endpoint


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read(), resp.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def test_http_endpoint_serves_metrics_health_and_nothing_else() -> None:
    t = CombinerTelemetry("toy", "c0")
    t.ignored(Reason.PAST_ROUND)
    healthy = [True]

    def boom() -> tuple[int, bytes, str]:
        raise RuntimeError("secret-token-123 leaked in a message")

    ep = HttpEndpoint(
        "127.0.0.1",
        0,
        {
            "/metrics": metrics_route(t.registry),
            "/healthz": health_route(lambda: healthy[0]),
            "/boom": boom,
        },
    ).start()
    try:
        assert ep.port > 0 and ep.url == f"http://127.0.0.1:{ep.port}"
        code, body, ctype = _get(f"{ep.url}/metrics")
        assert code == 200 and ctype.startswith("text/plain")
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        ignored = fams["fedkube_reports_ignored"].samples
        assert [(s.labels["reason"], s.value) for s in ignored if s.name.endswith("_total")] == [
            ("past_round", 1.0)
        ]
        assert "process_resident_memory_bytes" in fams  # the process collector
        assert b"_created" not in body  # no *_created series doubling every counter
        assert _get(f"{ep.url}/metrics?x=1")[0] == 200  # a query string is ignored
        assert _get(f"{ep.url}/healthz")[:2] == (200, b"ok\n")
        healthy[0] = False
        assert _get(f"{ep.url}/healthz")[0] == 503
        assert _get(f"{ep.url}/nope")[0] == 404
        code, body, _ = _get(f"{ep.url}/boom")
        assert code == 500 and body == b"RuntimeError\n"  # never the message
    finally:
        ep.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{ep.url}/healthz", timeout=2)
