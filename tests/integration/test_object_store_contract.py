"""The ObjectStore contract, run on every backend: the same test functions on
LocalObjectStore ("local") and S3ObjectStore on a real SeaweedFS ("s3", with
S3 authentication on; see fedkube/devenv/).

Each backend is a function in BACKENDS taking (request, tmp_path) and yielding
an open store on fresh, empty storage (a new directory; a new bucket, created
by the store itself and removed afterwards); the `store` fixture is
parametrized over BACKEND_PARAMS. Tests that only make sense for one backend
take a `local_store` fixture instead of `store` (never skip per backend: under
CI=true a skip fails the run).
"""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fedkube.devenv.s3 import S3Server
from fedkube.errors import ObjectNotFound, StoreError
from fedkube.store.base import ObjectStore, model_key, partial_key, update_key
from fedkube.store.local import TMP_PREFIX, LocalObjectStore


def _local(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    yield LocalObjectStore(tmp_path / "objects")


def _s3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.new_bucket_name(request.node.name)
    try:
        yield server.store(bucket)  # the store creates the bucket on first use
    finally:
        server.remove_bucket(bucket)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Iterator[ObjectStore]]] = {
    "local": _local,
    "s3": _s3,
}
BACKEND_PARAMS = ["local", "s3"]


@pytest.fixture(params=BACKEND_PARAMS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    yield from BACKENDS[request.param](request, tmp_path)


@pytest.fixture
def src(tmp_path: Path) -> Callable[[bytes], Path]:
    """Write bytes to a fresh local file and return its path."""
    counter = iter(range(1_000_000))

    def make(data: bytes) -> Path:
        p = tmp_path / "src" / f"f{next(counter)}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        return p

    return make


def _fetch(url: str) -> bytes:
    """Read a presigned GET: an http(s) URL or (local store) a file path."""
    if url.startswith(("http://", "https://")):
        with urllib.request.urlopen(url, timeout=30) as resp:
            data: bytes = resp.read()
            return data
    return Path(url).read_bytes()


def _upload(url: str, data: bytes) -> None:
    """Write through a presigned PUT: an http(s) URL or (local store) a file path."""
    if url.startswith(("http://", "https://")):
        req = urllib.request.Request(url, data=data, method="PUT")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status in (200, 204)
        return
    Path(url).write_bytes(data)


def _no_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TMP_PREFIX)]


# ---- put / get


def test_put_get_roundtrip(
    store: ObjectStore, src: Callable[[bytes], Path], tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    key = model_key("job1", 3)
    store.put_file(key, src(data))
    out = tmp_path / "out" / "nested" / "m.safetensors"  # parents are created
    store.get_file(key, out)
    assert out.read_bytes() == data
    assert store.get_bytes(key) == data
    assert store.exists(key)
    assert store.size(key) == len(data)


def test_put_overwrites(store: ObjectStore) -> None:
    store.put_bytes("a/b", b"first")
    store.put_bytes("a/b", b"second, longer")
    assert store.get_bytes("a/b") == b"second, longer"
    assert store.size("a/b") == len(b"second, longer")
    assert store.list("a/") == ["a/b"]


def test_empty_object(store: ObjectStore) -> None:
    store.put_bytes("empty", b"")
    assert store.exists("empty")
    assert store.size("empty") == 0
    assert store.get_bytes("empty") == b""


def test_put_does_not_alias_source(
    store: ObjectStore, src: Callable[[bytes], Path], tmp_path: Path
) -> None:
    path = src(b"original")
    store.put_file("k", path)
    path.write_bytes(b"changed afterwards")  # no hard link: the object keeps its bytes
    assert store.get_bytes("k") == b"original"


def test_put_missing_source_is_store_error(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError) as ei:
        store.put_file("k", tmp_path / "does-not-exist.bin")
    assert not isinstance(ei.value, ObjectNotFound)
    assert "'k'" in str(ei.value)
    assert not store.exists("k")


def test_get_writes_destination_atomically_and_keeps_it_on_error(
    store: ObjectStore, tmp_path: Path
) -> None:
    dest = tmp_path / "dl" / "model.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"previous")
    with pytest.raises(ObjectNotFound):
        store.get_file("missing/key", dest)
    assert dest.read_bytes() == b"previous"
    assert _no_temp_files(dest.parent) == []
    store.put_bytes("present", b"new")
    store.get_file("present", dest)
    assert dest.read_bytes() == b"new"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.bin"]


# ---- missing objects


def test_missing_object(store: ObjectStore, tmp_path: Path) -> None:
    key = "jobs/x/models/000001.safetensors"
    assert not store.exists(key)
    for call in (
        lambda: store.get_file(key, tmp_path / "o"),
        lambda: store.get_bytes(key),
        lambda: store.size(key),
    ):
        with pytest.raises(ObjectNotFound) as ei:
            call()
        assert key in str(ei.value)
        assert isinstance(ei.value, StoreError)
        assert isinstance(ei.value, KeyError)
    store.delete(key)  # deleting a missing key is not an error
    assert not (tmp_path / "o").exists()


def test_delete(store: ObjectStore) -> None:
    store.put_bytes("d/1", b"x")
    store.put_bytes("d/2", b"y")
    store.delete("d/1")
    assert not store.exists("d/1")
    assert store.exists("d/2")
    assert store.list("d/") == ["d/2"]
    store.delete("d/1")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("d/1")


# ---- list


def test_list_sorted_with_string_prefix(store: ObjectStore) -> None:
    keys = [
        update_key("a", 2, 1, "c2"),
        update_key("a", 1, 1, "c9"),
        update_key("a", 1, 1, "c10"),
        partial_key("a", 1, 1, "comb"),
        model_key("a", 1),
        model_key("ab", 1),
        "top",
    ]
    for k in keys:
        store.put_bytes(k, k.encode())
    assert store.list() == sorted(keys)
    assert store.list("") == sorted(keys)
    assert store.list("jobs/a/") == sorted(k for k in keys if k.startswith("jobs/a/"))
    # a prefix is a string prefix, not a directory: "jobs/a" also matches "jobs/ab/..."
    assert store.list("jobs/a") == sorted(k for k in keys if k.startswith("jobs/a"))
    assert model_key("ab", 1) in store.list("jobs/a")
    assert store.list("jobs/a/updates/000001/1/c1") == [
        update_key("a", 1, 1, "c10"),
    ]
    assert store.list("jobs/a/updates/000001/") == sorted(
        [update_key("a", 1, 1, "c10"), update_key("a", 1, 1, "c9")]
    )
    assert store.list("nothing/here/") == []
    assert store.list("t") == ["top"]


# ---- keys


BAD_KEYS = ["", "/abs/key", "a/../b", "..", "a//b", "a/", "./a", "a/./b", "a\x00b"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_rejected(store: ObjectStore, key: str, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    calls: list[Callable[[], object]] = [
        lambda: store.put_file(key, f),
        lambda: store.get_file(key, tmp_path / "o"),
        lambda: store.put_bytes(key, b"x"),
        lambda: store.get_bytes(key),
        lambda: store.delete(key),
        lambda: store.exists(key),
        lambda: store.size(key),
        lambda: store.presign_get(key),
        lambda: store.presign_put(key),
    ]
    for call in calls:
        with pytest.raises(StoreError) as ei:
            call()
        assert not isinstance(ei.value, ObjectNotFound)
        assert repr(key) in str(ei.value)
    assert store.list() == []


@pytest.mark.parametrize("prefix", ["/abs", "a/../", "..", "a//"])
def test_bad_list_prefix(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(StoreError, match="prefix"):
        store.list(prefix)


def test_unusual_but_valid_keys(store: ObjectStore) -> None:
    keys = ["a b/c d", "x/.hidden", "unicodé/ключ", "a..b/c..", "k-1_2.3"]
    for k in keys:
        store.put_bytes(k, k.encode())
    for k in keys:
        assert store.get_bytes(k) == k.encode()
    assert store.list() == sorted(keys)


# ---- presign


def test_presign_put_then_get(store: ObjectStore) -> None:
    key = update_key("j", 1, 1, "client-a")
    put_url = store.presign_put(key, expires_seconds=60)
    _upload(put_url, b"update bytes")
    assert store.exists(key)
    assert store.get_bytes(key) == b"update bytes"
    get_url = store.presign_get(key, expires_seconds=60)
    assert _fetch(get_url) == b"update bytes"


def test_presign_get_reads_put_file(store: ObjectStore, src: Callable[[bytes], Path]) -> None:
    data = os.urandom(10_000)
    store.put_file("m/1", src(data))
    assert _fetch(store.presign_get("m/1")) == data


# ---- concurrency


def test_concurrent_writers_and_readers_see_whole_objects(store: ObjectStore) -> None:
    size = 256 * 1024
    versions = [bytes([i]) * size for i in range(6)]
    digests = {hashlib.sha256(v).hexdigest() for v in versions}
    store.put_bytes("hot", versions[0])
    errors: list[BaseException] = []
    seen: list[str] = []
    stop = threading.Event()

    def writer(i: int) -> None:
        try:
            for _ in range(5):
                store.put_bytes("hot", versions[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                seen.append(hashlib.sha256(store.get_bytes("hot")).hexdigest())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(len(versions))]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert seen, "readers never ran"
    assert set(seen) <= digests  # never a torn or partial object
    assert hashlib.sha256(store.get_bytes("hot")).hexdigest() in digests
    assert store.list() == ["hot"]


# ---- local-store specifics (only where the store is a directory; not
# parametrized: a skip per other backend would fail the run under CI=true)


@pytest.fixture
def local_store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def test_local_path_and_uri(local_store: LocalObjectStore) -> None:
    store = local_store
    store.put_bytes("a/b/c", b"data")
    p = store.local_path("a/b/c")
    assert p is not None
    assert p == store.root / "a" / "b" / "c"
    assert p.read_bytes() == b"data"
    assert store.uri == f"file://{store.root}"
    assert store.root.is_absolute()
    assert store.presign_get("a/b/c") == str(p)
    put_path = Path(store.presign_put("new/dir/obj"))
    assert put_path.is_absolute()
    assert put_path.parent.is_dir()  # a client can write there directly
    assert put_path == store.root / "new" / "dir" / "obj"
    assert _no_temp_files(store.root) == []


def test_local_temp_files_are_never_listed(local_store: LocalObjectStore) -> None:
    store = local_store
    store.put_bytes("d/real", b"x")
    (store.root / "d" / f"{TMP_PREFIX}leftover").write_bytes(b"partial")
    assert store.list() == ["d/real"]
    with pytest.raises(StoreError, match="reserved"):
        store.put_bytes(f"d/{TMP_PREFIX}x", b"x")


def test_local_key_that_is_also_a_prefix(local_store: LocalObjectStore) -> None:
    store = local_store  # (S3 allows a key that is also a prefix)
    store.put_bytes("a/b", b"file")
    with pytest.raises(StoreError, match="'a/b/c'"):
        store.put_bytes("a/b/c", b"x")
    store.put_bytes("x/y/z", b"deep")
    with pytest.raises(StoreError, match="'x/y'"):
        store.put_bytes("x/y", b"x")
    assert store.get_bytes("a/b") == b"file"
    assert store.get_bytes("x/y/z") == b"deep"
    assert not store.exists("x/y")  # a directory is not an object


def test_local_root_is_created_and_reopened(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "root"
    s1 = LocalObjectStore(root)
    s1.put_bytes("k", b"v")
    s2 = LocalObjectStore(str(root))
    assert s2.get_bytes("k") == b"v"
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreError, match="file"):
        LocalObjectStore(tmp_path / "file")


def test_local_relative_root_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = LocalObjectStore("rel/objs")
    assert s.root == (tmp_path / "rel" / "objs").resolve()
    assert s.uri == f"file://{s.root}"
    s.put_bytes("x", b"1")
    assert (tmp_path / "rel" / "objs" / "x").read_bytes() == b"1"


# ---- streaming reads, versions and model headers (the combiner's one-pass path)


def _read_all(store: ObjectStore, key: str, offset: int = 0, length: int | None = None) -> bytes:
    out = bytearray()
    buf = bytearray(7)  # an odd, small buffer: many short reads
    with store.open_read(key, offset, length) as r:
        size = r.size
        while n := r.readinto(memoryview(buf)):
            out += buf[:n]
    assert size == store.size(key)
    return bytes(out)


def test_open_read_streams_whole_and_ranged(store: ObjectStore) -> None:
    data = os.urandom(100_003)
    store.put_bytes("a/obj", data)
    assert _read_all(store, "a/obj") == data
    assert _read_all(store, "a/obj", 5) == data[5:]
    assert _read_all(store, "a/obj", 99_990, 10) == data[99_990:100_000]
    assert _read_all(store, "a/obj", 100_000, 1000) == data[100_000:]  # past the end: the rest
    with pytest.raises(ObjectNotFound):
        store.open_read("a/missing")


def test_version_changes_when_the_object_is_written_again(store: ObjectStore) -> None:
    store.put_bytes("v/obj", b"one")
    first = store.version("v/obj")
    assert store.version("v/obj") == first
    store.put_bytes("v/obj", b"two")
    assert store.version("v/obj") != first
    with pytest.raises(ObjectNotFound):
        store.version("v/missing")


@pytest.mark.parametrize("n_tensors", [3, 3000])  # 3000 names: a header over HEADER_PROBE
def test_read_header_reads_only_the_header(
    store: ObjectStore, tmp_path: Path, n_tensors: int
) -> None:
    import numpy as np

    from fedkube.model import HEADER_PROBE, read_header, save_model

    tensors = {
        f"layer.{i:05d}.weight_with_a_long_name": np.full(4, i, np.float32)
        for i in range(n_tensors)
    }
    path = tmp_path / "m.safetensors"
    save_model(path, tensors)
    store.put_file("m/model", path)
    header, size = store.read_header("m/model")
    assert (header, size) == (read_header(path), path.stat().st_size)
    assert (header.data_offset > HEADER_PROBE) == (n_tensors == 3000)
