"""Checks an update file against the global model before it is aggregated.

Every failure raises UpdateRejected with a short machine reason (also used in
Ack.reason, update records and events) and a message naming the problem.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from fedkube.errors import ModelFileError, UpdateRejected
from fedkube.model import MappedModel, ModelHeader, check_compatible, check_finite, sha256_file


def _reason_for(msg: str) -> str:
    if "over the limit" in msg:
        return "too_large"
    if "wrong tensor names" in msg:
        return "wrong_names"
    if ": shape " in msg:
        return "wrong_shape"
    if ": dtype " in msg or "unsupported dtype" in msg:
        return "wrong_dtype"
    if "NaN or Inf" in msg:
        return "not_finite"
    return "corrupt"


def check_report(num_examples: int, metrics: Mapping[str, float]) -> None:
    if num_examples <= 0:
        raise UpdateRejected("bad_weight", f"num_examples must be > 0, got {num_examples}")
    for k, v in metrics.items():
        if not math.isfinite(v):
            raise UpdateRejected("bad_metrics", f"metric {k!r} is not finite ({v})")


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
        raise UpdateRejected("missing", "the update file was not uploaded")
    if sha256:
        actual = sha256_file(p)
        if actual != sha256:
            raise UpdateRejected(
                "checksum", f"sha256 mismatch: reported {sha256[:12]}..., file has {actual[:12]}..."
            )
    try:
        model = MappedModel(p, max_bytes=max_bytes)
    except ModelFileError as exc:
        raise UpdateRejected(_reason_for(str(exc)), str(exc)) from None
    try:
        if template is not None:
            check_compatible(template, model.header)
        check_finite(model)
    except ModelFileError as exc:
        model.close()
        raise UpdateRejected(_reason_for(str(exc)), str(exc)) from None
    return model
