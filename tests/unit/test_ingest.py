"""The one-pass ingest (fedkube.ingest): a streamed update folds to exactly what
`add` of the mapped file gives, and an update rejected half-way (a NaN in its
last chunk, a digest mismatch, a stream that stops short or runs long) leaves
the running sums bit-identical to before it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from fedkube.aggregate import CoordinateMedian, TrimmedMean, WeightedMean
from fedkube.aggregate.base import Aggregator
from fedkube.digest import UPDATE_ALGORITHM, file_digest, format_digest, parse_digest
from fedkube.errors import ModelFileError
from fedkube.ingest import ChunkBuffer, ingest
from fedkube.model import MappedModel, read_header, save_model

RNG = np.random.default_rng(7)


def f32_model(n: int = 10_000) -> dict[str, np.ndarray]:
    return {
        "a.weight": RNG.standard_normal((n // 100, 100)).astype(np.float32),
        "a.bias": RNG.standard_normal(37).astype(np.float32),
        "b.weight": RNG.standard_normal(n).astype(np.float32),
    }


def mixed_model() -> dict[str, np.ndarray]:
    return {
        "h": RNG.standard_normal(999).astype(np.float16),
        "w": RNG.standard_normal((33, 17)).astype(np.float32),
        "d": RNG.standard_normal(501).astype(np.float64),
        "steps": RNG.integers(0, 1000, 13).astype(np.int32),
        "mask": RNG.integers(0, 2, 7).astype(bool),
    }


def write(tmp_path: Path, name: str, tensors: dict[str, np.ndarray]) -> Path:
    path = tmp_path / f"{name}.safetensors"
    save_model(path, tensors)
    return path


def stream(path: Path | bytes) -> io.BufferedIOBase:
    return io.BytesIO(path if isinstance(path, bytes) else path.read_bytes())


def fold(agg: Aggregator, data: Path | bytes, weight: float, **kw: object) -> None:
    raw = data if isinstance(data, bytes) else data.read_bytes()
    size = kw.pop("size", len(raw))
    ingest(
        io.BytesIO(raw),
        size,  # type: ignore[arg-type]
        template=agg.template,
        begin=lambda h: agg.begin(h, weight),
        buffer=kw.pop("buffer", ChunkBuffer(128)),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def sums(mean: WeightedMean) -> bytes:
    """Every running sum, as bytes (bit-identity, NaN included)."""
    return b"".join(mean._acc[t.name].tobytes() for t in mean.template.tensors)


@pytest.mark.parametrize("make", [f32_model, mixed_model])
@pytest.mark.parametrize("chunk", [64, 128, 1 << 20])
def test_streamed_fold_equals_add_of_the_mapped_file(
    tmp_path: Path, make: object, chunk: int
) -> None:
    models = [make() for _ in range(3)]  # type: ignore[operator]
    paths = [write(tmp_path, f"u{i}", m) for i, m in enumerate(models)]
    # the same tensors in another order: another layout of the data section
    reordered = write(tmp_path, "rev", dict(reversed(list(models[0].items()))))
    template = read_header(paths[0])
    by_add, by_stream = WeightedMean(template), WeightedMean(template)
    for path, w in [*zip(paths, (3.0, 1.0, 7.5), strict=True), (reordered, 2.0)]:
        with MappedModel(path) as m:
            by_add.add(m, w)
        fold(by_stream, path, w, buffer=ChunkBuffer(chunk))
    assert sums(by_stream) == sums(by_add)
    assert (by_stream.n_updates, by_stream.total_weight) == (4, 13.5)
    for name, value in by_add.result().items():
        assert by_stream.result()[name].tobytes() == value.tobytes()


def with_nan_at_the_end(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    bad = {k: v.copy() for k, v in tensors.items()}
    last = list(bad)[-1]
    bad[last].reshape(-1)[-1] = np.nan
    return bad


@pytest.mark.parametrize("make", [f32_model, mixed_model])
def test_an_update_rejected_half_way_leaves_the_sums_bit_identical(
    tmp_path: Path, make: object
) -> None:
    good = write(tmp_path, "good", make())  # type: ignore[operator]
    template = read_header(good)
    mean = WeightedMean(template)
    fold(mean, good, 2.0)
    before = sums(mean), mean.n_updates, mean.total_weight
    nan_last = with_nan_at_the_end(make())  # type: ignore[operator]
    if nan_last[list(nan_last)[-1]].dtype.kind != "f":  # mixed: NaN in the last float tensor
        nan_last = make()  # type: ignore[operator]
        nan_last["d"][-1] = np.inf
    bad = write(tmp_path, "nan", nan_last).read_bytes()
    other = write(tmp_path, "other", make()).read_bytes()  # type: ignore[operator]
    cases: list[tuple[bytes, dict[str, object], str]] = [
        (bad, {}, "NaN or Inf"),
        (other, {"digest": format_digest(UPDATE_ALGORITHM, "0" * 32)}, "digest mismatch"),
        (other, {"digest": "sha256:" + "0" * 64}, "digest mismatch"),
        (other + b"\0" * 8, {"size": len(other)}, "more than"),  # the stream runs long
    ]
    for data, kw, message in cases:
        with pytest.raises(ModelFileError, match=message):
            fold(mean, data, 5.0, **kw)
        assert (sums(mean), mean.n_updates, mean.total_weight) == before, message
    # a stream that stops short (declared size kept): the folded chunks are undone
    with pytest.raises(ModelFileError, match="ended at byte"):
        ingest(
            io.BytesIO(other[:-100]),
            len(other),
            template=template,
            begin=lambda h: mean.begin(h, 5.0),
            buffer=ChunkBuffer(64),
        )
    assert (sums(mean), mean.n_updates, mean.total_weight) == before
    # and the aggregator still works: the good update folds as the first did
    fold(mean, good, 2.0)
    twice = WeightedMean(template)
    for _ in range(2):
        fold(twice, good, 2.0)
    assert sums(mean) == sums(twice)


def test_digest_is_computed_over_every_byte_and_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "u", f32_model())
    digest = file_digest(path)
    assert parse_digest(digest)[0] == "xxh3-128"
    got = ingest(stream(path), path.stat().st_size, template=None, digest=digest)
    assert got.digest == digest
    sha = file_digest(path, "sha256")
    assert ingest(stream(path), path.stat().st_size, template=None, digest=sha).digest == sha
    bare = sha.split(":", 1)[1]  # a bare sha256, as clients before the prefix reported
    ingest(stream(path), path.stat().st_size, template=None, digest=bare)
    for bad in ("md5:00", "xxh3-128:zz", "xxh3-128:" + "0" * 31, "nonsense"):
        with pytest.raises(ModelFileError, match="digest") as exc:
            ingest(stream(path), path.stat().st_size, template=None, digest=bad)
        assert exc.value.reason == "checksum"


def test_header_and_size_are_checked_before_any_data_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, "u", f32_model())
    template = read_header(path)
    size = path.stat().st_size
    with pytest.raises(ModelFileError) as exc:
        ingest(stream(path), size, template=template, max_bytes=size - 1)
    assert exc.value.reason == "too_large"
    other = write(tmp_path, "o", {"x": np.zeros(3, np.float32)})
    with pytest.raises(ModelFileError) as exc:
        ingest(stream(other), other.stat().st_size, template=template)
    assert exc.value.reason == "wrong_names"

    class Counting(io.BytesIO):
        read_bytes = 0

        def readinto(self, b: object) -> int:  # type: ignore[override]
            n = super().readinto(b)  # type: ignore[arg-type]
            Counting.read_bytes += n
            return n

    with pytest.raises(ModelFileError):
        ingest(Counting(other.read_bytes()), other.stat().st_size, template=template)
    assert Counting.read_bytes == read_header(other).data_offset  # the header, no data


@pytest.mark.parametrize("cls", [CoordinateMedian, TrimmedMean])
def test_spilled_aggregators_stream_too_and_forget_an_aborted_update(
    tmp_path: Path, cls: type[Aggregator]
) -> None:
    models = [mixed_model() for _ in range(3)]
    paths = [write(tmp_path, f"u{i}", m) for i, m in enumerate(models)]
    template = read_header(paths[0])
    by_add = cls(template, spill_dir=tmp_path / "a")  # type: ignore[call-arg]
    by_stream = cls(template, spill_dir=tmp_path / "b")  # type: ignore[call-arg]
    for i, path in enumerate(paths):
        with MappedModel(path) as m:
            by_add.add(m, 1.0)
        fold(by_stream, path, 1.0)
        if i == 1:
            bad = write(tmp_path, "bad", mixed_model() | {"d": np.full(501, np.nan)})
            with pytest.raises(ModelFileError):
                fold(by_stream, bad, 1.0)
    assert by_stream.n_updates == 3
    assert len(list((tmp_path / "b").rglob("*.f32"))) == 3  # the aborted file is gone
    for name, value in by_add.result().items():
        np.testing.assert_array_equal(by_stream.result()[name], value)


def test_one_update_at_a_time(tmp_path: Path) -> None:
    path = write(tmp_path, "u", f32_model())
    mean = WeightedMean(read_header(path))
    pending = mean.begin(mean.template, 1.0)
    with pytest.raises(ValueError, match="already being folded"):
        mean.begin(mean.template, 1.0)
    pending.abort()
    pending.abort()  # idempotent
    with pytest.raises(ValueError, match="committed or aborted"):
        pending.commit()
    mean.begin(mean.template, 1.0).commit()  # free again
    assert mean.n_updates == 1


def test_a_refusal_returns_only_once_no_read_is_in_flight(tmp_path: Path) -> None:
    """The reader thread reads one chunk ahead; when a chunk is refused, ingest must
    not return (and let the caller close the stream) while that read still runs."""
    import threading
    import time

    tensors = f32_model(100_000)
    tensors["a.weight"].reshape(-1)[0] = np.nan  # refused in the first chunk
    data = write(tmp_path, "nan", tensors).read_bytes()

    class Slow(io.BytesIO):
        active = 0
        lock = threading.Lock()

        def readinto(self, b: object) -> int:  # type: ignore[override]
            with self.lock:
                Slow.active += 1
            try:
                time.sleep(0.05)
                return super().readinto(b)  # type: ignore[arg-type]
            finally:
                with self.lock:
                    Slow.active -= 1

    mean = WeightedMean(read_header(write(tmp_path, "t", f32_model(100_000))))
    with ChunkBuffer(4096) as buffer, pytest.raises(ModelFileError, match="NaN"):
        try:
            ingest(Slow(data), len(data), template=mean.template,
                   begin=lambda h: mean.begin(h, 1.0), buffer=buffer)  # fmt: skip
        finally:
            assert Slow.active == 0, "ingest returned with a read of the stream in flight"
