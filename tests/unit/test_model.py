"""Model files: safetensors write/read, header checks, interop and torch helpers."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from fedkube.errors import ModelFileError
from fedkube.model import (
    MappedModel,
    check_compatible,
    check_finite,
    from_torch,
    load_model,
    load_torch,
    read_header,
    save_model,
    save_torch,
    sha256_file,
    to_torch,
)

# safetensors code -> numpy dtype, every dtype save_model supports.
DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "U16": np.uint16,
    "U32": np.uint32,
    "U64": np.uint64,
    "BOOL": np.bool_,
}


def sample(dtype: Any, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -100), min(info.max, 100), size=shape, dtype=dtype)


def all_dtypes_model() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for i, (code, dt) in enumerate(DTYPES.items()):
        out[f"{code.lower()}.matrix"] = sample(dt, (3, 5), seed=i)
        out[f"{code.lower()}.scalar"] = sample(dt, (), seed=100 + i)
    return out


def write_raw(path: Path, header: Any, data: bytes = b"", *, hlen: int | None = None) -> Path:
    """A hand-made safetensors file (possibly corrupt)."""
    hbytes = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(hbytes) if hlen is None else hlen
    path.write_bytes(struct.pack("<Q", n) + hbytes + data)
    return path


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ---------------------------------------------------------------- round trip


def test_round_trip_every_dtype_including_0d(tmp_path: Path) -> None:
    tensors = all_dtypes_model()
    path = tmp_path / "m.safetensors"
    save_model(path, tensors)
    loaded = load_model(path)
    assert_same(tensors, loaded)
    assert loaded["f32.scalar"].shape == ()
    assert loaded["bool.scalar"].dtype == np.bool_
    header = read_header(path)
    assert {t.name: t.dtype for t in header.tensors} == {
        f"{code.lower()}.{kind}": code for code in DTYPES for kind in ("matrix", "scalar")
    }


@pytest.mark.parametrize("code", sorted(DTYPES))
def test_round_trip_single_dtype(tmp_path: Path, code: str) -> None:
    tensors = {"x": sample(DTYPES[code], (4, 2)), "s": sample(DTYPES[code], ())}
    save_model(tmp_path / "m.safetensors", tensors)
    assert_same(tensors, load_model(tmp_path / "m.safetensors"))


def test_order_and_metadata_are_kept(tmp_path: Path) -> None:
    names = ["zeta", "alpha", "mid.weight", "beta"]
    tensors = {n: np.full((2,), i, np.float32) for i, n in enumerate(names)}
    path = tmp_path / "m.safetensors"
    save_model(path, tensors, {"round": "3", "attempt": "1"})
    header = read_header(path)
    assert header.names == names
    assert header.metadata == {"round": "3", "attempt": "1"}
    assert list(load_model(path)) == names
    # signature() is the order-independent view two compatible models share.
    assert [s[0] for s in header.signature()] == sorted(names)


def test_empty_model_and_zero_size_tensors(tmp_path: Path) -> None:
    save_model(tmp_path / "empty.safetensors", {})
    assert load_model(tmp_path / "empty.safetensors") == {}
    tensors = {"a": np.ones(2, np.float32), "none": np.zeros((0, 3), np.float32)}
    save_model(tmp_path / "z.safetensors", tensors)
    assert_same(tensors, load_model(tmp_path / "z.safetensors"))


def test_non_contiguous_and_big_endian_input(tmp_path: Path) -> None:
    tensors: dict[str, np.ndarray] = {
        "strided": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
        "transposed": np.arange(6, dtype=np.int64).reshape(2, 3).T,
        "big": np.arange(5, dtype=">f4"),
    }
    save_model(tmp_path / "m.safetensors", tensors)
    loaded = load_model(tmp_path / "m.safetensors")
    for name, arr in tensors.items():
        np.testing.assert_array_equal(loaded[name], arr)
    assert loaded["big"].dtype == np.dtype("<f4")


def test_returned_sha256_is_the_file_digest(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    digest = save_model(path, all_dtypes_model(), {"k": "v"})
    assert digest == sha256_file(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path, bufsize=7) == digest


def test_loaded_arrays_are_writable_copies(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(path, {"w": np.zeros(3, np.float32)})
    loaded = load_model(path)
    loaded["w"][0] = 1.0  # must not raise, must not touch the file
    assert load_model(path)["w"][0] == 0.0


# ---------------------------------------------------------------- atomic write


def test_unsupported_dtype_raises_and_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    bad = {"ok": np.zeros(2, np.float32), "text": np.array(["a", "b"])}
    with pytest.raises(ModelFileError, match="unsupported dtype"):
        save_model(path, bad)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ModelFileError, match="unsupported dtype"):
        save_model(path, {"c": np.zeros(2, np.complex64)})
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_keeps_the_old_file_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.safetensors"
    old = {"w": np.zeros(1000, np.float32)}
    digest = save_model(path, old)

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        save_model(path, {"w": np.ones(1000, np.float32)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert sha256_file(path) == digest
    assert_same(old, load_model(path))


def test_concurrent_saves_to_one_path_all_succeed(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    digests: list[str] = []
    errors: list[BaseException] = []

    def save(i: int) -> None:
        try:
            digests.append(save_model(path, {"w": np.full(10_000, i, np.float32)}))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sha256_file(path) in digests
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


# ---------------------------------------------------------------- read_header errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot read model file"):
        read_header(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("size", [0, 1, 7])
def test_file_too_short(tmp_path: Path, size: int) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\x01" * size)
    with pytest.raises(ModelFileError, match=f"{size} bytes is too short"):
        read_header(path)


def test_header_length_beyond_file(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "m.safetensors", {}, hlen=1000)
    with pytest.raises(ModelFileError, match="header length 1000 does not fit"):
        read_header(path)
    path = write_raw(tmp_path / "m.safetensors", b"", hlen=2**63)
    with pytest.raises(ModelFileError, match="does not fit"):
        read_header(path)


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe{}", b""])
def test_header_not_json(tmp_path: Path, raw: bytes) -> None:
    path = write_raw(tmp_path / "m.safetensors", raw)
    with pytest.raises(ModelFileError, match="header is not valid JSON"):
        read_header(path)


@pytest.mark.parametrize("header", [[1, 2], "x", 3, None])
def test_header_not_an_object(tmp_path: Path, header: Any) -> None:
    path = write_raw(tmp_path / "m.safetensors", header)
    with pytest.raises(ModelFileError, match="header is not a JSON object"):
        read_header(path)


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [1]},  # no data_offsets
        {"shape": [1], "data_offsets": [0, 4]},  # no dtype
        {"dtype": "F32", "data_offsets": [0, 4]},  # no shape
        "F32",
        [1, 2],
        {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]},
        {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]},
        {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]},
    ],
)
def test_bad_header_entry(tmp_path: Path, entry: Any) -> None:
    path = write_raw(tmp_path / "m.safetensors", {"w": entry}, b"\0" * 4)
    with pytest.raises(ModelFileError, match="bad header entry for 'w'"):
        read_header(path)


def test_metadata_not_an_object(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "m.safetensors", {"__metadata__": [1]})
    with pytest.raises(ModelFileError, match="__metadata__"):
        read_header(path)


@pytest.mark.parametrize("dtype", ["BF16", "F8_E4M3", "C64", "f32"])
def test_unsupported_dtype_in_file(tmp_path: Path, dtype: str) -> None:
    header = {"w": {"dtype": dtype, "shape": [2], "data_offsets": [0, 4]}}
    path = write_raw(tmp_path / "m.safetensors", header, b"\0" * 4)
    with pytest.raises(ModelFileError, match=f"tensor 'w': unsupported dtype {dtype}"):
        read_header(path)


@pytest.mark.parametrize(
    ("shape", "offsets"), [([2], [0, 4]), ([3], [0, 16]), ([-1], [0, 4]), ([], [0, 0])]
)
def test_size_not_matching_shape(tmp_path: Path, shape: list[int], offsets: list[int]) -> None:
    header = {"w": {"dtype": "F32", "shape": shape, "data_offsets": offsets}}
    path = write_raw(tmp_path / "m.safetensors", header, b"\0" * offsets[1])
    with pytest.raises(ModelFileError, match="tensor 'w' size does not match shape"):
        read_header(path)


def test_overlapping_offsets(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    path = write_raw(tmp_path / "m.safetensors", header, b"\0" * 12)
    with pytest.raises(ModelFileError, match="tensor 'b' offsets overlap or gap"):
        read_header(path)


def test_gapped_offsets(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
    }
    path = write_raw(tmp_path / "m.safetensors", header, b"\0" * 20)
    with pytest.raises(ModelFileError, match="tensor 'b' offsets overlap or gap"):
        read_header(path)


def test_data_not_starting_at_zero(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}
    path = write_raw(tmp_path / "m.safetensors", header, b"\0" * 8)
    with pytest.raises(ModelFileError, match="tensor 'a' offsets overlap or gap"):
        read_header(path)


def test_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(path, {"w": np.zeros(4, np.float32)})
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelFileError, match=f"header describes {size} bytes, file has {size + 1}"):
        read_header(path)


def test_truncated_data(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(path, {"w": np.zeros(4, np.float32)})
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 1)
    with pytest.raises(ModelFileError, match=f"header describes {size} bytes, file has {size - 1}"):
        read_header(path)


def test_over_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(path, {"w": np.zeros(100, np.float32)})
    size = path.stat().st_size
    assert read_header(path, max_bytes=size).nbytes == 400
    with pytest.raises(ModelFileError, match=f"{size} bytes, over the limit of {size - 1}"):
        read_header(path, max_bytes=size - 1)
    with pytest.raises(ModelFileError, match="over the limit"):
        load_model(path, max_bytes=size - 1)


# ---------------------------------------------------------------- check_compatible


def header_of(tmp_path: Path, name: str, tensors: dict[str, np.ndarray]) -> Any:
    save_model(tmp_path / name, tensors)
    return read_header(tmp_path / name)


def test_compatible_models_pass_in_any_order(tmp_path: Path) -> None:
    a = header_of(tmp_path, "a", {"x": np.zeros(2, np.float32), "y": np.zeros((), np.int64)})
    b = header_of(tmp_path, "b", {"y": np.ones((), np.int64), "x": np.ones(2, np.float32)})
    check_compatible(a, b)


def test_incompatible_names(tmp_path: Path) -> None:
    exp = header_of(tmp_path, "e", {"x": np.zeros(2), "y": np.zeros(2)})
    fewer = header_of(tmp_path, "f", {"x": np.zeros(2)})
    more = header_of(tmp_path, "m", {"x": np.zeros(2), "y": np.zeros(2), "z": np.zeros(2)})
    other = header_of(tmp_path, "o", {"x": np.zeros(2), "q": np.zeros(2)})
    with pytest.raises(ModelFileError, match=r"missing tensors \['y'\]"):
        check_compatible(exp, fewer)
    with pytest.raises(ModelFileError, match=r"unexpected tensors \['z'\]"):
        check_compatible(exp, more)
    with pytest.raises(
        ModelFileError, match=r"missing tensors \['y'\]; unexpected tensors \['q'\]"
    ):
        check_compatible(exp, other)


def test_incompatible_shape_names_the_tensor(tmp_path: Path) -> None:
    exp = header_of(tmp_path, "e", {"a": np.zeros(2), "fc.weight": np.zeros((3, 4))})
    got = header_of(tmp_path, "g", {"a": np.zeros(2), "fc.weight": np.zeros((4, 3))})
    with pytest.raises(
        ModelFileError, match=r"tensor 'fc\.weight': shape \[4, 3\], expected \[3, 4\]"
    ):
        check_compatible(exp, got)


def test_incompatible_dtype_names_the_tensor(tmp_path: Path) -> None:
    exp = header_of(tmp_path, "e", {"a": np.zeros(2, np.float32), "b": np.zeros((), np.int64)})
    got = header_of(tmp_path, "g", {"a": np.zeros(2, np.float32), "b": np.zeros((), np.int32)})
    with pytest.raises(ModelFileError, match="tensor 'b': dtype I32, expected I64"):
        check_compatible(exp, got)


# ---------------------------------------------------------------- check_finite


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite_names_the_tensor(tmp_path: Path, dtype: Any, bad: float) -> None:
    w = np.zeros(10, dtype)
    w[-1] = bad
    path = tmp_path / "m.safetensors"
    save_model(path, {"ok": np.ones(3, dtype), "layer.w": w, "n": np.zeros(2, np.int64)})
    with MappedModel(path) as m, pytest.raises(ModelFileError, match=r"tensor 'layer\.w'"):
        check_finite(m, chunk=3)  # the bad value is in the last chunk


def test_check_finite_accepts_finite_and_ignores_integers(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(path, {**all_dtypes_model(), "big": np.full(3, 6e4, np.float16)})
    with MappedModel(path) as m:
        check_finite(m)


# ---------------------------------------------------------------- MappedModel


def test_flat_is_a_view_when_all_f32(tmp_path: Path) -> None:
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.full((), 7, np.float32)}
    path = tmp_path / "m.safetensors"
    save_model(path, tensors)
    with MappedModel(path) as m:
        flat = m.flat()
        assert flat is not None
        assert not flat.flags.owndata and not flat.flags.writeable
        np.testing.assert_array_equal(flat, [0, 1, 2, 3, 4, 5, 7])
        assert m.flat("F64") is None
        views = dict(m.items())
        assert np.shares_memory(views["a"], flat)
        assert not views["a"].flags.writeable
        del flat, views


def test_flat_is_none_with_mixed_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(path, {"a": np.zeros(2, np.float32), "steps": np.zeros((), np.int64)})
    with MappedModel(path) as m:
        assert m.flat() is None
    save_model(path, {"a": np.zeros(2, np.float64), "b": np.ones(2, np.float64)})
    with MappedModel(path) as m:
        assert m.flat() is None
        flat64 = m.flat("F64")
        assert flat64 is not None and flat64.tolist() == [0, 0, 1, 1]
        del flat64


# ---------------------------------------------------------------- safetensors interop


def test_files_written_by_safetensors_are_read(tmp_path: Path) -> None:
    tensors = all_dtypes_model()
    path = tmp_path / "st.safetensors"
    safetensors.numpy.save_file(tensors, str(path), metadata={"format": "np", "round": "2"})
    header = read_header(path)
    assert header.metadata == {"format": "np", "round": "2"}
    assert sorted(header.names) == sorted(tensors)
    loaded = load_model(path)
    assert set(loaded) == set(tensors)
    for name, arr in tensors.items():
        assert loaded[name].dtype == arr.dtype, name
        assert loaded[name].shape == arr.shape, name
        np.testing.assert_array_equal(loaded[name], arr, err_msg=name)


def test_files_written_by_save_model_are_read_by_safetensors(tmp_path: Path) -> None:
    tensors = all_dtypes_model()
    path = tmp_path / "fk.safetensors"
    save_model(path, tensors, {"round": "4"})
    loaded = safetensors.numpy.load_file(str(path))
    assert set(loaded) == set(tensors)
    for name, arr in tensors.items():
        assert loaded[name].dtype == arr.dtype, name
        assert loaded[name].shape == arr.shape, name
        np.testing.assert_array_equal(loaded[name], arr, err_msg=name)
    with safetensors.safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"round": "4"}


# ---------------------------------------------------------------- torch helpers


@pytest.mark.torch
def test_torch_state_dict_round_trip(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    def net() -> Any:
        return torch.nn.Sequential(
            torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
        )

    src = net()
    src.train()
    for _ in range(3):
        src(torch.randn(8, 3))  # updates running stats and num_batches_tracked
    sd = src.state_dict()

    tensors = from_torch(sd)
    assert list(tensors) == list(sd)
    nbt = tensors["1.num_batches_tracked"]
    assert nbt.shape == () and nbt.dtype == np.int64 and int(nbt) == 3

    path = tmp_path / "torch.safetensors"
    save_model(path, tensors)
    restored = to_torch(load_model(path))
    dst = net()
    dst.load_state_dict(restored, strict=True)
    for name, t in dst.state_dict().items():
        assert t.dtype == sd[name].dtype, name
        assert t.shape == sd[name].shape, name
        assert torch.equal(t, sd[name]), name
    assert dst.state_dict()["1.num_batches_tracked"].item() == 3

    # The convenience wrappers do the same in one call.
    digest = save_torch(tmp_path / "m2.safetensors", src, {"round": "1"})
    assert digest == sha256_file(tmp_path / "m2.safetensors")
    again = load_torch(tmp_path / "m2.safetensors")
    assert all(torch.equal(again[k], v) for k, v in sd.items())
