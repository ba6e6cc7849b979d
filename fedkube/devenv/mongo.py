"""A real MongoDB wire-protocol server on loopback: FerretDB over SQLite. I/O side.

FerretDB v1.24 with its SQLite handler, built once with Go by
``scripts/build_ferretdb.sh`` into ``~/.cache/fedkube/bin/ferretdb``
(``scripts/test.sh`` runs that step; a plain ``go install`` of that version
panics). pymongo talks to it as to MongoDB. It starts in about a second and
keeps its data in a temporary directory that stop() removes.

``start_mongo()`` returns a MongoServer (``.stop()`` it)::

    MongoServer  .uri (mongodb://host:port/)  .database_uri(db) (--state)
                 .new_database_name()  .drop_database(db)  .client() -> MongoClient

``mongo_from_env()`` describes the server named by
``FEDKUBE_TEST_MONGODB=mongodb://HOST:PORT/``, which the test fixtures use
instead of starting their own; ``python scripts/services.py up`` prints that
export.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fedkube.devenv.base import (
    START_TIMEOUT,
    LocalServer,
    cache_dir,
    find_binary,
    start_on_free_ports,
)
from fedkube.errors import ServiceUnavailable
from fedkube.process import ChildProcess, free_ports

#: FerretDB version scripts/build_ferretdb.sh builds
FERRETDB_VERSION = "v1.24.2"
MONGO_HINT = (
    "the MongoDB tests need FerretDB: run scripts/build_ferretdb.sh (needs Go), or point "
    "FEDKUBE_TEST_MONGODB at a running server"
)


def find_ferretdb() -> Path | None:
    """The `ferretdb` binary: $FEDKUBE_FERRETDB, the build cache, or on PATH."""
    return find_binary("FEDKUBE_FERRETDB", cache_dir() / "bin" / "ferretdb")


@dataclass
class MongoServer(LocalServer):
    """A MongoDB wire-protocol server. `process` is None for an external one."""

    uri: str  #: mongodb://host:port/ (no database)
    _databases: set[str] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"MongoDB server {self.uri}"

    def database_uri(self, database: str) -> str:
        """`uri` with `database` as its path (options kept)."""
        p = urlsplit(self.uri)
        return urlunsplit((p.scheme, p.netloc, "/" + database, p.query, ""))

    def new_database_name(self, hint: str = "t") -> str:
        """A unique database name (created on first write); drop_database() cleans it."""
        stem = "".join(c for c in hint.lower() if c.isalnum())[:20] or "t"
        name = f"fk_{stem}_{secrets.token_hex(5)}"
        self._databases.add(name)
        return name

    def client(self, **kwargs: Any) -> Any:
        """A pymongo.MongoClient (close it)."""
        from pymongo import MongoClient

        kwargs.setdefault("serverSelectionTimeoutMS", 5000)
        return MongoClient(self.uri, **kwargs)

    def drop_database(self, database: str) -> None:
        self._databases.discard(database)
        c = self.client()
        try:
            c.drop_database(database)
        finally:
            c.close()

    def _probe(self) -> bool:
        c = self.client(serverSelectionTimeoutMS=500, connectTimeoutMS=500)
        try:
            c.admin.command("ping")
        finally:
            c.close()
        return True

    def _clean_external(self) -> None:
        for d in list(self._databases):
            with contextlib.suppress(Exception):
                self.drop_database(d)


def ferretdb_argv(ferretdb: Path, tmp: Path, port: int) -> list[str]:
    """FerretDB with the SQLite handler in tmp/data, on 127.0.0.1:`port`,
    telemetry and the debug (metrics/pprof) listener off."""
    return [
        str(ferretdb),
        "--handler=sqlite",
        f"--sqlite-url=file:{tmp / 'data'}/",
        f"--listen-addr=127.0.0.1:{port}",
        f"--state-dir={tmp}",
        "--telemetry=disable",
        "--debug-addr=-",  # no metrics/pprof HTTP listener
        "--log-level=warn",
    ]


def _new_mongo_server(ferretdb: Path) -> MongoServer:
    """A FerretDB on a new free port in a new temporary directory (not started)."""
    tmp = Path(tempfile.mkdtemp(prefix="fedkube-mongo-"))
    (tmp / "data").mkdir()
    (port,) = free_ports(1)
    argv = ferretdb_argv(ferretdb, tmp, port)
    proc = ChildProcess("FerretDB", argv, tmp / "ferretdb.log", cwd=tmp, hint=MONGO_HINT)
    return MongoServer(f"mongodb://127.0.0.1:{port}/", process=proc, tmpdir=tmp)


def start_mongo(*, timeout: float = START_TIMEOUT, attempts: int = 3) -> MongoServer:
    """Start FerretDB (SQLite handler, telemetry and debug listener off) on a free
    loopback port. Raises ServiceUnavailable (with the log tail) when it cannot."""
    ferretdb = find_ferretdb()
    if ferretdb is None or not os.access(ferretdb, os.X_OK):
        where = ferretdb or f"not in {cache_dir() / 'bin'} nor on PATH"
        raise ServiceUnavailable(f"FerretDB binary not found ({where})", MONGO_HINT)
    return start_on_free_ports(
        lambda: _new_mongo_server(ferretdb), timeout=timeout, attempts=attempts
    )


def mongo_from_env() -> MongoServer | None:
    """The server named by FEDKUBE_TEST_MONGODB (``mongodb://host:port/``), if set."""
    uri = os.environ.get("FEDKUBE_TEST_MONGODB", "").strip()
    if not uri:
        return None
    if not uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ServiceUnavailable(
            f"FEDKUBE_TEST_MONGODB={uri!r} is not a mongodb:// URI", MONGO_HINT
        )
    return MongoServer(uri)
