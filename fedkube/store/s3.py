"""S3ObjectStore: any S3-compatible endpoint through the `minio` SDK.

Files stream in and out (multipart uploads of 16 MiB parts, chunked
downloads), so a model is never held whole in memory. Each upload records the
file's sha256 as user metadata (``x-amz-meta-sha256``); downloads verify it
when present. Errors become StoreError / ObjectNotFound with messages that
name the endpoint, bucket and key -- never the credentials.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name

from fedkube.errors import FedkubeError, ObjectNotFound, StoreError
from fedkube.model import sha256_file
from fedkube.store.base import ObjectStore, Reader
from fedkube.store.local import TMP_PREFIX, validate_key, validate_prefix

T = TypeVar("T")

#: multipart part size (also the largest single read held in memory per part)
PART_SIZE = 16 * 1024 * 1024
#: download chunk size
CHUNK_SIZE = 1024 * 1024
#: user metadata key holding the hex sha256 of the object
SHA256_META = "x-amz-meta-sha256"
#: longest presigned-URL expiry S3 allows (7 days)
MAX_EXPIRY = 7 * 24 * 3600

_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AuthorizationHeaderMalformed",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "OperationAborted",
        "XMinioServerNotInitialized",
    }
)


def split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """`host:port` (keeps `secure`) or `http(s)://host:port` (the scheme decides)."""
    endpoint = endpoint.strip()
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https"):
            raise StoreError(f"invalid s3 endpoint {endpoint!r}: scheme must be http or https")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise StoreError(f"invalid s3 endpoint {endpoint!r}: must be host[:port] only")
        if "@" in parts.netloc:
            raise StoreError("invalid s3 endpoint: credentials must not be part of the endpoint")
        endpoint, secure = parts.netloc, parts.scheme == "https"
    if not endpoint or "/" in endpoint or "@" in endpoint or "?" in endpoint:
        raise StoreError(f"invalid s3 endpoint {endpoint!r}: must be host[:port]")
    return endpoint, secure


def _http_client() -> urllib3.PoolManager:
    # Our own pool: short connect timeout and no urllib3-level retries, so an
    # unreachable endpoint fails in seconds and retries are ours (with backoff).
    return urllib3.PoolManager(
        timeout=urllib3.util.Timeout(connect=10.0, read=300.0),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=False,
    )


def _is_network_error(exc: BaseException) -> bool:
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError) and not isinstance(
        exc, urllib3.exceptions.SSLError
    )


def _is_transient(exc: BaseException) -> bool:
    if _is_network_error(exc):
        return True
    if isinstance(exc, S3Error):
        status = getattr(exc.response, "status", 0) or 0
        return exc.code in _TRANSIENT_CODES or status >= 500
    if isinstance(exc, ServerError):
        return exc.status_code >= 500 or exc.status_code == 429
    if isinstance(exc, InvalidResponseError):
        code = getattr(exc, "_code", 0) or 0
        return isinstance(code, int) and (code >= 500 or code == 429)
    return False


class S3Reader(Reader):
    """`ObjectReader` over a GET response body, read straight into the caller's buffer.

    A connection that breaks mid-object (a transient error) is resumed with a
    ranged GET from the byte reached, up to the store's `retries` times; other
    errors become StoreError naming the endpoint, bucket and key."""

    def __init__(self, store: S3ObjectStore, key: str, offset: int, length: int | None) -> None:
        self._store = store
        self._key = key
        self._pos = offset
        self._resp: Any = None
        self._retries = store.retries
        self._left = -1 if length is None else length
        self.size = 0
        self._open()

    def _open(self) -> None:
        store, key = self._store, self._key
        length = 0 if self._left < 0 else self._left
        resp = store._op(
            "get object",
            key,
            lambda: store._client.get_object(store.bucket, key, offset=self._pos, length=length),
        )
        self._resp = resp
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        if total.isdigit():
            self.size = int(total)
        elif self._pos == 0:
            self.size = int(resp.headers.get("Content-Length") or 0)
        # what this response carries: a range past the object's end is cut short
        self._left = int(resp.headers.get("Content-Length") or 0)
        # http.client's response reads into our buffer with no copy; urllib3's
        # readinto reads into a new bytes object first (and would decode content)
        fp = getattr(resp, "_fp", None)
        plain = not resp.headers.get("Content-Encoding")
        self._readinto = fp.readinto if plain and fp is not None else resp.readinto

    def readinto(self, buffer: memoryview, /) -> int:
        if self._left <= 0:
            return 0
        view = buffer[: self._left] if len(buffer) > self._left else buffer
        while True:
            try:
                n = self._readinto(view) or 0
            except Exception as exc:
                if self._retries > 0 and _is_transient(exc):
                    self._retries -= 1
                    self._drop()
                    self._open()
                    continue
                raise self._store._map_error(exc, "read object", self._key) from exc
            if n == 0:
                raise StoreError(
                    f"{self._store._where()}: object {self._key!r} ended {self._left} bytes "
                    "early while reading it"
                )
            self._pos += n
            self._left -= n
            return n

    def _drop(self) -> None:
        if self._resp is not None:
            with contextlib.suppress(Exception):
                self._resp.close()
            self._resp = None

    def close(self) -> None:
        if self._resp is None:
            return
        if self._left == 0:
            with contextlib.suppress(Exception):
                self._resp.release_conn()  # read to the end: the connection is reusable
            self._resp = None
        else:
            self._drop()


class S3ObjectStore(ObjectStore):
    """Objects in one bucket of an S3-compatible endpoint.

    `endpoint` is ``host:port`` (or ``http(s)://host:port``, whose scheme then
    decides `secure`). `public_endpoint`, when set, is the endpoint presigned
    URLs are signed for (clients outside the cluster); it is signed with
    `region` (default ``us-east-1``) so no network lookup is needed. The bucket
    is created on first use when `create_bucket` is true. Transient failures
    (connection errors, 5xx, SlowDown) are retried `retries` times with a
    small exponential backoff.
    """

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        access_key: str,
        secret_key: str,
        region: str | None = None,
        secure: bool = True,
        public_endpoint: str | None = None,
        create_bucket: bool = True,
        retries: int = 5,
    ) -> None:
        self.endpoint, self.secure = split_endpoint(endpoint, secure)
        try:
            check_bucket_name(bucket, True)
        except ValueError as exc:
            raise StoreError(f"invalid s3 bucket name {bucket!r}: {exc}") from exc
        if not access_key or not secret_key:
            raise StoreError(
                f"s3 endpoint {self.endpoint} bucket {bucket}: "
                "access key and secret key are required"
            )
        if retries < 0:
            raise StoreError(f"retries must be >= 0, got {retries}")
        self.bucket = bucket
        self.region = region or None
        self.create_bucket = create_bucket
        self.retries = retries
        self.public_endpoint: str | None = None
        public_secure = self.secure
        if public_endpoint:
            self.public_endpoint, public_secure = split_endpoint(public_endpoint, self.secure)
        try:
            self._client = Minio(
                self.endpoint,
                access_key=access_key,
                secret_key=secret_key,
                secure=self.secure,
                region=self.region,
                http_client=_http_client(),
            )
            self._public_client: Minio | None = None
            if self.public_endpoint:
                self._public_client = Minio(
                    self.public_endpoint,
                    access_key=access_key,
                    secret_key=secret_key,
                    secure=public_secure,
                    region=self.region or "us-east-1",
                    http_client=_http_client(),
                )
        except ValueError as exc:
            raise StoreError(f"invalid s3 endpoint {self.endpoint}: {exc}") from exc
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()
        uri = f"s3://{bucket}?endpoint={self.endpoint}"
        if not self.secure:
            uri += "&secure=false"
        if self.region:
            uri += f"&region={self.region}"
        if self.public_endpoint:
            scheme = "https" if public_secure else "http"
            uri += f"&public_endpoint={scheme}://{self.public_endpoint}"
        self.uri = uri

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.uri!r})"

    # ---- errors and retries
    def _where(self) -> str:
        return f"s3 endpoint {self.endpoint} bucket {self.bucket}"

    def _map_error(self, exc: BaseException, what: str, key: str | None) -> FedkubeError:
        if isinstance(exc, FedkubeError):
            return exc
        obj = f" {key!r}" if key is not None else ""
        if isinstance(exc, S3Error):
            code = exc.code or "error"
            if code in _AUTH_CODES:
                return StoreError(
                    f"authentication failed for {self._where()} ({code}) while trying to "
                    f"{what}{obj}: check the access key and secret key"
                )
            if code == "NoSuchKey" and key is not None:
                return ObjectNotFound(f"no object {key!r} in {self._where()}")
            if code == "NoSuchBucket":
                return StoreError(f"{self._where()}: bucket does not exist (cannot {what}{obj})")
            return StoreError(f"{self._where()}: cannot {what}{obj}: {code}: {exc.message}")
        if _is_network_error(exc):
            return StoreError(
                f"cannot reach s3 endpoint {self.endpoint} (bucket {self.bucket}, {what}{obj}): "
                f"{type(exc).__name__}: {exc}"
            )
        if isinstance(exc, urllib3.exceptions.SSLError):
            return StoreError(f"TLS error talking to s3 endpoint {self.endpoint}: {exc}")
        if isinstance(exc, ServerError | InvalidResponseError):
            return StoreError(f"{self._where()}: cannot {what}{obj}: {exc}")
        if isinstance(exc, OSError):
            return StoreError(f"{self._where()}: cannot {what}{obj}: local file error: {exc}")
        if isinstance(exc, ValueError):
            return StoreError(f"{self._where()}: cannot {what}{obj}: {exc}")
        return StoreError(f"{self._where()}: cannot {what}{obj}: {type(exc).__name__}: {exc}")

    def _retry(self, what: str, key: str | None, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if isinstance(exc, FedkubeError):
                    raise
                if attempt < self.retries and _is_transient(exc):
                    delay = min(2.0, 0.1 * 2**attempt) * (0.5 + random.random() / 2)
                    time.sleep(delay)
                    attempt += 1
                    continue
                raise self._map_error(exc, what, key) from exc

    def _ensure_bucket(self, what: str, key: str | None, *, check: bool = True) -> None:
        """Create the bucket (create_bucket) or, when `check`, check that it exists; once.

        Without the check, a missing bucket would look like a missing object to
        HEAD requests (exists() False, size() ObjectNotFound): S3 answers them
        with a bare 404 that the SDK reports as NoSuchKey. Presigning passes
        check=False: with create_bucket off it needs no network at all.
        """
        if self._bucket_ready or not (check or self.create_bucket):
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            if not self.create_bucket:
                if not self._retry(what, key, lambda: self._client.bucket_exists(self.bucket)):
                    obj = f" {key!r}" if key is not None else ""
                    raise StoreError(
                        f"{self._where()}: bucket does not exist (cannot {what}{obj}; "
                        "create_bucket is off)"
                    )
            else:

                def create() -> None:
                    if self._client.bucket_exists(self.bucket):
                        return
                    try:
                        self._client.make_bucket(self.bucket, location=self.region)
                    except S3Error as exc:
                        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            raise

                self._retry("create bucket", None, create)
            self._bucket_ready = True

    def _op(
        self, what: str, key: str | None, fn: Callable[[], T], *, check_bucket: bool = True
    ) -> T:
        self._ensure_bucket(what, key, check=check_bucket)
        return self._retry(what, key, fn)

    # ---- ObjectStore
    def put_file(self, key: str, path: str | Path) -> None:
        validate_key(key)
        src = Path(path)
        if not src.is_file():
            raise StoreError(f"{self._where()}: cannot put object {key!r}: no such file {src}")
        try:
            digest = sha256_file(src)
        except OSError as exc:
            raise StoreError(f"cannot read {src} to put object {key!r}: {exc}") from exc

        def put() -> None:
            self._client.fput_object(
                self.bucket,
                key,
                str(src),
                content_type="application/octet-stream",
                metadata={SHA256_META: digest},
                part_size=PART_SIZE,
            )

        self._op("put object", key, put)

    def get_file(self, key: str, path: str | Path) -> None:
        validate_key(key)
        dest = Path(path)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create directory for {dest}: {exc}") from exc

        def get() -> None:
            tmp = dest.parent / f"{TMP_PREFIX}{os.urandom(8).hex()}"
            try:
                resp = self._client.get_object(self.bucket, key)
                try:
                    expected = resp.headers.get(SHA256_META)
                    h = hashlib.sha256()
                    with open(tmp, "wb") as f:
                        for chunk in resp.stream(CHUNK_SIZE):
                            f.write(chunk)
                            h.update(chunk)
                        f.flush()
                        os.fsync(f.fileno())
                finally:
                    resp.close()
                    resp.release_conn()
                if expected and h.hexdigest() != expected.strip().lower():
                    raise StoreError(
                        f"checksum mismatch for object {key!r} in {self._where()}: "
                        f"expected sha256 {expected}, got {h.hexdigest()}"
                    )
                os.replace(tmp, dest)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise

        self._op("get object", key, get)

    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> S3Reader:
        validate_key(key)
        if offset < 0 or (length is not None and length <= 0):
            raise StoreError(f"cannot read object {key!r}: offset {offset}, length {length}")
        return S3Reader(self, key, offset, length)

    def version(self, key: str) -> str:
        validate_key(key)

        def etag() -> str:
            stat = self._client.stat_object(self.bucket, key)
            return f"{stat.etag}-{stat.version_id or ''}"

        return self._op("stat object", key, etag)

    def delete(self, key: str) -> None:
        validate_key(key)

        def delete() -> None:
            try:
                self._client.remove_object(self.bucket, key)
            except S3Error as exc:
                if exc.code != "NoSuchKey":
                    raise

        self._op("delete object", key, delete)

    def exists(self, key: str) -> bool:
        validate_key(key)

        def exists() -> bool:
            try:
                self._client.stat_object(self.bucket, key)
                return True
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    return False
                raise

        return self._op("stat object", key, exists)

    def size(self, key: str) -> int:
        validate_key(key)

        def size() -> int:
            return int(self._client.stat_object(self.bucket, key).size or 0)

        return self._op("stat object", key, size)

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)

        def list_() -> list[str]:
            objs = self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
            return sorted(o.object_name for o in objs if o.object_name is not None and not o.is_dir)

        return self._op("list prefix", prefix, list_)

    def _expiry(self, expires_seconds: int) -> timedelta:
        if not 1 <= expires_seconds <= MAX_EXPIRY:
            raise StoreError(
                f"presigned URL expiry must be 1..{MAX_EXPIRY} seconds, got {expires_seconds}"
            )
        return timedelta(seconds=expires_seconds)

    def presign_get(self, key: str, expires_seconds: int = 900) -> str:
        validate_key(key)
        expires = self._expiry(expires_seconds)
        client = self._public_client or self._client
        return self._op(
            "presign get of",
            key,
            lambda: client.presigned_get_object(self.bucket, key, expires=expires),
            check_bucket=False,
        )

    def presign_put(self, key: str, expires_seconds: int = 900) -> str:
        validate_key(key)
        expires = self._expiry(expires_seconds)
        client = self._public_client or self._client
        return self._op(
            "presign put of",
            key,
            lambda: client.presigned_put_object(self.bucket, key, expires=expires),
            check_bucket=False,
        )
