"""Pytest fixtures for the real S3 and MongoDB test servers (fedkube/devenv/).

Enabled for the whole suite by ``pytest_plugins = ["tests.support.fixtures"]``
in tests/conftest.py::

    s3_server          session  S3Server: the shared SeaweedFS
    mongo_server       session  MongoServer: the shared FerretDB
    s3_bucket          function a fresh bucket name (not created; removed after)
    s3_store           function an S3ObjectStore on a fresh bucket
    mongo_database     function a fresh database name (dropped after)
    mongo_uri          function ``mongodb://127.0.0.1:PORT/<fresh database>``
    private_s3_server  function a SeaweedFS of the test's own, which it may
                                restart (``.restart()``) or kill (``.kill()``)

A test of a whole federation on the real backends, for example::

    def test_mnist_on_s3_and_mongo(s3_server, s3_bucket, mongo_uri):
        env = {**os.environ, **s3_server.env()}     # AWS_ACCESS_KEY_ID, ...
        subprocess.run(["fedkube", "run", "examples/mnist/job.yaml",
                        "--store", s3_server.uri(s3_bucket),
                        "--state", mongo_uri], env=env, check=True)

One that restarts S3 between rounds takes ``private_s3_server`` instead (the
shared server is never restarted) and calls its ``restart()`` -- SIGKILL,
then the same ports, credentials and data directory, back in ~3 s -- e.g.
from a thread that polls ``open_state_store(mongo_uri).last_committed_round``.

Reusing servers: with ``FEDKUBE_TEST_S3=http://HOST:PORT`` (credentials from
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``) and
``FEDKUBE_TEST_MONGODB=mongodb://HOST:PORT/`` the session fixtures use those
servers instead of starting their own. ``python scripts/services.py up`` runs
both servers in the foreground and prints these exports.

A server that cannot start skips the tests that need it (the message says how
to get it); under ``CI=true`` it fails them instead, with the reason and the
server's log tail.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import pytest

from fedkube.devenv.base import LocalServer
from fedkube.devenv.mongo import MongoServer, mongo_from_env, start_mongo
from fedkube.devenv.s3 import S3Server, s3_from_env, start_s3
from fedkube.errors import ServiceUnavailable

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

S = TypeVar("S", bound=LocalServer)


def unavailable(exc: ServiceUnavailable, what: str = "test server") -> NoReturn:
    """Skip (fail under CI=true) a test whose server (`what`) cannot start."""
    if CI:
        pytest.fail(f"{what} unavailable under CI=true: {exc}\n(hint: {exc.hint})")
    first = str(exc).splitlines()[0] if str(exc) else ""
    pytest.skip(f"{exc.hint} ({first})")


def report(config: pytest.Config, line: str) -> None:
    """Write `line` to the terminal when pytest runs verbosely (also from a fixture's
    setup, while output is captured: progress of a slow environment start)."""
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is None or config.get_verbosity() <= 0:
        return
    capman = config.pluginmanager.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        tr.write_line(line)


def scoped(name: str, cleanup: Callable[[str], None]) -> Iterator[str]:
    """The body of a fixture for a fresh name (bucket, database, namespace):
    yield `name`, then `cleanup(name)`."""
    try:
        yield name
    finally:
        cleanup(name)


def serve(get: Callable[[], S], started: Callable[[S], str] | None = None) -> Iterator[S]:
    """The body of a server fixture: yield `get()` (unavailable() when it
    raises ServiceUnavailable), stop it afterwards; `started(server)` is called
    for a server started here."""
    try:
        server = get()
    except ServiceUnavailable as exc:
        unavailable(exc)
    if server.process is not None and started is not None:
        started(server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(pytestconfig: pytest.Config) -> Iterator[S3Server]:
    """The session's S3 server: FEDKUBE_TEST_S3 if set, else a SeaweedFS started here."""
    yield from serve(
        lambda: s3_from_env() or start_s3(),
        lambda s: report(pytestconfig, f"\nSeaweedFS S3 on {s.url} ({s.start_seconds:.1f}s)"),
    )


@pytest.fixture(scope="session")
def mongo_server(pytestconfig: pytest.Config) -> Iterator[MongoServer]:
    """The session's MongoDB server: FEDKUBE_TEST_MONGODB if set, else FerretDB."""
    yield from serve(
        lambda: mongo_from_env() or start_mongo(),
        lambda s: report(pytestconfig, f"\nFerretDB on {s.uri} ({s.start_seconds:.1f}s)"),
    )


@pytest.fixture
def s3_bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh bucket name on the shared S3 server (not created); removed afterwards."""
    yield from scoped(s3_server.new_bucket_name(request.node.name), s3_server.remove_bucket)


@pytest.fixture
def s3_store(s3_server: S3Server, s3_bucket: str) -> Any:
    """An S3ObjectStore on a fresh bucket of the shared S3 server."""
    return s3_server.store(s3_bucket)


@pytest.fixture
def mongo_database(mongo_server: MongoServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database name on the shared MongoDB server; dropped afterwards."""
    yield from scoped(mongo_server.new_database_name(request.node.name), mongo_server.drop_database)


@pytest.fixture
def mongo_uri(mongo_server: MongoServer, mongo_database: str) -> str:
    """``mongodb://127.0.0.1:PORT/<fresh database>``: a --state URI for one test."""
    return mongo_server.database_uri(mongo_database)


@pytest.fixture
def private_s3_server() -> Iterator[S3Server]:
    """A SeaweedFS of this test's own (never FEDKUBE_TEST_S3), so the test may
    kill() / start() / restart() it. Stopped and its data removed afterwards."""
    yield from serve(start_s3)
