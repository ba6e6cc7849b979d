"""Model files: safetensors read/write, header checks, numpy and torch helpers.

A model is an ordered mapping ``name -> numpy array``. Files are safetensors
(no pickle, dtype kept). Pure module apart from reading and writing the file it
is given; it imports no network or storage modules. torch is imported lazily.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkube.digest import MODEL_ALGORITHM, file_digest, new_hasher
from fedkube.errors import ModelFileError
from fedkube.vocabulary import Reason

# safetensors dtype codes <-> numpy dtypes (bfloat16 has no numpy dtype).
_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "U64": np.dtype("<u8"),
    "BOOL": np.dtype("?"),
}
_CODES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024
#: bytes a ranged read of a model's header fetches first (most headers fit in it)
HEADER_PROBE = 64 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors code, e.g. "F32"
    shape: tuple[int, ...]
    start: int  # byte offset into the data section
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ModelHeader:
    """The parsed header of a safetensors file, in file (offset) order."""

    tensors: tuple[TensorInfo, ...]
    data_offset: int  # where the data section starts in the file
    metadata: dict[str, str]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def signature(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """Names, dtypes and shapes sorted by name: what two compatible models share."""
        return sorted((t.name, t.dtype, t.shape) for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return max((t.end for t in self.tensors), default=0)


def numpy_dtype(code: str) -> np.dtype[Any]:
    """The numpy dtype of a safetensors dtype code (``"F32"`` -> float32)."""
    return _DTYPES[code]


def _dtype_code(arr: np.ndarray) -> str:
    try:
        return _CODES[arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype]
    except KeyError:
        raise ModelFileError(
            f"unsupported dtype {arr.dtype} (supported: {sorted(_DTYPES)})", Reason.WRONG_DTYPE
        ) from None


def save_model(
    path: str | Path,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    *,
    algorithm: str = MODEL_ALGORITHM,
) -> str:
    """Write tensors to a safetensors file atomically; return the hex digest of its
    bytes by `algorithm` (`fedkube.digest`: sha256, a global model's lineage, by
    default), computed while writing.

    Tensors are written in the mapping's order. The file appears under its name
    only when complete (write to a temporary name, fsync, rename).
    """
    p = Path(path)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays: list[np.ndarray] = []
    for name, value in tensors.items():
        arr = np.asarray(value)  # keeps 0-d tensors 0-d (ascontiguousarray would not)
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        code = _dtype_code(arr)
        header[name] = {
            "dtype": code,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
        arrays.append(arr)
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)  # align the data section to 8 bytes
    # Unique per call (not only per process): threads may save the same path.
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    h = new_hasher(algorithm)
    try:
        with open(tmp, "wb") as f:
            for chunk in (struct.pack("<Q", len(hbytes)), hbytes):
                f.write(chunk)
                h.update(chunk)
            for arr in arrays:
                mv = arr.reshape(-1).view(np.uint8).data if arr.size else memoryview(b"")
                f.write(mv)
                h.update(mv)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return h.hexdigest()


def _ints(value: object) -> tuple[int, ...] | None:
    if isinstance(value, list) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    ):
        return tuple(value)
    return None


def _entry(name: str, entry: object) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """dtype, shape and data_offsets of a header entry, with strict types (a string
    shape or float offsets would otherwise be misread rather than rejected)."""
    if isinstance(entry, dict) and isinstance(entry.get("dtype"), str):
        shape = _ints(entry.get("shape"))
        offsets = _ints(entry.get("data_offsets"))
        if shape is not None and offsets is not None and len(offsets) == 2:
            return entry["dtype"], shape, offsets
    raise ModelFileError(f"model file is corrupt: bad header entry for {name!r}")


def check_size(size: int, max_bytes: int | None = None) -> None:
    """ModelFileError unless a `size`-byte file can be a safetensors file within `max_bytes`."""
    if max_bytes is not None and size > max_bytes:
        raise ModelFileError(
            f"model file is {size} bytes, over the limit of {max_bytes} bytes", Reason.TOO_LARGE
        )
    if size < 8:
        raise ModelFileError(f"model file is corrupt: {size} bytes is too short for safetensors")


def header_length(first8: bytes, size: int) -> int:
    """The JSON header's length from a `size`-byte file's first 8 bytes (ModelFileError
    when it cannot fit the file)."""
    (hlen,) = struct.unpack("<Q", first8)
    if hlen > min(_MAX_HEADER, size - 8):
        raise ModelFileError(
            f"model file is corrupt: header length {hlen} does not fit a {size}-byte file"
        )
    return int(hlen)


def parse_header(raw: bytes, size: int) -> ModelHeader:
    """Parse and check the JSON header `raw` (the bytes after the first 8) of a
    `size`-byte safetensors file.

    Raises ModelFileError for a header that is not safetensors, or whose offsets do
    not tile the data section exactly."""
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError("model file is corrupt: header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ModelFileError("model file is corrupt: header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise ModelFileError("model file is corrupt: __metadata__ is not a JSON object")
    infos: list[TensorInfo] = []
    for name, entry in header.items():
        dtype, shape, (start, end) = _entry(name, entry)
        if dtype not in _DTYPES:
            raise ModelFileError(f"tensor {name!r}: unsupported dtype {dtype}", Reason.WRONG_DTYPE)
        if any(d < 0 for d in shape) or end - start != math.prod(shape) * _DTYPES[dtype].itemsize:
            raise ModelFileError(
                f"model file is corrupt: tensor {name!r} size does not match shape"
            )
        infos.append(TensorInfo(name, dtype, shape, start, end))
    infos.sort(key=lambda t: (t.start, t.end))
    pos = 0
    for t in infos:
        if t.start != pos:
            raise ModelFileError(f"model file is corrupt: tensor {t.name!r} offsets overlap or gap")
        pos = t.end
    data_offset = 8 + len(raw)
    if data_offset + pos != size:
        raise ModelFileError(
            f"model file is corrupt: header describes {data_offset + pos} bytes, file has {size}"
        )
    return ModelHeader(tuple(infos), data_offset, {str(k): str(v) for k, v in meta.items()})


def read_header(path: str | Path, *, max_bytes: int | None = None) -> ModelHeader:
    """Parse and check a safetensors header without reading the tensor data.

    Raises ModelFileError for a file that is too large, truncated, not
    safetensors, or whose offsets do not tile the data section exactly.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {p.name}: {exc.strerror}") from None
    check_size(size, max_bytes)
    with open(p, "rb") as f:
        hlen = header_length(f.read(8), size)
        raw = f.read(hlen)
    return parse_header(raw, size)


class MappedModel:
    """A safetensors file mapped read-only into memory: tensors are views, not copies.

    Use as a context manager; the views are invalid after close().
    """

    def __init__(self, path: str | Path, *, max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.header = read_header(self.path, max_bytes=max_bytes)
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        size = os.fstat(self._file.fileno()).st_size
        self._mmap: mmap.mmap | None = (
            mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        )

    def __enter__(self) -> MappedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._mmap is not None:
            # A view that escaped keeps the mapping alive until it is collected.
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None
        self._file.close()

    def tensor(self, info: TensorInfo) -> np.ndarray:
        assert self._mmap is not None
        dt = _DTYPES[info.dtype]
        return np.frombuffer(
            self._mmap, dtype=dt, count=info.numel, offset=self.header.data_offset + info.start
        ).reshape(info.shape)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for info in self.header.tensors:
            yield info.name, self.tensor(info)

    def flat(self, dtype: str = "F32") -> np.ndarray | None:
        """The whole data section as one 1-D array if every tensor has `dtype`."""
        if self._mmap is None or any(t.dtype != dtype for t in self.header.tensors):
            return None
        dt = _DTYPES[dtype]
        return np.frombuffer(
            self._mmap,
            dtype=dt,
            count=self.header.nbytes // dt.itemsize,
            offset=self.header.data_offset,
        )


def load_model(path: str | Path, *, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Read a safetensors file into an ordered dict of (writable) numpy arrays."""
    with MappedModel(path, max_bytes=max_bytes) as m:
        return {name: np.array(arr) for name, arr in m.items()}


def check_compatible(expected: ModelHeader, got: ModelHeader) -> None:
    """Raise ModelFileError naming the first tensor whose name, shape or dtype differ."""
    exp = {t.name: t for t in expected.tensors}
    have = {t.name: t for t in got.tensors}
    missing = sorted(exp.keys() - have.keys())
    extra = sorted(have.keys() - exp.keys())
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}")
        if extra:
            parts.append(f"unexpected tensors {extra[:5]}")
        raise ModelFileError("wrong tensor names: " + "; ".join(parts), Reason.WRONG_NAMES)
    for name, e in exp.items():
        g = have[name]
        if g.shape != e.shape:
            raise ModelFileError(
                f"tensor {name!r}: shape {list(g.shape)}, expected {list(e.shape)}",
                Reason.WRONG_SHAPE,
            )
        if g.dtype != e.dtype:
            raise ModelFileError(
                f"tensor {name!r}: dtype {g.dtype}, expected {e.dtype}", Reason.WRONG_DTYPE
            )


def check_finite(model: MappedModel, chunk: int = 1 << 22) -> None:
    """Raise ModelFileError naming the first floating tensor holding NaN or Inf."""
    for info in model.header.tensors:
        if info.dtype not in ("F16", "F32", "F64"):
            continue
        arr = model.tensor(info).reshape(-1)
        for i in range(0, arr.size, chunk):
            if not np.isfinite(arr[i : i + chunk]).all():
                raise ModelFileError(
                    f"tensor {info.name!r} holds NaN or Inf values", Reason.NOT_FINITE
                )


def sha256_file(path: str | Path, bufsize: int = 1 << 20) -> str:
    """The bare sha256 hex digest of a file (a model's lineage, `ModelRecord.sha256`)."""
    return file_digest(path, MODEL_ALGORITHM, bufsize).partition(":")[2]


# ---------------------------------------------------------------- torch helpers


def from_torch(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A torch state dict -> ordered numpy tensors (copies, on CPU)."""
    out: dict[str, np.ndarray] = {}
    for name, t in state_dict.items():
        out[name] = t.detach().cpu().contiguous().numpy().copy()
    return out


def to_torch(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Ordered numpy tensors -> a torch state dict (for `module.load_state_dict`)."""
    import torch

    return {name: torch.from_numpy(np.array(arr, copy=True)) for name, arr in tensors.items()}


def save_torch(
    path: str | Path, module_or_state: Any, metadata: Mapping[str, str] | None = None
) -> str:
    sd = module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else module_or_state
    return save_model(path, from_torch(sd), metadata)


def load_torch(path: str | Path) -> dict[str, Any]:
    return to_torch(load_model(path))
