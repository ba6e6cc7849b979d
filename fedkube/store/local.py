"""LocalObjectStore: a directory on the local file system (the embedded default).

Objects are plain files under `root` at the key's relative path. Writes go to
a temporary file in the same directory and are renamed into place with
``os.replace``, so a reader sees either the old or the new object, never a
partial one. Temporary files are named ``.fedkube-tmp-*`` and never listed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from io import FileIO
from pathlib import Path

from fedkube.errors import ObjectNotFound, StoreError
from fedkube.store.base import ObjectStore, Reader

#: prefix of in-flight temporary files (never a valid key part)
TMP_PREFIX = ".fedkube-tmp-"


def validate_key(key: str) -> str:
    """Return `key` if it is a valid object key, else raise StoreError naming it.

    A key is a '/'-separated relative path: not empty, no leading '/', no
    empty, '.' or '..' parts, no NUL byte, and no part starting with
    ``.fedkube-tmp-`` (reserved for in-flight writes of the local store).
    """
    if not isinstance(key, str):
        raise StoreError(f"invalid object key {key!r}: must be a string")
    if not key:
        raise StoreError("invalid object key '': must not be empty")
    if key.startswith("/"):
        raise StoreError(f"invalid object key {key!r}: must not start with '/'")
    if "\x00" in key:
        raise StoreError(f"invalid object key {key!r}: must not contain a NUL byte")
    for part in key.split("/"):
        if part == "":
            raise StoreError(f"invalid object key {key!r}: empty path part")
        if part in (".", ".."):
            raise StoreError(f"invalid object key {key!r}: '{part}' path part")
        if part.startswith(TMP_PREFIX):
            raise StoreError(f"invalid object key {key!r}: '{TMP_PREFIX}' names are reserved")
    return key


def validate_prefix(prefix: str) -> str:
    """Like validate_key but '' and a trailing '/' are allowed (list prefixes)."""
    if not isinstance(prefix, str):
        raise StoreError(f"invalid key prefix {prefix!r}: must be a string")
    if prefix == "":
        return prefix
    if prefix.startswith("/"):
        raise StoreError(f"invalid key prefix {prefix!r}: must not start with '/'")
    if "\x00" in prefix:
        raise StoreError(f"invalid key prefix {prefix!r}: must not contain a NUL byte")
    parts = prefix.split("/")
    # The last part may be partial ("jobs/a" matches "jobs/ab/...") or empty.
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "" and not last:
            raise StoreError(f"invalid key prefix {prefix!r}: empty path part")
        if part == ".." or (part == "." and not last):
            raise StoreError(f"invalid key prefix {prefix!r}: '{part}' path part")
    return prefix


def _tmp_name() -> str:
    return f"{TMP_PREFIX}{uuid.uuid4().hex}"


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy `src` to `dest` through a temp file in dest's directory + os.replace.

    The copy is a real copy (shutil.copyfile, no hard link), fsynced before the
    rename so a committed round never points at a truncated file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / _tmp_name()
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class FileReader(Reader):
    """`ObjectReader` over a file: unbuffered reads straight into the caller's buffer."""

    def __init__(self, f: FileIO, size: int, offset: int, length: int | None) -> None:
        self._f = f
        self.size = size
        self._left = max(0, size - offset) if length is None else max(0, min(length, size - offset))
        f.seek(offset)

    def readinto(self, buffer: memoryview, /) -> int:
        if self._left <= 0:
            return 0
        n = self._f.readinto(buffer[: self._left] if len(buffer) > self._left else buffer) or 0
        self._left -= n
        return n

    def close(self) -> None:
        self._f.close()


class LocalObjectStore(ObjectStore):
    """Objects as files under a root directory; presigned "URLs" are file paths."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create object store directory {self.root}: {exc}") from exc
        if not self.root.is_dir():
            raise StoreError(f"object store root {self.root} is not a directory")
        self.uri = f"file://{self.root}"

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self.root)!r})"

    # ---- helpers
    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _err(self, key: str, what: str, exc: OSError) -> StoreError:
        return StoreError(f"{self.uri}: cannot {what} object {key!r}: {exc}")

    # ---- ObjectStore
    def local_path(self, key: str) -> Path:
        return self._path(key)

    def put_file(self, key: str, path: str | Path) -> None:
        dest = self._path(key)
        src = Path(path)
        if not src.is_file():
            raise StoreError(f"{self.uri}: cannot put object {key!r}: no such file {src}")
        try:
            atomic_copy(src, dest)
        except (NotADirectoryError, IsADirectoryError) as exc:
            raise StoreError(
                f"{self.uri}: cannot put object {key!r}: a key is both an object and a "
                f"prefix of another key ({exc})"
            ) from exc
        except FileExistsError as exc:  # a parent part exists as a file
            raise StoreError(
                f"{self.uri}: cannot put object {key!r}: a parent of the key is an object ({exc})"
            ) from exc
        except OSError as exc:
            raise self._err(key, "put", exc) from exc

    def get_file(self, key: str, path: str | Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise ObjectNotFound(f"{self.uri}: no object {key!r}")
        dest = Path(path)
        try:
            atomic_copy(src, dest)
        except FileNotFoundError as exc:
            if not src.is_file():  # deleted between the check and the copy
                raise ObjectNotFound(f"{self.uri}: no object {key!r}") from exc
            raise self._err(key, "get", exc) from exc
        except OSError as exc:
            raise self._err(key, "get", exc) from exc

    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> FileReader:
        p = self._path(key)
        try:
            f = open(p, "rb", buffering=0)  # noqa: SIM115 - the reader closes it
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"{self.uri}: no object {key!r}") from exc
        except OSError as exc:
            raise self._err(key, "read", exc) from exc
        try:
            return FileReader(f, os.fstat(f.fileno()).st_size, offset, length)
        except BaseException:
            f.close()
            raise

    def version(self, key: str) -> str:
        p = self._path(key)
        try:
            st = p.stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"{self.uri}: no object {key!r}") from exc
        except OSError as exc:
            raise self._err(key, "stat", exc) from exc
        return f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}"

    def delete(self, key: str) -> None:
        p = self._path(key)
        try:
            p.unlink()
        except FileNotFoundError:
            return
        except IsADirectoryError:
            return  # a prefix, not an object: nothing to delete
        except NotADirectoryError:
            return
        except OSError as exc:
            raise self._err(key, "delete", exc) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        p = self._path(key)
        try:
            if not p.is_file():
                raise ObjectNotFound(f"{self.uri}: no object {key!r}")
            return p.stat().st_size
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{self.uri}: no object {key!r}") from exc
        except OSError as exc:
            raise self._err(key, "stat", exc) from exc

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        # Walk only the deepest directory that the prefix fully names.
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not start.is_dir():
            return []
        keys: list[str] = []
        try:
            for dirpath, dirnames, filenames in os.walk(start):
                dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]
                rel_dir = Path(dirpath).relative_to(self.root).as_posix()
                for name in filenames:
                    if name.startswith(TMP_PREFIX):
                        continue
                    key = name if rel_dir == "." else f"{rel_dir}/{name}"
                    if key.startswith(prefix):
                        keys.append(key)
        except OSError as exc:
            raise StoreError(f"{self.uri}: cannot list prefix {prefix!r}: {exc}") from exc
        keys.sort()
        return keys

    def presign_get(self, key: str, expires_seconds: int = 900) -> str:
        """The absolute path of the object file (expiry does not apply locally)."""
        return str(self._path(key))

    def presign_put(self, key: str, expires_seconds: int = 900) -> str:
        """The absolute path a client writes the object to (parents are created)."""
        p = self._path(key)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._err(key, "prepare upload of", exc) from exc
        return str(p)
