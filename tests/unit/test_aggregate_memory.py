"""Aggregation memory does not grow with the number of updates (DESIGN principle 3).

tracemalloc sees numpy's allocations (numpy reports them to it) but not the
pages of memory-mapped files, which is what we want: the mapped update files
are the page cache's, the accumulators and temporaries are ours.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedkube.aggregate import Aggregator, CoordinateMedian, TrimmedMean, WeightedMean
from fedkube.model import MappedModel, ModelHeader, read_header, save_model

F32 = np.float32
MB = 1024 * 1024
SLACK = 256 * 1024  # bytes: Python objects (headers, dicts, file handles)


def _f32_model(i: int) -> dict[str, np.ndarray]:
    # ~4 MB of float32 in three tensors.
    return {
        "layer1.weight": np.full((512, 1024), i * 0.01, F32),
        "layer2.weight": np.full((256, 1024), -i * 0.02, F32),
        "layer2.bias": np.full((256 * 1024,), 1.0 + i, F32),
    }


def _mixed_model(i: int) -> dict[str, np.ndarray]:
    # ~4 MB across float32, float16, float64 and int64 tensors (the per-tensor path).
    return {
        "a": np.full((512, 1024), i * 0.01, F32),
        "h": np.full((512, 1024), i % 7, np.float16),
        "d": np.full((64, 1024), i * 0.5, np.float64),
        "n": np.full((64, 1024), i, np.int64),
    }


@pytest.fixture(scope="module")
def f32_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("f32")
    paths = []
    for i in range(200):
        p = root / f"u{i:03d}.safetensors"
        save_model(p, _f32_model(i))
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("mixed")
    paths = []
    for i in range(60):
        p = root / f"u{i:03d}.safetensors"
        save_model(p, _mixed_model(i))
        paths.append(p)
    return paths


def _peak(make: Callable[[], Aggregator], paths: list[Path]) -> tuple[int, Aggregator]:
    """tracemalloc peak (bytes) of building the aggregator, adding `paths` and result()."""
    tracemalloc.start()
    try:
        agg = make()
        for i, p in enumerate(paths):
            with MappedModel(p) as m:
                agg.add(m, 1 + i % 5)
        out = agg.result()
        del out
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, agg


@pytest.mark.parametrize("use_flat", [True, False], ids=["flat", "per-tensor"])
def test_weighted_mean_memory_is_flat_in_updates(f32_files: list[Path], use_flat: bool) -> None:
    template = read_header(f32_files[0])
    model_bytes = template.nbytes
    assert model_bytes >= 4 * MB

    peak10, agg10 = _peak(lambda: WeightedMean(template, use_flat=use_flat), f32_files[:10])
    peak200, agg200 = _peak(lambda: WeightedMean(template, use_flat=use_flat), f32_files)
    assert agg200.n_updates == 200
    assert agg200.n_flat == (200 if use_flat else 0)  # type: ignore[attr-defined]
    assert peak200 < peak10 * 1.2 + SLACK, (peak10, peak200)
    # O(model): the accumulator plus the result, nothing per update.
    assert peak200 < 2.5 * model_bytes, (peak200, model_bytes)
    del agg10


def test_weighted_mean_memory_mixed_dtypes(mixed_files: list[Path]) -> None:
    template = read_header(mixed_files[0])
    peak10, _ = _peak(lambda: WeightedMean(template), mixed_files[:10])
    peak60, _ = _peak(lambda: WeightedMean(template), mixed_files)
    assert peak60 < peak10 * 1.2 + SLACK, (peak10, peak60)
    # Accumulators (f32 for F32/F16, f64 for F64/I64) + result + bounded scratch.
    acc_bytes = sum(t.numel * (8 if t.dtype in ("F64", "I64") else 4) for t in template.tensors)
    assert peak60 < acc_bytes + template.nbytes + 4 * MB, (peak60, acc_bytes)


def _result_peak(agg: Aggregator) -> int:
    tracemalloc.start()
    try:
        out = agg.result()
        del out
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("cls", [CoordinateMedian, TrimmedMean])
def test_spill_aggregators_ram_is_bounded_per_chunk(
    f32_files: list[Path], tmp_path: Path, cls: type[CoordinateMedian]
) -> None:
    template: ModelHeader = read_header(f32_files[0])
    chunk_bytes = 1 * MB
    peaks = {}
    for n in (10, 40):
        agg = cls(template, spill_dir=tmp_path, chunk_bytes=chunk_bytes)
        for p in f32_files[:n]:
            with MappedModel(p) as m:
                agg.add(m, 1)
        peaks[n] = _result_peak(agg)
        assert sum(f.stat().st_size for f in agg.spill_path.iterdir()) == n * template.nbytes
        agg.close()
    # The output model plus O(chunk) working memory, whatever the number of updates.
    for n, peak in peaks.items():
        assert peak < template.nbytes + 4 * chunk_bytes, (n, peak)
    assert peaks[40] < peaks[10] * 1.2 + SLACK, peaks
