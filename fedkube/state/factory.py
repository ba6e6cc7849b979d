"""open_state_store: a StateStore from a URI.

Accepted forms (the SQLite ones follow SQLAlchemy's rule: what follows
``sqlite:///`` is the path, so an absolute path gives four slashes):

- ``sqlite:////abs/path/state.db`` -- an absolute SQLite file;
- ``sqlite:///rel/path/state.db`` -- a SQLite file relative to `base_dir`
  (the current directory when `base_dir` is None);
- a plain path ending in ``.db``, ``.sqlite`` or ``.sqlite3`` (absolute, or
  relative as above; ``~`` is expanded);
- ``mongodb://[user:pass@]host[:port][,host...]/[database][?options]`` and
  ``mongodb+srv://...`` -- MongoDB (or FerretDB); the database comes from the
  URI path, default ``fedkube``.

SqliteStateStore.uri is ``sqlite:///`` + the absolute path, i.e. the
four-slash form, so a store's ``uri`` opens the same store again. A bad URI
raises StateError naming the URI (credentials removed) and what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from fedkube.errors import StateError
from fedkube.state.base import DEFAULT_DATABASE, StateStore

SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_BAD_DB_CHARS = set('/\\. "$\x00')


def _resolve(raw: str, base_dir: Path | None) -> Path:
    p = Path(raw).expanduser()
    if not p.is_absolute():
        p = (base_dir if base_dir is not None else Path.cwd()) / p
    return p


def _open_sqlite(path: Path) -> StateStore:
    from fedkube.state.sqlite import SqliteStateStore

    return SqliteStateStore(path)


def _open_mongo(uri: str) -> StateStore:
    from fedkube.state.mongo import MongoStateStore, redact_mongo_uri

    shown = redact_mongo_uri(uri)
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise StateError(f"bad state store URI {shown!r}: {exc}") from exc
    hosts = parts.netloc.rsplit("@", 1)[-1]
    if not hosts:
        raise StateError(f"bad state store URI {shown!r}: missing host (mongodb://HOST:PORT/DB)")
    database = unquote(parts.path.lstrip("/")) or DEFAULT_DATABASE
    if _BAD_DB_CHARS & set(database):
        raise StateError(f"bad state store URI {shown!r}: invalid database name {database!r}")
    return MongoStateStore(uri, database=database)


def open_state_store(uri: str, *, base_dir: Path | None = None) -> StateStore:
    """Open the state store named by `uri` (see the module docstring for forms)."""
    if not isinstance(uri, str) or not uri.strip():
        raise StateError(f"bad state store URI {uri!r}: empty")
    uri = uri.strip()
    if "://" not in uri:
        if uri.lower().endswith(SQLITE_SUFFIXES):
            return _open_sqlite(_resolve(uri, base_dir))
        raise StateError(
            f"bad state store URI {uri!r}: a plain path must end in "
            f"{', '.join(SQLITE_SUFFIXES)} (or use sqlite:///PATH or mongodb://HOST/DB)"
        )
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "sqlite":
        rest = uri.split("://", 1)[1]
        if not rest.startswith("/"):
            raise StateError(
                f"bad state store URI {uri!r}: expected sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db (a host part is not allowed)"
            )
        raw = rest[1:]
        if not raw or raw.endswith("/"):
            raise StateError(f"bad state store URI {uri!r}: missing database file path")
        if "?" in raw or "#" in raw:
            raise StateError(f"bad state store URI {uri!r}: sqlite URIs take no query")
        if raw == ":memory:":
            raise StateError(
                f"bad state store URI {uri!r}: in-memory databases cannot be shared "
                "between processes; use a file"
            )
        return _open_sqlite(_resolve(raw, base_dir))
    if scheme in ("mongodb", "mongodb+srv"):
        return _open_mongo(uri)
    shown = uri
    if "@" in uri:
        from fedkube.state.mongo import redact_mongo_uri

        shown = redact_mongo_uri(uri)
    raise StateError(
        f"bad state store URI {shown!r}: unknown scheme {scheme!r} "
        "(use sqlite:///PATH, a .db path, or mongodb://HOST/DB)"
    )
