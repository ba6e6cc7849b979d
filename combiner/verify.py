"""Checks a client's report, and its update file as it is read and aggregated.

Every failure raises UpdateRejected with a `fedkube.vocabulary.Reason` (also used
in Ack.reason, update records and events) and a message naming the problem.
The file checks' reasons come from the `ModelFileError` they raise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from fedkube.aggregate.base import Pending
from fedkube.errors import ModelFileError, ObjectNotFound, UpdateRejected
from fedkube.ingest import ChunkBuffer, Ingested, ingest
from fedkube.model import ModelHeader
from fedkube.store import ObjectStore
from fedkube.vocabulary import Reason


def check_report(num_examples: int, metrics: Mapping[str, float]) -> None:
    if num_examples <= 0:
        raise UpdateRejected(Reason.BAD_WEIGHT, f"num_examples must be > 0, got {num_examples}")
    for k, v in metrics.items():
        if not math.isfinite(v):
            raise UpdateRejected(Reason.BAD_METRICS, f"metric {k!r} is not finite ({v})")


def read_update(
    store: ObjectStore,
    key: str,
    template: ModelHeader | None,
    *,
    max_bytes: int,
    digest: str | None = None,
    begin: Callable[[ModelHeader], Pending] | None = None,
    buffer: ChunkBuffer | None = None,
) -> Ingested:
    """Read an update once from the store, checking it and (with `begin`) folding it
    into an aggregator as it streams (`fedkube.ingest`). Raises UpdateRejected, after
    which nothing of the update is folded; a storage failure raises StoreError.

    With `template` None (a seed model, which nothing precedes) the names,
    shapes and dtypes are not compared; every other check applies."""
    try:
        with store.open_read(key) as r:
            return ingest(
                r,
                r.size,
                template=template,
                begin=begin,
                digest=digest,
                max_bytes=max_bytes,
                buffer=buffer,
            )
    except ObjectNotFound:
        raise UpdateRejected(Reason.MISSING, "the update file was not uploaded") from None
    except ModelFileError as exc:
        raise UpdateRejected.from_file_error(exc) from None
