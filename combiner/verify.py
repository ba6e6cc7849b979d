"""Checks a client's report and its update file before the update is aggregated.

Every failure raises UpdateRejected with a `fedkube.vocabulary.Reason` (also used
in Ack.reason, update records and events) and a message naming the problem.
The file checks' reasons come from the `ModelFileError` they raise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from fedkube.errors import ModelFileError, UpdateRejected
from fedkube.model import MappedModel, ModelHeader, check_compatible, check_finite, sha256_file
from fedkube.vocabulary import Reason


def check_report(num_examples: int, metrics: Mapping[str, float]) -> None:
    if num_examples <= 0:
        raise UpdateRejected(Reason.BAD_WEIGHT, f"num_examples must be > 0, got {num_examples}")
    for k, v in metrics.items():
        if not math.isfinite(v):
            raise UpdateRejected(Reason.BAD_METRICS, f"metric {k!r} is not finite ({v})")


def open_update(
    path: str | Path,
    template: ModelHeader | None,
    *,
    max_bytes: int,
    sha256: str | None = None,
) -> MappedModel:
    """Open and fully check an update file; the caller closes the returned model.

    With `template` None (a seed model, which nothing precedes) the names,
    shapes and dtypes are not compared; every other check applies."""
    p = Path(path)
    if not p.exists():
        raise UpdateRejected(Reason.MISSING, "the update file was not uploaded")
    if sha256:
        actual = sha256_file(p)
        if actual != sha256:
            raise UpdateRejected(
                Reason.CHECKSUM,
                f"sha256 mismatch: reported {sha256[:12]}..., file has {actual[:12]}...",
            )
    try:
        model = MappedModel(p, max_bytes=max_bytes)
    except ModelFileError as exc:
        raise UpdateRejected.from_file_error(exc) from None
    try:
        if template is not None:
            check_compatible(template, model.header)
        check_finite(model)
    except ModelFileError as exc:
        model.close()
        raise UpdateRejected.from_file_error(exc) from None
    return model
