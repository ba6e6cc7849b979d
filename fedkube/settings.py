"""Where a job's bytes and state live: URIs from the spec, the workdir and flags."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlencode

from fedkube.errors import SpecError
from fedkube.spec import FederatedJob

DEFAULT_WORKDIR = ".fedkube"


def store_uri(job: FederatedJob, workdir: Path, override: str | None = None) -> str:
    """--store, else spec.storage.s3, else a local directory under the workdir."""
    if override:
        return override
    s = job.spec.storage
    if s.s3 is not None:
        q = {"endpoint": s.s3.endpoint, "secure": str(s.s3.secure).lower()}
        if s.s3.region:
            q["region"] = s.s3.region
        if s.s3.public_endpoint:
            q["public_endpoint"] = s.s3.public_endpoint
        return f"s3://{s.s3.bucket}?{urlencode(q)}"
    path = Path(s.local.path if s.local else "store")
    return "file://" + str(path if path.is_absolute() else (workdir / path).resolve())


def state_uri(job: FederatedJob | None, workdir: Path, override: str | None = None) -> str:
    """--state, else spec.stateStore.mongodb (URI from its env var), else SQLite in the workdir."""
    if override:
        return override
    st = job.spec.state_store if job is not None else None
    if st is not None and st.mongodb is not None:
        uri = os.environ.get(st.mongodb.uri_env, "")
        if not uri:
            raise SpecError(
                f"spec.stateStore.mongodb: set the MongoDB URI in ${st.mongodb.uri_env} "
                "or pass --state"
            )
        return uri
    path = Path(st.sqlite.path if st is not None and st.sqlite else "state.db")
    return "sqlite:///" + str(path if path.is_absolute() else (workdir / path).resolve())
