"""Aggregators against hand-computed references, on real safetensors files.

Expected numbers are written out by hand in the comments next to them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.linalg.blas import daxpy, saxpy

from fedkube.aggregate import (
    Aggregator,
    CoordinateMedian,
    TrimmedMean,
    WeightedMean,
    make_aggregator,
)
from fedkube.aggregate.trimmed_mean import trim_count
from fedkube.model import MappedModel, read_header
from fedkube.spec import FedAvgAggregator, MedianAggregator, TrimmedMeanAggregator
from tests.support.model_files import ModelFiles as Files

F32 = np.float32


def _add(agg: Aggregator, path: Path, weight: float) -> None:
    with MappedModel(path) as m:
        agg.add(m, weight)


def _run(agg: Aggregator, paths: list[Path], weights: list[float]) -> dict[str, np.ndarray]:
    for p, w in zip(paths, weights, strict=True):
        _add(agg, p, w)
    return agg.result()


# ------------------------------------------------------------------ BLAS in place


def test_blas_axpy_updates_in_place_without_copy() -> None:
    # The streaming mean relies on f2py handing `y` straight to BLAS.
    buf = np.zeros(10, F32)
    y = buf[2:7]
    x = np.frombuffer(np.arange(5, dtype=F32).tobytes(), dtype=F32)  # read-only, like mmap
    r = saxpy(x, y, a=2.0)
    assert r is y
    assert buf.tolist() == [0, 0, 0, 2, 4, 6, 8, 0, 0, 0]
    y64 = np.ones(3)
    assert daxpy(np.ones(3), y64, a=0.5) is y64
    assert y64.tolist() == [1.5, 1.5, 1.5]


# ------------------------------------------------------------------ WeightedMean


def test_weighted_mean_hand_computed(files: Files) -> None:
    a = files.write({"w": np.array([1, 2, 3], F32), "b": np.array([[10.0, -2.0]], F32)})
    b = files.write({"w": np.array([3, 6, 9], F32), "b": np.array([[2.0, 2.0]], F32)})
    agg = WeightedMean(read_header(a))
    out = _run(agg, [a, b], [1, 3])
    # w: (1*1 + 3*3)/4 = 2.5, (2 + 18)/4 = 5, (3 + 27)/4 = 7.5
    # b: (10 + 6)/4 = 4, (-2 + 6)/4 = 1
    assert list(out) == ["w", "b"]
    assert out["w"].dtype == F32 and out["b"].shape == (1, 2)
    np.testing.assert_array_equal(out["w"], [2.5, 5.0, 7.5])
    np.testing.assert_array_equal(out["b"], [[4.0, 1.0]])
    assert agg.n_flat == 2 and agg.n_updates == 2 and agg.total_weight == 4.0
    # result() keeps the sums: adding more continues the same mean.
    c = files.write({"w": np.array([0, 0, 0], F32), "b": np.array([[0.0, 0.0]], F32)})
    _add(agg, c, 4)
    # w: 10/8, 20/8, 30/8
    np.testing.assert_array_equal(agg.result()["w"], [1.25, 2.5, 3.75])


def test_weighted_mean_other_layout_uses_per_tensor_path(files: Files) -> None:
    t = files.write({"w": np.array([1, 2], F32), "b": np.array([4], F32)})
    # Same tensors, written in another order: offsets differ from the template.
    u = files.write({"b": np.array([8], F32), "w": np.array([3, 4], F32)})
    agg = WeightedMean(read_header(t))
    out = _run(agg, [t, u], [1, 1])
    # w: (1+3)/2 = 2, (2+4)/2 = 3; b: (4+8)/2 = 6
    np.testing.assert_array_equal(out["w"], [2, 3])
    np.testing.assert_array_equal(out["b"], [6])
    assert agg.n_flat == 1
    agg2 = WeightedMean(read_header(t), use_flat=False)
    np.testing.assert_array_equal(_run(agg2, [t, u], [1, 1])["w"], [2, 3])
    assert agg2.n_flat == 0


def test_weighted_mean_mixed_dtypes(files: Files) -> None:
    a = files.write(
        {
            "a": np.array([1.0, 2.0], F32),
            "d": np.array([0.1, 0.2], np.float64),
            "h": np.array([1.0, 3.0], np.float16),
            "n": np.array([10, 3], np.int64),
            "m": np.array([True, False, True]),
            "u": np.array([0, 255], np.uint8),
        }
    )
    b = files.write(
        {
            "a": np.array([3.0, 6.0], F32),
            "d": np.array([0.3, 0.4], np.float64),
            "h": np.array([2.0, 5.0], np.float16),
            "n": np.array([20, 4], np.int64),
            "m": np.array([False, False, True]),
            "u": np.array([255, 255], np.uint8),
        }
    )
    agg = WeightedMean(read_header(a))
    out = _run(agg, [a, b], [1, 3])
    assert list(out) == ["a", "d", "h", "n", "m", "u"]
    assert [v.dtype for v in out.values()] == [
        F32,
        np.float64,
        np.float16,
        np.int64,
        bool,
        np.uint8,
    ]
    np.testing.assert_array_equal(out["a"], [2.5, 5.0])  # (1+9)/4, (2+18)/4
    np.testing.assert_allclose(out["d"], [0.25, 0.35], rtol=1e-14)  # (0.1+0.9)/4, (0.2+1.2)/4
    np.testing.assert_array_equal(out["h"], [1.75, 4.5])  # (1+6)/4, (3+15)/4
    np.testing.assert_array_equal(
        out["n"], [18, 4]
    )  # 70/4=17.5 -> 18 (half to even), 15/4=3.75 -> 4
    np.testing.assert_array_equal(out["m"], [False, False, True])  # 0.25, 0, 1
    np.testing.assert_array_equal(out["u"], [191, 255])  # 765/4 = 191.25, 255
    assert agg.n_flat == 0


def test_misaligned_f32_tensor(files: Files) -> None:
    # One float16 value first: the float32 tensor starts at byte 2 of the data section, so
    # its mapped view is misaligned (BLAS would need a copy; the sliced path is used).
    a = files.write({"h": np.array([1.0], np.float16), "w": np.array([1.0, 2.0, 3.0], F32)})
    b = files.write({"h": np.array([3.0], np.float16), "w": np.array([3.0, 2.0, 1.0], F32)})
    with MappedModel(a) as m:
        assert not m.tensor(m.header.tensors[1]).flags.aligned
    out = _run(WeightedMean(read_header(a)), [a, b], [1, 1])
    np.testing.assert_array_equal(out["w"], [2.0, 2.0, 2.0])  # (1+3)/2, (2+2)/2, (3+1)/2
    assert out["h"].tolist() == [2.0]
    med = CoordinateMedian(read_header(a))
    np.testing.assert_array_equal(_run(med, [a, b, a], [1, 1, 1])["w"], [1.0, 2.0, 3.0])
    med.close()


def test_weighted_mean_f16_does_not_overflow_in_f16(files: Files) -> None:
    # weight * value = 1000 * 100 = 1e5 > float16 max (65504): must be summed in float32.
    a = files.write({"h": np.array([100.0], np.float16)})
    out = _run(WeightedMean(read_header(a)), [a, a], [1000, 1000])
    assert out["h"].tolist() == [100.0]


def test_weighted_mean_bad_weight(files: Files) -> None:
    a = files.write({"w": np.array([1.0, 2.0], F32)})
    agg = WeightedMean(read_header(a))
    for bad in (0, -1.0, float("nan"), float("inf"), "x", None):
        with pytest.raises(ValueError, match="weight"):
            _add(agg, a, bad)  # type: ignore[arg-type]
    assert agg.n_updates == 0
    _add(agg, a, 2)
    np.testing.assert_array_equal(agg.result()["w"], [1.0, 2.0])


def test_wrong_model_rejected_before_summing(files: Files) -> None:
    a = files.write({"w": np.array([1.0, 2.0], F32)})
    bad_shape = files.write({"w": np.array([1.0, 2.0, 3.0], F32)})
    bad_dtype = files.write({"w": np.array([1.0, 2.0], np.float64)})
    bad_name = files.write({"v": np.array([1.0, 2.0], F32)})
    for agg in (WeightedMean(read_header(a)), CoordinateMedian(read_header(a))):
        for bad in (bad_shape, bad_dtype, bad_name):
            with pytest.raises(ValueError):
                _add(agg, bad, 1)
        _add(agg, a, 1)
        np.testing.assert_array_equal(agg.result()["w"], [1.0, 2.0])
        agg.close()


def test_result_with_nothing_added(files: Files, tmp_path: Path) -> None:
    h = read_header(files.write({"w": np.zeros(2, F32)}))
    for agg in (WeightedMean(h), CoordinateMedian(h), TrimmedMean(h, 0.1)):
        with pytest.raises(ValueError, match="no updates"):
            agg.result()
        agg.close()


def _random_model(rng: np.random.Generator, nbt: int) -> dict[str, np.ndarray]:
    return {
        "conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(F32),
        "conv.bias": rng.standard_normal(8).astype(F32),
        "bn.num_batches_tracked": np.array(nbt, np.int64),  # same on every client
        "counts": rng.integers(0, 1000, size=(5,)).astype(np.int64),
        "fc.weight": rng.standard_normal((10, 64)).astype(F32),
        "fc.bias": rng.standard_normal(10).astype(F32),
    }


def test_hierarchical_fedavg_equals_flat(files: Files) -> None:
    rng = np.random.default_rng(42)
    models = [_random_model(rng, nbt=300) for _ in range(10)]
    weights = [float(w) for w in rng.integers(1, 500, size=10)]
    paths = [files.write(m) for m in models]
    template = read_header(paths[0])

    flat = _run(WeightedMean(template), paths, weights)

    # Two combiners, each saving its partial with weight = its total weight.
    partials: list[tuple[Path, float]] = []
    for group in (range(0, 4), range(4, 10)):
        comb = WeightedMean(template)
        out = _run(comb, [paths[i] for i in group], [weights[i] for i in group])
        partials.append((files.write(out), comb.total_weight))
    reducer = WeightedMean(template)
    hier = _run(reducer, [p for p, _ in partials], [w for _, w in partials])
    assert reducer.total_weight == sum(weights)

    # An independent float64 reference.
    wsum = sum(weights)
    shapes = {t.name: t.shape for t in template.tensors}
    for name, value in flat.items():
        assert value.dtype == models[0][name].dtype and value.shape == shapes[name]
        ref = (
            sum(w * m[name].astype(np.float64) for w, m in zip(weights, models, strict=True)) / wsum
        )
        if value.dtype == F32:
            np.testing.assert_allclose(hier[name], value, rtol=0, atol=1e-6)
            np.testing.assert_allclose(value, ref, rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(value, np.rint(ref).astype(np.int64))
    # Equal integer tensors (num_batches_tracked) stay exact through both levels.
    assert hier["bn.num_batches_tracked"].item() == flat["bn.num_batches_tracked"].item() == 300
    # Varying integer tensors are rounded at each level: off by at most 1.
    assert np.abs(hier["counts"] - flat["counts"]).max() <= 1


# ------------------------------------------------------------------ median / trimmed mean


def test_coordinate_median_hand_computed(files: Files, tmp_path: Path) -> None:
    rows = [[1, 5, -2], [4, 0, 7], [2, 9, 3]]
    ints = [1, 2, 3]
    paths = [
        files.write({"w": np.array(r, F32), "n": np.array([i], np.int64)})
        for r, i in zip(rows, ints, strict=True)
    ]
    spill = tmp_path / "spill"
    agg = CoordinateMedian(read_header(paths[0]), spill_dir=spill)
    # Weights are ignored (unweighted median) but checked and summed.
    out = _run(agg, paths, [1, 100, 1])
    np.testing.assert_array_equal(out["w"], [2, 5, 3])  # medians of (1,4,2), (5,0,9), (-2,7,3)
    assert out["n"].tolist() == [2] and out["n"].dtype == np.int64
    assert agg.total_weight == 102
    # Even count: the mean of the two middle values.
    _add(agg, files.write({"w": np.array([10, 1, -1], F32), "n": np.array([4], np.int64)}), 1)
    out = agg.result()
    # sorted: (1,2,4,10) -> 3; (0,1,5,9) -> 3; (-2,-1,3,7) -> 1; ints (1,2,3,4) -> 2.5 -> 2
    np.testing.assert_array_equal(out["w"], [3, 3, 1])
    assert out["n"].tolist() == [2]
    spilled = list(spill.rglob("*.f32"))
    assert len(spilled) == 4
    assert all(p.stat().st_size == 4 * 4 for p in spilled)  # 4 coordinates as float32
    agg.close()
    assert list(spill.iterdir()) == []  # the private spill directory is gone
    with pytest.raises(ValueError, match="closed"):
        agg.result()


def test_trimmed_mean_hand_computed(files: Files) -> None:
    rows = [[1, 0.5], [100, 0.5], [2, 1.5], [3, 2.5], [-50, 10]]
    paths = [files.write({"w": np.array(r, F32)}) for r in rows]
    h = read_header(paths[0])
    # ratio 0.2, n=5: k=1. col 0: drop -50, 100 -> (1+2+3)/3 = 2; col 1: drop 0.5, 10 -> 4.5/3 = 1.5
    out = _run(TrimmedMean(h, 0.2), paths, [1] * 5)
    np.testing.assert_allclose(out["w"], [2.0, 1.5], rtol=1e-7)
    # ratio 0.1, n=5: k=0 -> plain mean: 56/5 = 11.2, 15/5 = 3
    out = _run(TrimmedMean(h, 0.1), paths, [5, 1, 1, 1, 1])
    np.testing.assert_allclose(out["w"], [11.2, 3.0], rtol=1e-7)
    # ratio 0.4, n=5: k=2 -> the median: 2, 1.5
    out = _run(TrimmedMean(h, 0.4), paths, [1] * 5)
    np.testing.assert_allclose(out["w"], [2.0, 1.5], rtol=1e-7)


def test_trim_count_and_bad_ratio(files: Files) -> None:
    assert trim_count(0.29, 100) == 29  # 0.29 * 100 == 28.999999999999996 in floating point
    assert trim_count(0.1, 9) == 0 and trim_count(0.1, 10) == 1 and trim_count(0.49, 3) == 1
    h = read_header(files.write({"w": np.zeros(1, F32)}))
    for bad in (-0.1, 0.5, float("nan")):
        with pytest.raises(ValueError, match="trim_ratio"):
            TrimmedMean(h, bad)


@pytest.mark.parametrize("chunk_bytes", [12, 100, 1 << 20])
def test_spill_chunks_across_tensor_boundaries(files: Files, chunk_bytes: int) -> None:
    # Tiny chunks (1 and 8 coordinates for 3 updates) cross every tensor boundary.
    rng = np.random.default_rng(0)
    models: list[dict[str, np.ndarray]] = [
        {
            "a": rng.standard_normal((3, 5)).astype(F32),
            "e": np.zeros((0,), F32),
            "b": rng.standard_normal(7).astype(np.float64),
            "c": rng.integers(-5, 5, size=4).astype(np.int32),
            "d": rng.standard_normal(2).astype(np.float16),
        }
        for _ in range(3)
    ]
    paths = [files.write(m) for m in models]
    h = read_header(paths[0])
    med = _run(CoordinateMedian(h, chunk_bytes=chunk_bytes), paths, [1, 1, 1])
    trim = _run(TrimmedMean(h, 0.0, chunk_bytes=chunk_bytes), paths, [1, 1, 1])
    for name in models[0]:
        stack = np.stack([m[name] for m in models])
        # With 3 updates the median is the middle of the sorted values.
        mid = np.sort(stack.astype(np.float64), axis=0)[1]
        mean = stack.astype(np.float64).sum(axis=0) / 3
        assert med[name].dtype == models[0][name].dtype and med[name].shape == stack.shape[1:]
        if name == "c":
            np.testing.assert_array_equal(med[name], mid)
            np.testing.assert_array_equal(trim[name], np.rint(mean))
        else:
            tol = 2e-3 if name == "d" else 1e-6
            np.testing.assert_allclose(med[name].astype(np.float64), mid, atol=tol)
            np.testing.assert_allclose(trim[name].astype(np.float64), mean, atol=tol)


# ------------------------------------------------------------------ factories, purity


def test_make_aggregator(files: Files, tmp_path: Path) -> None:
    h = read_header(files.write({"w": np.zeros(2, F32)}))
    assert isinstance(make_aggregator(FedAvgAggregator(), h), WeightedMean)
    med = make_aggregator(MedianAggregator(name="median"), h, spill_dir=tmp_path / "s")
    assert isinstance(med, CoordinateMedian)
    assert med.spill_path.parent == tmp_path / "s"
    med.close()
    tm = make_aggregator(TrimmedMeanAggregator(name="trimmedmean", trim_ratio=0.25), h)
    assert isinstance(tm, TrimmedMean) and tm.trim_ratio == 0.25
    tm.close()


def test_aggregate_package_is_pure() -> None:
    code = (
        "import sys, fedkube.aggregate\n"
        "bad = [m for m in sys.modules if m.startswith(('fedkube.store', 'fedkube.state', "
        "'fedkube.proto', 'fedkube.combiner', 'fedkube.operator', 'grpc', 'minio', 'pymongo', "
        "'boto3', 'kopf'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
