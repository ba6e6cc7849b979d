"""open_object_store: an ObjectStore from a URI.

Accepted forms:

- ``file:///abs/dir`` -- a local directory (absolute path);
- ``file://rel/dir`` -- a local directory relative to `base_dir` (or the
  current directory when `base_dir` is None); everything after ``file://``
  is the path;
- a plain path (``/abs/dir``, ``rel/dir``, ``~/dir``) -- the same;
- ``s3://BUCKET?endpoint=HOST:PORT[&secure=false][&region=R][&public_endpoint=H:P]
  [&create_bucket=false]`` -- an S3-compatible endpoint (`endpoint` defaults
  to ``s3.amazonaws.com``; it may also be written ``http(s)://host:port``).
  Credentials come from the environment variables ``AWS_ACCESS_KEY_ID`` and
  ``AWS_SECRET_ACCESS_KEY``, never from the URI.

A bad URI raises StoreError naming the URI (without credentials) and what is
wrong with it.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from fedkube.errors import StoreError
from fedkube.store.base import ObjectStore

_S3_PARAMS = ("endpoint", "secure", "region", "public_endpoint", "create_bucket")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _redact(uri: str) -> str:
    """The URI with any userinfo (user:password@) removed."""
    if "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    netloc_end = len(rest)
    for sep in "/?#":
        i = rest.find(sep)
        if i != -1:
            netloc_end = min(netloc_end, i)
    netloc = rest[:netloc_end]
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return f"{scheme}://{netloc}{rest[netloc_end:]}"


def _bool(uri: str, name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise StoreError(f"bad object store URI {_redact(uri)!r}: {name}={value!r} is not true/false")


def _local_path(raw: str, base_dir: Path | None) -> Path:
    p = Path(raw).expanduser()
    if not p.is_absolute():
        p = (base_dir if base_dir is not None else Path.cwd()) / p
    return p


def _open_s3(uri: str) -> ObjectStore:
    from fedkube.store.s3 import S3ObjectStore

    shown = _redact(uri)
    parts = urlsplit(uri)
    if "@" in parts.netloc:
        raise StoreError(
            f"bad object store URI {shown!r}: credentials must not be in the URI; set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead"
        )
    bucket = parts.netloc
    if not bucket:
        raise StoreError(
            f"bad object store URI {shown!r}: missing bucket (s3://BUCKET?endpoint=...)"
        )
    if parts.path not in ("", "/"):
        raise StoreError(
            f"bad object store URI {shown!r}: a path after the bucket is not supported "
            f"({parts.path!r})"
        )
    if parts.fragment:
        raise StoreError(f"bad object store URI {shown!r}: unexpected fragment")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise StoreError(f"bad object store URI {shown!r}: bad query string: {exc}") from exc
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in _S3_PARAMS:
            raise StoreError(
                f"bad object store URI {shown!r}: unknown parameter {name!r} "
                f"(known: {', '.join(_S3_PARAMS)})"
            )
        if name in params:
            raise StoreError(f"bad object store URI {shown!r}: parameter {name!r} given twice")
        params[name] = value
    endpoint = params.get("endpoint", "s3.amazonaws.com")
    if not endpoint:
        raise StoreError(f"bad object store URI {shown!r}: empty endpoint")
    secure = _bool(uri, "secure", params["secure"]) if "secure" in params else True
    if "secure" in params and "://" in endpoint:
        scheme_secure = endpoint.startswith("https://")
        if scheme_secure != secure:
            raise StoreError(
                f"bad object store URI {shown!r}: secure={params['secure']} contradicts "
                f"the endpoint scheme"
            )
    create = (
        _bool(uri, "create_bucket", params["create_bucket"]) if "create_bucket" in params else True
    )
    access = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    missing = [
        name
        for name, value in (("AWS_ACCESS_KEY_ID", access), ("AWS_SECRET_ACCESS_KEY", secret))
        if not value
    ]
    if missing:
        raise StoreError(
            f"object store {shown!r} needs S3 credentials: set {' and '.join(missing)} "
            "in the environment"
        )
    try:
        return S3ObjectStore(
            endpoint,
            bucket,
            access_key=access,
            secret_key=secret,
            region=params.get("region") or None,
            secure=secure,
            public_endpoint=params.get("public_endpoint") or None,
            create_bucket=create,
        )
    except StoreError as exc:
        raise StoreError(f"bad object store URI {shown!r}: {exc}") from exc


def open_object_store(uri: str, *, base_dir: Path | None = None) -> ObjectStore:
    """Open the object store named by `uri` (see the module docstring for forms).

    Relative local paths resolve against `base_dir` (the current directory
    when None).
    """
    from fedkube.store.local import LocalObjectStore

    if not isinstance(uri, str) or not uri.strip():
        raise StoreError(f"bad object store URI {uri!r}: empty")
    uri = uri.strip()
    if "://" not in uri:
        if "?" in uri or "#" in uri:
            raise StoreError(f"bad object store URI {uri!r}: a plain path takes no query")
        return LocalObjectStore(_local_path(uri, base_dir))
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "file":
        raw = uri.split("://", 1)[1]
        if not raw:
            raise StoreError(f"bad object store URI {uri!r}: missing path (file:///abs/dir)")
        if "?" in raw or "#" in raw:
            raise StoreError(f"bad object store URI {uri!r}: a file URI takes no query")
        return LocalObjectStore(_local_path(raw, base_dir))
    if scheme == "s3":
        return _open_s3(uri)
    raise StoreError(
        f"bad object store URI {_redact(uri)!r}: unknown scheme {scheme!r} "
        "(use file://PATH, s3://BUCKET?endpoint=HOST:PORT or a plain path)"
    )
