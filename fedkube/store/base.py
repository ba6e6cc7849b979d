"""The ObjectStore interface. Pure module (no I/O here)."""

from __future__ import annotations

import abc
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from fedkube.model import (
    HEADER_PROBE,
    ModelHeader,
    check_size,
    header_length,
    parse_header,
)


def model_key(job: str, round: int) -> str:
    """Global model after `round` (round 0 is the seed)."""
    return f"jobs/{job}/models/{round:06d}.safetensors"


def update_key(job: str, round: int, attempt: int, client: str) -> str:
    return f"jobs/{job}/updates/{round:06d}/{attempt}/{client}.safetensors"


def partial_key(job: str, round: int, attempt: int, combiner: str) -> str:
    return f"jobs/{job}/partials/{round:06d}/{attempt}/{combiner}.safetensors"


def optimizer_key(job: str, round: int) -> str:
    """Server optimizer state after `round`."""
    return f"jobs/{job}/optimizer/{round:06d}.safetensors"


class ObjectReader(Protocol):
    """An object's bytes as a stream (`ObjectStore.open_read`): read them into a buffer
    of your own with `readinto` (0 at the end). `size` is the whole object's size."""

    size: int

    def readinto(self, buffer: memoryview, /) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> ObjectReader: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Reader(abc.ABC):
    """What the stores' readers share: `close`, and closing at the end of a `with`."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ObjectStore(abc.ABC):
    """Flat key -> bytes storage for model files.

    Keys are '/'-separated relative paths (no leading '/', no '..'). All methods
    raise fedkube.errors.StoreError (ObjectNotFound for a missing key).
    Files go in and out by path so large models stream instead of being held
    in memory.
    """

    #: a URI naming this store without credentials (for logs and status)
    uri: str

    @abc.abstractmethod
    def put_file(self, key: str, path: str | Path) -> None:
        """Upload a local file to `key` (overwrites)."""

    @abc.abstractmethod
    def get_file(self, key: str, path: str | Path) -> None:
        """Download `key` into a local file (written atomically)."""

    def put_bytes(self, key: str, data: bytes) -> None:
        import os
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix="fedkube-put-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self.put_file(key, tmp)
        finally:
            os.unlink(tmp)

    def get_bytes(self, key: str) -> bytes:
        import os
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix="fedkube-get-")
        os.close(fd)
        try:
            self.get_file(key, tmp)
            return Path(tmp).read_bytes()
        finally:
            os.unlink(tmp)

    @abc.abstractmethod
    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> ObjectReader:
        """A stream of the object's bytes from `offset` (`length` of them, or to the end),
        with no temporary file; ObjectNotFound if missing. Close it (or use `with`)."""

    @abc.abstractmethod
    def version(self, key: str) -> str:
        """A token that changes whenever the object is written again (S3: its ETag; a
        local file: size, mtime and inode); ObjectNotFound if missing."""

    def read_header(self, key: str, *, max_bytes: int | None = None) -> tuple[ModelHeader, int]:
        """The header of a safetensors object and the object's size, from ranged reads
        of its first bytes only (ModelFileError when it is not a valid model file)."""
        with self.open_read(key, 0, HEADER_PROBE) as r:
            size = r.size
            check_size(size, max_bytes)
            head = _read_upto(r, min(size, HEADER_PROBE))
        hlen = header_length(head[:8], size)
        if 8 + hlen > len(head):
            with self.open_read(key, len(head), 8 + hlen - len(head)) as r:
                head += _read_upto(r, 8 + hlen - len(head))
        return parse_header(head[8 : 8 + hlen], size), size

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes; ObjectNotFound if missing."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix`, sorted."""

    @abc.abstractmethod
    def presign_get(self, key: str, expires_seconds: int = 900) -> str:
        """A URL (or, for the local store, a file path) a client can read `key` from."""

    @abc.abstractmethod
    def presign_put(self, key: str, expires_seconds: int = 900) -> str:
        """A URL (or, for the local store, a file path) a client can write `key` to."""

    def local_path(self, key: str) -> Path | None:
        """The file behind `key` when the store is a local directory, else None."""
        return None

    def fetch(self, key: str, dest: str | Path) -> Path:
        """A local file with the object's bytes: the object itself in a local store
        (not copied; it may not exist), else `dest` after downloading it there.
        The caller removes `dest` when done."""
        local = self.local_path(key)
        if local is not None:
            return local
        self.get_file(key, dest)
        return Path(dest)


def _read_upto(reader: ObjectReader, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n and (k := reader.readinto(view[got:])):
        got += k
    return bytes(buf[:got])
