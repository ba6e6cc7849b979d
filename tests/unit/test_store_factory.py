"""URI parsing of open_object_store and open_state_store (no servers needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkube.errors import StateError, StoreError
from fedkube.state.factory import open_state_store
from fedkube.state.mongo import MongoStateStore, redact_mongo_uri
from fedkube.state.sqlite import SqliteStateStore
from fedkube.store.factory import open_object_store
from fedkube.store.local import LocalObjectStore
from fedkube.store.s3 import S3ObjectStore

ACCESS = "AKIAFEDKUBEEXAMPLE"
SECRET = "s3cr3t-VALUE-never-shown"


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)


@pytest.fixture
def no_s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)


# ---- object store: local


def test_file_uri_absolute(tmp_path: Path) -> None:
    s = open_object_store(f"file://{tmp_path}/objs", base_dir=Path("/elsewhere"))
    assert isinstance(s, LocalObjectStore)
    assert s.root == (tmp_path / "objs").resolve()
    assert s.uri == f"file://{s.root}"
    assert s.uri.startswith("file:///")


def test_file_uri_relative_to_base_dir(tmp_path: Path) -> None:
    s = open_object_store("file://rel/dir", base_dir=tmp_path)
    assert isinstance(s, LocalObjectStore)
    assert s.root == (tmp_path / "rel" / "dir").resolve()
    assert s.root.is_dir()


def test_plain_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = open_object_store("objs", base_dir=tmp_path)
    assert isinstance(s, LocalObjectStore)
    assert s.root == (tmp_path / "objs").resolve()
    s2 = open_object_store(str(tmp_path / "abs"), base_dir=Path("/ignored"))
    assert isinstance(s2, LocalObjectStore)
    assert s2.root == (tmp_path / "abs").resolve()
    monkeypatch.chdir(tmp_path)
    s3 = open_object_store("cwd-rel")  # no base_dir: the current directory
    assert isinstance(s3, LocalObjectStore)
    assert s3.root == (tmp_path / "cwd-rel").resolve()


def test_local_uri_roundtrips(tmp_path: Path) -> None:
    s = open_object_store("x", base_dir=tmp_path)
    s.put_bytes("k", b"v")
    again = open_object_store(s.uri)
    assert again.get_bytes("k") == b"v"


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("file://", "missing path"),
        ("file:///tmp/x?mode=1", "no query"),
        ("objs?x=1", "no query"),
        ("ftp://host/dir", "unknown scheme"),
        ("gs://bucket", "unknown scheme"),
    ],
)
def test_bad_object_store_uris(uri: str, why: str) -> None:
    with pytest.raises(StoreError, match=why) as ei:
        open_object_store(uri)
    assert repr(uri) in str(ei.value)


# ---- object store: s3


def test_s3_uri(s3_env: None) -> None:
    s = open_object_store("s3://models?endpoint=127.0.0.1:8333&secure=false&region=eu-1")
    assert isinstance(s, S3ObjectStore)
    assert (s.bucket, s.endpoint, s.secure, s.region) == ("models", "127.0.0.1:8333", False, "eu-1")
    assert s.public_endpoint is None
    assert s.uri == "s3://models?endpoint=127.0.0.1:8333&secure=false&region=eu-1"
    for text in (s.uri, repr(s), str(vars(s))):
        assert SECRET not in text
        assert ACCESS not in text


def test_s3_uri_defaults_and_public_endpoint(s3_env: None) -> None:
    s = open_object_store("s3://bkt?endpoint=minio:9000&public_endpoint=https://s3.example.com")
    assert isinstance(s, S3ObjectStore)
    assert s.secure is True
    assert s.region is None
    assert s.public_endpoint == "s3.example.com"
    assert s.uri == "s3://bkt?endpoint=minio:9000&public_endpoint=https://s3.example.com"
    # the store's uri opens an equal store
    again = open_object_store(s.uri)
    assert isinstance(again, S3ObjectStore)
    assert again.uri == s.uri


def test_s3_endpoint_scheme_decides_secure(s3_env: None) -> None:
    s = open_object_store("s3://bkt?endpoint=http://localhost:9000")
    assert isinstance(s, S3ObjectStore)
    assert (s.endpoint, s.secure) == ("localhost:9000", False)
    assert s.uri == "s3://bkt?endpoint=localhost:9000&secure=false"


def test_s3_presign_needs_no_network_with_public_endpoint_and_region(s3_env: None) -> None:
    # Port 9 on loopback is closed: presigning must not touch the network.
    s = open_object_store(
        "s3://bkt?endpoint=127.0.0.1:9&secure=false&region=us-east-1"
        "&public_endpoint=http://files.example.com:8080&create_bucket=false"
    )
    url = s.presign_get("jobs/j/models/000001.safetensors", expires_seconds=120)
    assert url.startswith("http://files.example.com:8080/bkt/jobs/j/models/000001.safetensors?")
    assert "X-Amz-Expires=120" in url
    assert "X-Amz-Signature=" in url
    assert SECRET not in url
    put = s.presign_put("jobs/j/updates/000001/1/c.safetensors")
    assert put.startswith("http://files.example.com:8080/bkt/jobs/j/updates/")
    with pytest.raises(StoreError, match="expiry"):
        s.presign_get("k", expires_seconds=0)


def test_s3_unreachable_endpoint_message(s3_env: None) -> None:
    from fedkube.store.s3 import S3ObjectStore as S3

    s = S3(
        "127.0.0.1:9",
        "bkt",
        access_key=ACCESS,
        secret_key=SECRET,
        secure=False,
        region="us-east-1",
        retries=1,
    )
    with pytest.raises(StoreError) as ei:
        s.exists("k")
    msg = str(ei.value)
    assert "cannot reach s3 endpoint 127.0.0.1:9" in msg
    assert SECRET not in msg


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("s3://", "missing bucket"),
        ("s3://?endpoint=h:1", "missing bucket"),
        ("s3://Bad_Bucket?endpoint=h:1", "bucket name"),
        ("s3://bkt/some/prefix?endpoint=h:1", "path after the bucket"),
        ("s3://bkt?endpoint=h:1&secure=maybe", "secure='maybe'"),
        ("s3://bkt?endpoint=h:1&colour=red", "unknown parameter 'colour'"),
        ("s3://bkt?endpoint=h:1&endpoint=h:2", "given twice"),
        ("s3://bkt?endpoint=", "empty endpoint"),
        ("s3://bkt?endpoint=h:1/path", "host"),
        ("s3://bkt?endpoint=ftp://h:1", "http or https"),
        ("s3://bkt?endpoint=https://h:1&secure=false", "contradicts"),
    ],
)
def test_bad_s3_uris(s3_env: None, uri: str, why: str) -> None:
    with pytest.raises(StoreError, match=why.replace("?", r"\?")) as ei:
        open_object_store(uri)
    assert SECRET not in str(ei.value)


def test_s3_credentials_in_uri_are_refused_and_not_echoed(s3_env: None) -> None:
    with pytest.raises(StoreError, match="AWS_ACCESS_KEY_ID") as ei:
        open_object_store("s3://user:hunter2@bkt?endpoint=h:1")
    assert "hunter2" not in str(ei.value)
    assert "bkt" in str(ei.value)


def test_s3_missing_credentials(no_s3_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = "s3://bkt?endpoint=h:1"
    with pytest.raises(StoreError) as ei:
        open_object_store(uri)
    msg = str(ei.value)
    assert "AWS_ACCESS_KEY_ID" in msg and "AWS_SECRET_ACCESS_KEY" in msg
    assert uri in msg
    # only the secret is set: the message names the missing id, never the secret
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with pytest.raises(StoreError) as ei:
        open_object_store(uri)
    msg = str(ei.value)
    assert "AWS_ACCESS_KEY_ID" in msg
    assert "set AWS_SECRET_ACCESS_KEY" not in msg
    assert SECRET not in msg
    # only the id is set
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    with pytest.raises(StoreError, match="AWS_SECRET_ACCESS_KEY") as ei:
        open_object_store(uri)
    assert ACCESS not in str(ei.value)


# ---- state store: sqlite


def test_sqlite_absolute_four_slashes(tmp_path: Path) -> None:
    path = tmp_path / "a" / "state.db"
    s = open_state_store(f"sqlite:///{path}", base_dir=Path("/ignored"))
    try:
        assert isinstance(s, SqliteStateStore)
        assert s.path == path.resolve()
        assert s.uri == f"sqlite:///{path.resolve()}"
        assert s.uri.startswith("sqlite:////")
        assert path.exists()
    finally:
        s.close()


def test_sqlite_relative_three_slashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = open_state_store("sqlite:///rel/state.db", base_dir=tmp_path)
    try:
        assert isinstance(s, SqliteStateStore)
        assert s.path == (tmp_path / "rel" / "state.db").resolve()
    finally:
        s.close()
    monkeypatch.chdir(tmp_path)
    s2 = open_state_store("sqlite:///cwd.db")
    try:
        assert isinstance(s2, SqliteStateStore)
        assert s2.path == (tmp_path / "cwd.db").resolve()
    finally:
        s2.close()


@pytest.mark.parametrize("name", ["state.db", "state.sqlite", "sub/state.sqlite3"])
def test_sqlite_plain_path(tmp_path: Path, name: str) -> None:
    s = open_state_store(name, base_dir=tmp_path)
    try:
        assert isinstance(s, SqliteStateStore)
        assert s.path == (tmp_path / name).resolve()
    finally:
        s.close()
    s2 = open_state_store(str(tmp_path / name))
    try:
        assert isinstance(s2, SqliteStateStore)
        assert s2.path == (tmp_path / name).resolve()
    finally:
        s2.close()


def test_sqlite_uri_roundtrips(tmp_path: Path) -> None:
    s = open_state_store("x.db", base_dir=tmp_path)
    s.create_job("j", {})
    s.close()
    again = open_state_store(s.uri, base_dir=Path("/ignored"))
    try:
        assert again.get_job("j") is not None
    finally:
        again.close()


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("", "empty"),
        ("sqlite://", "expected sqlite"),
        ("sqlite:///", "missing database file path"),
        ("sqlite:////", "missing database file path"),
        ("sqlite://host/state.db", "host part"),
        ("sqlite:///state.db?mode=ro", "no query"),
        ("sqlite:///:memory:", "in-memory"),
        ("state.txt", "must end in"),
        ("postgres://h/db", "unknown scheme"),
        ("mongodb://", "missing host"),
        ("mongodb://h:27017/bad.name", "invalid database name"),
    ],
)
def test_bad_state_store_uris(uri: str, why: str) -> None:
    with pytest.raises(StateError, match=why) as ei:
        open_state_store(uri)
    assert repr(uri.strip()) in str(ei.value)


def test_bad_state_uri_hides_password() -> None:
    with pytest.raises(StateError) as ei:
        open_state_store("postgres://admin:hunter2@db:5432/x")
    assert "hunter2" not in str(ei.value)
    assert "db:5432" in str(ei.value)
    with pytest.raises(StateError) as ei:
        open_state_store("mongodb://admin:hunter2@h:1/bad.name")
    assert "hunter2" not in str(ei.value)


# ---- state store: mongo (parsing only; nothing connects until the first call)


def test_mongo_uri_database_and_redaction() -> None:
    s = open_state_store("mongodb://admin:hunter2@127.0.0.1:27017/fl?authSource=admin")
    try:
        assert isinstance(s, MongoStateStore)
        assert s.database == "fl"
        assert s.uri == "mongodb://127.0.0.1:27017/fl?authSource=admin"
        assert "hunter2" not in repr(s)
    finally:
        s.close()
    s2 = open_state_store("mongodb://h1:1,h2:2/?replicaSet=rs0")
    try:
        assert isinstance(s2, MongoStateStore)
        assert s2.database == "fedkube"
        assert s2.uri == "mongodb://h1:1,h2:2/?replicaSet=rs0"
    finally:
        s2.close()
    s3 = open_state_store("mongodb://localhost")
    try:
        assert isinstance(s3, MongoStateStore)
        assert s3.database == "fedkube"
    finally:
        s3.close()


def test_redact_mongo_uri_drops_secret_options() -> None:
    uri = (
        "mongodb://u:p%40ss@h:1/db?tls=true&tlsCertificateKeyFilePassword=pw1"
        "&authMechanismProperties=AWS_SESSION_TOKEN:tok"
    )
    red = redact_mongo_uri(uri)
    assert red == "mongodb://h:1/db?tls=true"
    for secret in ("p%40ss", "pw1", "tok"):
        assert secret not in red
