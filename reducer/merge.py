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
import functools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedkube.aggregate import (
    Partial,
    PartialError,
    WeightedMean,
    make_partial_merge,
    make_server_optimizer,
    partial_weight,
)
from fedkube.errors import ModelFileError, StoreError
from fedkube.ingest import ChunkBuffer, ingest
from fedkube.model import (
    MappedModel,
    ModelHeader,
    check_compatible,
    check_finite,
    load_model,
    read_header,
    save_model,
    sha256_file,
)
from fedkube.reducer.failure import AttemptFailed, Cause
from fedkube.spec import FedAvgAggregator, FederatedJob
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
    """A combiner's partial aggregate: object key, weight (examples, used by fedavg),
    the number of updates the combiner accepted (used by median and trimmedmean) and
    the digest of its file as the combiner wrote it."""

    combiner: str
    key: str
    weight: float
    n_updates: int = 0
    digest: str = ""


@dataclass(frozen=True)
class _Kept:
    key: str
    path: Path
    sha256: str
    version: str


class ModelCache:
    """The last global model this reducer wrote, kept on its disk: the next round
    merges against it without downloading it again nor hashing it again, for as long
    as the stored object is the one written (its `ObjectStore.version`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._kept: _Kept | None = None

    def get(self, store: ObjectStore, key: str, sha256: str) -> Path | None:
        kept = self._kept
        if kept is None or kept.key != key or kept.sha256 != sha256 or not kept.path.exists():
            return None
        try:
            same = store.version(key) == kept.version
        except StoreError:
            same = False
        return kept.path if same else None

    def keep(self, store: ObjectStore, key: str, path: Path, sha256: str) -> None:
        """Move `path` (just stored under `key`) into the cache, replacing the last one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        dest = self.directory / "latest.safetensors"
        os.replace(path, dest)
        self._kept = _Kept(key, dest, sha256, store.version(key))


def merge_round(
    job: FederatedJob,
    store: ObjectStore,
    *,
    round: int,
    attempt: int,
    partials: list[NamedPartial],
    workdir: Path,
    base_sha256: str | None = None,
    cache: ModelCache | None = None,
) -> StoredModel:
    """Model `round` from model `round - 1` and the partials; stores it (and the
    optimizer state). Raises RoundFailed (`AttemptFailed`) naming the combiner of an
    invalid partial, or when model `round - 1` is not the one committed
    (`base_sha256`, its lineage). With `cache`, model `round - 1` is read from it
    when it still holds it, and model `round` is kept in it."""
    work = Path(tempfile.mkdtemp(prefix=f"merge-{round}-", dir=workdir))
    try:
        gpath = _base_model(store, model_key(job.key, round - 1), base_sha256, cache, work)
        aggregated = _merge_partials(job, store, gpath, partials, work)
        new_model = _server_step(job, store, round, gpath, aggregated, work)
        t0 = time.monotonic()
        out = work / "model.safetensors"
        sha = save_model(out, new_model, {"round": str(round), "attempt": str(attempt)})
        key = model_key(job.key, round)
        store.put_file(key, out)
        stored = StoredModel(key, sha, out.stat().st_size, time.monotonic() - t0)
        if cache is not None:
            cache.keep(store, key, out, sha)
        return stored
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _base_model(
    store: ObjectStore,
    key: str,
    base_sha256: str | None,
    cache: ModelCache | None,
    work: Path,
) -> Path:
    """A local file of the previous global model, checked against its lineage."""
    if cache is not None and base_sha256 and (kept := cache.get(store, key, base_sha256)):
        return kept
    gpath = store.fetch(key, work / "global.safetensors")
    if base_sha256 and (actual := sha256_file(gpath)) != base_sha256:
        raise AttemptFailed(
            Cause.MODEL_CHANGED,
            f"the global model {key} changed after it was committed "
            f"(sha256 {actual[:12]}..., recorded {base_sha256[:12]}...); refusing to "
            "aggregate against it",
        )
    return gpath


def _merge_partials(
    job: FederatedJob, store: ObjectStore, gpath: Path, partials: list[NamedPartial], work: Path
) -> Tensors:
    """The merge of spec.aggregator over every partial, each checked first."""
    template = read_header(gpath)
    if isinstance(job.spec.aggregator, FedAvgAggregator):
        return _stream_mean(job, store, template, partials, work)
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


def _stream_mean(
    job: FederatedJob,
    store: ObjectStore,
    template: ModelHeader,
    partials: list[NamedPartial],
    work: Path,
) -> Tensors:
    """fedavg: each partial read once, checked (template, digest, finiteness) and folded
    into the weighted mean as it streams in (`fedkube.ingest`), never downloaded."""
    mean = WeightedMean(template, undo_dir=work)
    buffer = ChunkBuffer()
    try:
        for p in partials:
            try:
                w = partial_weight(p.combiner, p.weight)
            except PartialError as exc:
                raise _invalid(
                    f"partial of combiner {p.combiner} is invalid: {exc.problem}"
                ) from None
            if w == 0.0:
                continue  # carries nothing
            try:
                with store.open_read(p.key) as r:
                    ingest(
                        r,
                        r.size,
                        template=template,
                        begin=functools.partial(mean.begin, weight=w),
                        digest=p.digest or None,
                        max_bytes=job.spec.model.max_bytes,
                        buffer=buffer,
                    )
            except ModelFileError as exc:
                raise _invalid(f"partial of combiner {p.combiner} is invalid: {exc}") from None
        if mean.n_updates == 0:
            names = ", ".join(p.combiner for p in partials) or "no combiner"
            raise _invalid(f"cannot merge the partials (fedavg): those of {names} weigh 0")
        return mean.result(consume=True)
    finally:
        mean.close()
        buffer.close()


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
