"""store_uri / state_uri: where a job's bytes and state live."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from fedkube.errors import SpecError
from fedkube.settings import state_uri, store_uri
from fedkube.spec import FederatedJob, parse_job
from fedkube.state import open_state_store


def job(**spec: Any) -> FederatedJob:
    return parse_job({"metadata": {"name": "demo"}, "spec": {"rounds": 1, **spec}})


# ---------------------------------------------------------------- store_uri


def test_store_default_is_a_directory_under_the_workdir(tmp_path: Path) -> None:
    assert store_uri(job(), tmp_path) == f"file://{(tmp_path / 'store').resolve()}"


def test_store_relative_workdir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert store_uri(job(), Path(".fedkube")) == f"file://{tmp_path.resolve()}/.fedkube/store"


def test_store_local_path_from_the_spec(tmp_path: Path) -> None:
    rel = job(storage={"local": {"path": "objs/x"}})
    assert store_uri(rel, tmp_path) == f"file://{(tmp_path / 'objs' / 'x').resolve()}"
    absolute = job(storage={"local": {"path": "/srv/fedkube"}})
    assert store_uri(absolute, tmp_path) == "file:///srv/fedkube"


def test_store_override_wins(tmp_path: Path) -> None:
    s3 = job(storage={"s3": {"endpoint": "minio:9000", "bucket": "b"}})
    assert store_uri(s3, tmp_path, "file:///elsewhere") == "file:///elsewhere"
    assert store_uri(job(), tmp_path, "s3://x?endpoint=h:1") == "s3://x?endpoint=h:1"


def test_store_s3_spec_gives_an_s3_uri_without_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-in-a-uri")
    j = job(
        storage={
            "s3": {
                "endpoint": "minio.example:9000",
                "bucket": "fl-models",
                "region": "eu-west-1",
                "secure": False,
                "publicEndpoint": "https://files.example",
                "credentialsSecret": "minio-creds",
            }
        }
    )
    uri = store_uri(j, tmp_path)
    parts = urlsplit(uri)
    assert parts.scheme == "s3"
    assert parts.netloc == "fl-models"
    assert parse_qs(parts.query) == {
        "endpoint": ["minio.example:9000"],
        "secure": ["false"],
        "region": ["eu-west-1"],
        "public_endpoint": ["https://files.example"],
    }
    for secret in ("AKIAEXAMPLE", "never-in-a-uri", "minio-creds", "@"):
        assert secret not in uri


def test_store_s3_minimal(tmp_path: Path) -> None:
    j = job(storage={"s3": {"endpoint": "s3.amazonaws.com", "bucket": "b"}})
    assert store_uri(j, tmp_path) == "s3://b?endpoint=s3.amazonaws.com&secure=true"


# ---------------------------------------------------------------- state_uri


def test_state_default_is_sqlite_under_the_workdir(tmp_path: Path) -> None:
    expected = f"sqlite:///{(tmp_path / 'state.db').resolve()}"
    assert state_uri(job(), tmp_path) == expected
    assert state_uri(None, tmp_path) == expected
    assert expected.startswith("sqlite:////")  # absolute path: four slashes


def test_state_default_uri_opens_the_file_in_the_workdir(tmp_path: Path) -> None:
    store = open_state_store(state_uri(job(), tmp_path))
    try:
        assert (tmp_path / "state.db").exists()
        assert store.uri == state_uri(job(), tmp_path)
    finally:
        store.close()


def test_state_sqlite_path_from_the_spec(tmp_path: Path) -> None:
    j = job(stateStore={"sqlite": {"path": "db/fl.sqlite"}})
    assert state_uri(j, tmp_path) == f"sqlite:///{(tmp_path / 'db' / 'fl.sqlite').resolve()}"


def test_state_override_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDKUBE_MONGODB_URI", raising=False)
    mongo = job(stateStore={"mongodb": {}})
    # The override wins even where the spec alone would fail (no env var).
    assert state_uri(mongo, tmp_path, "sqlite:////x/s.db") == "sqlite:////x/s.db"
    assert state_uri(None, tmp_path, "mongodb://h/db") == "mongodb://h/db"


def test_state_mongodb_uri_from_the_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDKUBE_MONGODB_URI", "mongodb://u:p@mongo:27017/fl")
    assert state_uri(job(stateStore={"mongodb": {}}), tmp_path) == "mongodb://u:p@mongo:27017/fl"
    monkeypatch.setenv("MY_MONGO", "mongodb://other/fl")
    j = job(stateStore={"mongodb": {"uriEnv": "MY_MONGO"}})
    assert state_uri(j, tmp_path) == "mongodb://other/fl"


@pytest.mark.parametrize("value", [None, ""])
def test_state_mongodb_without_the_env_var_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("MY_MONGO_URI", raising=False)
    else:
        monkeypatch.setenv("MY_MONGO_URI", value)
    j = job(stateStore={"mongodb": {"uriEnv": "MY_MONGO_URI"}})
    with pytest.raises(SpecError, match=r"\$MY_MONGO_URI") as info:
        state_uri(j, tmp_path)
    assert "spec.stateStore.mongodb" in str(info.value)
    assert "--state" in str(info.value)
