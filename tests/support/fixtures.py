"""Pytest fixtures for the real S3 and MongoDB test servers (see services.py).

Enabled for the whole suite by ``pytest_plugins = ["tests.support.fixtures"]``
in tests/conftest.py. A server that cannot start skips the tests that need it
(the message says how to get it); under ``CI=true`` it fails them instead,
with the reason and the server's log tail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

from tests.support.services import (
    MongoServer,
    S3Server,
    ServiceUnavailable,
    mongo_from_env,
    s3_from_env,
    start_mongo,
    start_s3,
)

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(exc: ServiceUnavailable) -> NoReturn:
    """Skip (fail under CI=true) a test whose server cannot start."""
    if CI:
        pytest.fail(f"test server unavailable under CI=true: {exc}\n(hint: {exc.hint})")
    pytest.skip(f"{exc.hint} ({str(exc).splitlines()[0]})")


def _report(config: pytest.Config, line: str) -> None:
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None and config.get_verbosity() > 0:
        tr.write_line(line)


@pytest.fixture(scope="session")
def s3_server(pytestconfig: pytest.Config) -> Iterator[S3Server]:
    """The session's S3 server: FEDKUBE_TEST_S3 if set, else a SeaweedFS started here."""
    try:
        server = s3_from_env() or start_s3()
    except ServiceUnavailable as exc:
        unavailable(exc)
    if server.process is not None:
        _report(pytestconfig, f"\nSeaweedFS S3 on {server.url} ({server.start_seconds:.1f}s)")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongo_server(pytestconfig: pytest.Config) -> Iterator[MongoServer]:
    """The session's MongoDB server: FEDKUBE_TEST_MONGODB if set, else FerretDB."""
    try:
        server = mongo_from_env() or start_mongo()
    except ServiceUnavailable as exc:
        unavailable(exc)
    if server.process is not None:
        _report(pytestconfig, f"\nFerretDB on {server.uri} ({server.start_seconds:.1f}s)")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh bucket name on the shared S3 server (not created); removed afterwards."""
    name = s3_server.new_bucket_name(request.node.name)
    try:
        yield name
    finally:
        s3_server.remove_bucket(name)


@pytest.fixture
def s3_store(s3_server: S3Server, s3_bucket: str) -> Any:
    """An S3ObjectStore on a fresh bucket of the shared S3 server."""
    return s3_server.store(s3_bucket)


@pytest.fixture
def mongo_database(mongo_server: MongoServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database name on the shared MongoDB server; dropped afterwards."""
    name = mongo_server.new_database_name(request.node.name)
    try:
        yield name
    finally:
        mongo_server.drop_database(name)


@pytest.fixture
def mongo_uri(mongo_server: MongoServer, mongo_database: str) -> str:
    """``mongodb://127.0.0.1:PORT/<fresh database>``: a --state URI for one test."""
    return mongo_server.database_uri(mongo_database)


@pytest.fixture
def private_s3_server() -> Iterator[S3Server]:
    """A SeaweedFS of this test's own (never FEDKUBE_TEST_S3), so the test may
    kill() / start() / restart() it. Stopped and its data removed afterwards."""
    try:
        server = start_s3()
    except ServiceUnavailable as exc:
        unavailable(exc)
    try:
        yield server
    finally:
        server.stop()
