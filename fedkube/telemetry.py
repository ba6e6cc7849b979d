"""Prometheus metrics of a role process: what the reducer and the combiners share. I/O side.

- `new_registry`: a `CollectorRegistry` of one role (never the global default
  registry, so several reducers or combiners in one test process do not
  collide), with the process collector (CPU, memory, open files) and without
  the ``*_created`` series;
- `HttpEndpoint`: GET routes on a small threaded HTTP server; `metrics_route`
  serves a registry in the Prometheus text format, `health_route` a probe;
- `StoreTelemetry`: wraps a `StateStore` and an `ObjectStore` in proxies that
  observe every call of their interface in a latency histogram labelled by
  operation (the method name: a bounded set) and count the calls that raised,
  by operation and error class.

Metric names start with ``fedkube_`` and carry their unit (``_seconds``,
``_bytes``, ``_total``); labels are ``job`` (and ``combiner`` for a combiner)
plus bounded words (operation, status, reason, kind, stage), never a client
id, a token or a URI. The module name says "telemetry" because "metrics" are
the models' (accuracy, loss) everywhere else in fedkube.
"""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from fedkube.errors import FedkubeError
from fedkube.process import write_atomic
from fedkube.state import StateStore
from fedkube.store import ObjectStore

T = TypeVar("T")

#: the path Prometheus scrapes
METRICS_PATH: Final = "/metrics"
#: the probe path next to it
HEALTH_PATH: Final = "/healthz"
#: buckets of a state- or object-store call (seconds)
STORE_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: buckets of work that takes from milliseconds to about a second (one update, a fan-out)
SHORT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: buckets of work that takes seconds to an hour (an attempt, a client's training)
LONG_BUCKETS: Final = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
#: the `error` label of an exception that is not a FedkubeError
OTHER_ERROR: Final = "other"

#: (status code, body, content type) of a GET
Response = tuple[int, bytes, str]
Route = Callable[[], Response]


def new_registry() -> CollectorRegistry:
    """A registry of one role process, with the process collector (``process_*``).

    Counters and histograms are exposed without their ``*_created`` series (a
    setting of prometheus_client for the whole process: a role process exposes
    nothing else), which would double the series and mean nothing to a query."""
    disable_created_metrics()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def metrics_route(registry: CollectorRegistry) -> Route:
    def route() -> Response:
        body, ctype = exposition(registry)
        return 200, body, ctype

    return route


def health_route(healthy: Callable[[], bool]) -> Route:
    """200 "ok" while `healthy()` is true, 503 when it is false or raises."""

    def route() -> Response:
        try:
            ok = bool(healthy())
        except Exception:
            ok = False
        return (200, b"ok\n", "text/plain") if ok else (503, b"unhealthy\n", "text/plain")

    return route


def write_port_file(path: Path, port: int) -> None:
    """Write `port` to `path` atomically (a reader never sees a half-written file)."""
    write_atomic(path, str(port))


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class HttpEndpoint:
    """GET `routes` (path -> Route) on host:port (0: a free port; `port` says which)
    from a daemon thread; other paths get 404, other methods 501. A route that
    raises answers 500 with the error's class name (the message may hold secrets)."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Route]) -> None:
        table = dict(routes)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = table.get(self.path.split("?", 1)[0])
                if route is None:
                    self._send(404, b"not found\n", "text/plain")
                    return
                try:
                    code, body, ctype = route()
                except Exception as exc:
                    code, body, ctype = 500, f"{type(exc).__name__}\n".encode(), "text/plain"
                self._send(code, body, ctype)

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes and scrapes every few seconds would flood the logs

        bare = host.strip("[]")
        cls = _Server6 if ":" in bare else _Server
        self.server = cls((bare, port), Handler)
        self.host = bare
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="http-endpoint", daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> HttpEndpoint:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- store latencies


def interface_methods(interface: type) -> frozenset[str]:
    """The public methods of an interface class: the `operation` label's values."""
    return frozenset(
        n for n in dir(interface) if not n.startswith("_") and callable(getattr(interface, n))
    )


def error_class(exc: BaseException) -> str:
    """The `error` label of a failed call: the class of a FedkubeError (a bounded set,
    defined by fedkube), `OTHER_ERROR` for anything else."""
    return type(exc).__name__ if isinstance(exc, FedkubeError) else OTHER_ERROR


class _Timed:
    """A proxy: calls of `operations` are timed and their errors counted; everything
    else (attributes, other methods) is the target's own."""

    def __init__(
        self,
        target: Any,
        operations: frozenset[str],
        seconds: Histogram,
        errors: Counter,
        labels: Mapping[str, str],
    ) -> None:
        self._target = target
        self._operations = operations
        self._seconds = seconds
        self._errors = errors
        self._labels = dict(labels)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name not in self._operations or not callable(attr):
            return attr
        observed = self._seconds.labels(**self._labels, operation=name)
        labels, errors = self._labels, self._errors

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                errors.labels(**labels, operation=name, error=error_class(exc)).inc()
                raise
            finally:
                observed.observe(time.perf_counter() - t0)

        self.__dict__[name] = call  # next time straight from the instance
        return call

    def __repr__(self) -> str:
        return f"timed({self._target!r})"


def timed(
    target: T,
    interface: type,
    *,
    seconds: Histogram,
    errors: Counter,
    labels: Mapping[str, str],
) -> T:
    """`target` behind a proxy that observes each call of a method of `interface` in
    `seconds` and counts the exceptions it raises in `errors`, labelled by `labels`
    plus ``operation`` (the method's name) and, for errors, ``error``."""
    return cast(T, _Timed(target, interface_methods(interface), seconds, errors, labels))


class StoreTelemetry:
    """Latency and error metrics of one role's state store and object store.

    ``fedkube_state_store_seconds`` / ``fedkube_object_store_seconds``: histograms of
    every call by ``operation``; ``fedkube_state_store_errors_total`` /
    ``fedkube_object_store_errors_total``: calls that raised, by ``operation`` and
    ``error`` (the FedkubeError class, e.g. StateError, StoreError, ObjectNotFound;
    "other" for anything else)."""

    def __init__(self, registry: CollectorRegistry, labels: Mapping[str, str]) -> None:
        self.registry = registry
        self.labels = dict(labels)
        names = tuple(self.labels)
        self.state_seconds = Histogram(
            "fedkube_state_store_seconds",
            "Duration of state-store calls, by operation (the StateStore method).",
            (*names, "operation"),
            registry=registry,
            buckets=STORE_BUCKETS,
        )
        self.state_errors = Counter(
            "fedkube_state_store_errors_total",
            "State-store calls that raised, by operation and error class.",
            (*names, "operation", "error"),
            registry=registry,
        )
        self.object_seconds = Histogram(
            "fedkube_object_store_seconds",
            "Duration of object-store calls, by operation (the ObjectStore method).",
            (*names, "operation"),
            registry=registry,
            buckets=STORE_BUCKETS,
        )
        self.object_errors = Counter(
            "fedkube_object_store_errors_total",
            "Object-store calls that raised, by operation and error class.",
            (*names, "operation", "error"),
            registry=registry,
        )

    def state(self, store: StateStore) -> StateStore:
        """`store` with every StateStore call timed."""
        return timed(
            store,
            StateStore,
            seconds=self.state_seconds,
            errors=self.state_errors,
            labels=self.labels,
        )

    def objects(self, store: ObjectStore) -> ObjectStore:
        """`store` with every ObjectStore call timed."""
        return timed(
            store,
            ObjectStore,
            seconds=self.object_seconds,
            errors=self.object_errors,
            labels=self.labels,
        )
