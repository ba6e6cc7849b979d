"""Where the dashboard's data comes from: the state store named by the
DashboardConfig, and each job's object store (for model downloads). I/O module.

Stores are opened once per process and shared by every session, page run and
the download route (both backends are safe across threads).
"""

from __future__ import annotations

import functools
from pathlib import Path

from fedkube.dashboard.config import DashboardConfig
from fedkube.errors import FedkubeError
from fedkube.settings import store_uri
from fedkube.spec import parse_job
from fedkube.state import JobRecord, StateStore, open_state_store
from fedkube.store import ObjectStore, open_object_store


@functools.cache
def config() -> DashboardConfig:
    """The settings `fedkube dashboard` exported (ValueError if it did not)."""
    return DashboardConfig.from_env()


@functools.cache
def _state(uri: str) -> StateStore:
    return open_state_store(uri)


def state() -> StateStore:
    """The state store (StateError if it cannot be opened)."""
    return _state(config().state)


@functools.cache
def _objects(uri: str) -> ObjectStore:
    return open_object_store(uri)


def object_store_uri(job: JobRecord, cfg: DashboardConfig) -> str:
    """--store, else the object store of the job's own manifest (its relative local
    path resolved against the dashboard's workdir). SpecError for a manifest that
    no longer parses."""
    if cfg.store:
        return cfg.store
    return store_uri(parse_job(job.manifest), Path(cfg.workdir).resolve())


def objects(job: JobRecord) -> ObjectStore:
    """The object store holding `job`'s models."""
    try:
        return _objects(object_store_uri(job, config()))
    except FedkubeError:
        raise
    except Exception as exc:  # a manifest from another fedkube version, say
        raise FedkubeError(f"job {job.name}: cannot open its object store: {exc}") from exc
