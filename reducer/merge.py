"""The next global model: merge the combiners' partials, then the server optimizer.

Each combiner aggregates its clients with the job's aggregator and returns a
partial with `weight` (for fedavg the examples behind it) and `n_updates` (the
updates it accepted, counted by the combiner). The partials are merged by the
merge of the aggregator (`fedkube.aggregate.partials`): fedavg takes their mean
weighted by examples (hierarchical FedAvg equals flat FedAvg); median and
trimmedmean take the weighted median / weighted trimmed mean of the partials
with weights = n_updates, never the clients' claims. The server optimizer then
acts on the pseudo-gradient ``aggregate - global`` (FedAvg: the aggregate
itself); its state is stored with every round, so a restarted reducer
continues exactly.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedkube.aggregate import Partial, PartialError, make_partial_merge, make_server_optimizer
from fedkube.errors import ModelFileError
from fedkube.model import (
    MappedModel,
    check_compatible,
    check_finite,
    load_model,
    read_header,
    save_model,
    sha256_file,
)
from fedkube.reducer.failure import AttemptFailed, Cause
from fedkube.spec import FederatedJob
from fedkube.store import ObjectStore, model_key, optimizer_key

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class StoredModel:
    """A global model written to the object store."""

    key: str
    sha256: str
    size: int
    write_s: float = 0.0  # seconds spent writing it (serialising and storing)


@dataclass(frozen=True)
class NamedPartial:
    """A combiner's partial aggregate: object key, weight (examples, used by fedavg)
    and the number of updates the combiner accepted (used by median and trimmedmean)."""

    combiner: str
    key: str
    weight: float
    n_updates: int = 0


def merge_round(
    job: FederatedJob,
    store: ObjectStore,
    *,
    round: int,
    attempt: int,
    partials: list[NamedPartial],
    workdir: Path,
    base_sha256: str | None = None,
) -> StoredModel:
    """Model `round` from model `round - 1` and the partials; stores it (and the
    optimizer state). Raises RoundFailed (`AttemptFailed`) naming the combiner of an
    invalid partial, or when model `round - 1` is not the one committed
    (`base_sha256`, its lineage)."""
    work = Path(tempfile.mkdtemp(prefix=f"merge-{round}-", dir=workdir))
    try:
        gpath = store.fetch(model_key(job.key, round - 1), work / "global.safetensors")
        if base_sha256 and (actual := sha256_file(gpath)) != base_sha256:
            raise AttemptFailed(
                Cause.MODEL_CHANGED,
                f"the global model of round {round - 1} changed after it was committed "
                f"(sha256 {actual[:12]}..., recorded {base_sha256[:12]}...); refusing to "
                "aggregate against it",
            )
        aggregated = _merge_partials(job, store, gpath, partials, work)
        new_model = _server_step(job, store, round, gpath, aggregated, work)
        t0 = time.monotonic()
        out = work / "model.safetensors"
        sha = save_model(out, new_model, {"round": str(round), "attempt": str(attempt)})
        key = model_key(job.key, round)
        store.put_file(key, out)
        return StoredModel(key, sha, out.stat().st_size, time.monotonic() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _merge_partials(
    job: FederatedJob, store: ObjectStore, gpath: Path, partials: list[NamedPartial], work: Path
) -> Tensors:
    """The merge of spec.aggregator over every partial, each checked first."""
    template = read_header(gpath)
    merge = make_partial_merge(job.spec.aggregator, template)
    with contextlib.ExitStack() as stack:
        opened = [_open_partial(job, store, p, work, stack) for p in partials]
        for p in opened:
            try:
                check_compatible(template, p.model.header)
                check_finite(p.model)
            except ModelFileError as exc:
                raise _invalid(f"partial of combiner {p.name} is invalid: {exc}") from None
        try:
            return merge.merge(opened)
        except PartialError as exc:
            raise _invalid(f"partial of combiner {exc.name} is invalid: {exc.problem}") from None
        except ValueError as exc:
            raise _invalid(
                f"cannot merge the partials ({job.spec.aggregator.name}): {exc}"
            ) from None


def _invalid(message: str) -> AttemptFailed:
    return AttemptFailed(Cause.INVALID_PARTIAL, message)


def _open_partial(
    job: FederatedJob,
    store: ObjectStore,
    p: NamedPartial,
    work: Path,
    stack: contextlib.ExitStack,
) -> Partial:
    ppath = store.fetch(p.key, work / f"{p.combiner}.safetensors")
    try:
        mm = stack.enter_context(MappedModel(ppath, max_bytes=job.spec.model.max_bytes))
    except ModelFileError as exc:
        raise _invalid(f"partial of combiner {p.combiner} is invalid: {exc}") from None
    return Partial(name=p.combiner, model=mm, weight=p.weight, n_updates=p.n_updates)


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
    okey = optimizer_key(job.key, round - 1)
    if store.exists(okey):
        state = load_model(store.fetch(okey, work / "opt.safetensors"))
    new_model, new_state = opt.step(current, aggregated, state)
    spath = work / "opt-new.safetensors"
    save_model(spath, new_state, {"round": str(round)})
    store.put_file(optimizer_key(job.key, round), spath)
    return new_model
