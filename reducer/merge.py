"""The next global model: merge the combiners' partials, then the server optimizer.

Each combiner returns the example-weighted mean of its clients' updates and its
weight (the examples behind it); their weighted mean is the flat FedAvg of every
update (hierarchical FedAvg equals flat FedAvg). The server optimizer then acts
on the pseudo-gradient ``aggregate - global`` (FedAvg: the aggregate itself);
its state is stored with every round, so a restarted reducer continues exactly.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedkube.aggregate import WeightedMean, make_server_optimizer
from fedkube.errors import ModelFileError, RoundFailed
from fedkube.model import (
    MappedModel,
    check_compatible,
    check_finite,
    load_model,
    read_header,
    save_model,
)
from fedkube.spec import FederatedJob
from fedkube.store import ObjectStore, model_key, optimizer_key

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class StoredModel:
    """A global model written to the object store."""

    key: str
    sha256: str
    size: int


@dataclass(frozen=True)
class NamedPartial:
    """A combiner's partial aggregate: object key and weight."""

    combiner: str
    key: str
    weight: float


def merge_round(
    job: FederatedJob,
    store: ObjectStore,
    *,
    round: int,
    attempt: int,
    partials: list[NamedPartial],
    workdir: Path,
) -> StoredModel:
    """Model `round` from model `round - 1` and the partials; stores it (and the
    optimizer state). Raises RoundFailed naming the combiner of an invalid partial."""
    work = Path(tempfile.mkdtemp(prefix=f"merge-{round}-", dir=workdir))
    try:
        gpath = store.fetch(model_key(job.name, round - 1), work / "global.safetensors")
        aggregated = _weighted_mean(job, store, gpath, partials, work)
        new_model = _server_step(job, store, round, gpath, aggregated, work)
        out = work / "model.safetensors"
        sha = save_model(out, new_model, {"round": str(round), "attempt": str(attempt)})
        key = model_key(job.name, round)
        store.put_file(key, out)
        return StoredModel(key, sha, out.stat().st_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _weighted_mean(
    job: FederatedJob, store: ObjectStore, gpath: Path, partials: list[NamedPartial], work: Path
) -> Tensors:
    template = read_header(gpath)
    agg = WeightedMean(template)
    try:
        for p in partials:
            ppath = store.fetch(p.key, work / f"{p.combiner}.safetensors")
            try:
                with MappedModel(ppath, max_bytes=job.spec.model.max_bytes) as mm:
                    check_compatible(template, mm.header)
                    check_finite(mm)
                    agg.add(mm, p.weight)
            except ModelFileError as exc:
                raise RoundFailed(f"partial of combiner {p.combiner} is invalid: {exc}") from None
        return agg.result()
    finally:
        agg.close()


def _server_step(
    job: FederatedJob, store: ObjectStore, round: int, gpath: Path, aggregated: Tensors, work: Path
) -> Tensors:
    """Apply spec.serverOptimizer; store its new state next to the model."""
    cfg = job.spec.server_optimizer
    if cfg.name == "fedavg":
        return aggregated
    opt = make_server_optimizer(cfg)
    current = load_model(gpath)
    state: Tensors = {}
    okey = optimizer_key(job.name, round - 1)
    if store.exists(okey):
        state = load_model(store.fetch(okey, work / "opt.safetensors"))
    new_model, new_state = opt.step(current, aggregated, state)
    spath = work / "opt-new.safetensors"
    save_model(spath, new_state, {"round": str(round)})
    store.put_file(optimizer_key(job.name, round), spath)
    return new_model
