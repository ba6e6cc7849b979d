"""Merging the combiners' partials (fedkube.aggregate.partials, reducer/merge.py).

Expected numbers are computed by hand in the comments next to them; models are
real safetensors files, the reducer's merge runs against a real local object
store (a directory).
"""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from fedkube.aggregate import (
    MeanOfPartials,
    MedianOfPartials,
    Partial,
    PartialError,
    TrimmedMean,
    TrimmedMeanOfPartials,
    WeightedMean,
    make_partial_merge,
    weighted_median,
    weighted_trimmed_mean,
)
from fedkube.errors import RoundFailed
from fedkube.model import MappedModel, ModelHeader, load_model, read_header, save_model
from fedkube.reducer.merge import NamedPartial, merge_round
from fedkube.spec import (
    FedAvgAggregator,
    FederatedJob,
    MedianAggregator,
    TrimmedMeanAggregator,
    parse_job,
)
from fedkube.store import model_key, partial_key
from fedkube.store.local import LocalObjectStore
from tests.support.model_files import ModelFiles as Files

F32 = np.float32
MB = 1024 * 1024


@contextlib.contextmanager
def opened(
    paths: Sequence[Path], weights: Sequence[float], n_updates: Sequence[int]
) -> Iterator[list[Partial]]:
    """The files as Partials named c0, c1, ..., mapped for the duration."""
    with contextlib.ExitStack() as stack:
        yield [
            Partial(name=f"c{i}", model=stack.enter_context(MappedModel(p)), weight=w, n_updates=n)
            for i, (p, w, n) in enumerate(zip(paths, weights, n_updates, strict=True))
        ]


def merged(
    merge: MeanOfPartials | MedianOfPartials | TrimmedMeanOfPartials,
    paths: Sequence[Path],
    weights: Sequence[float],
    n_updates: Sequence[int],
) -> dict[str, np.ndarray]:
    with opened(paths, weights, n_updates) as parts:
        return merge.merge(parts)


def w_files(files: Files, columns: list[list[float]]) -> tuple[list[Path], ModelHeader]:
    """One partial per row of `columns` transposed: columns[j][i] is coordinate j of partial i."""
    rows = np.array(columns, dtype=F32).T
    paths = [files.write({"w": row}) for row in rows]
    return paths, read_header(paths[0])


# ------------------------------------------------------------------ the math on a block


def test_weighted_median_two_values() -> None:
    v = np.array([[1.0, 10.0], [3.0, -2.0]])
    # Equal weights: 2 C_1 == N exactly -> the mean of both: (1+3)/2, (10-2)/2.
    assert weighted_median(v, np.array([2, 2])).tolist() == [2.0, 4.0]
    # Unequal: the heavier one's value, whichever side it is on.
    assert weighted_median(v, np.array([1, 3])).tolist() == [3.0, -2.0]
    assert weighted_median(v, np.array([3, 1])).tolist() == [1.0, 10.0]


def test_weighted_median_three_values() -> None:
    v = np.array([[9.0], [1.0], [5.0]])  # unsorted on purpose: sorted 1, 5, 9
    # weights of (9, 1, 5); cumulative in sorted order (1, 5, 9):
    assert weighted_median(v, np.array([1, 1, 1])).tolist() == [5.0]  # C = 1,2,3 of N=3
    assert weighted_median(v, np.array([3, 1, 1])).tolist() == [9.0]  # C = 1,2,5: 2*2 < 5
    assert weighted_median(v, np.array([2, 2, 1])).tolist() == [5.0]  # C = 2,3,5: 2*3 >= 5
    # C = 2,4,8 of N=8: 2*4 == 8 exactly -> (5 + 9) / 2
    assert weighted_median(v, np.array([4, 2, 2])).tolist() == [7.0]
    # C = 4,6,8 of N=8: 2*4 == 8 exactly at the first value -> (1 + 5) / 2
    assert weighted_median(v, np.array([2, 4, 2])).tolist() == [3.0]
    # Ties of values are harmless: (5, 5, 9) with equal weights -> 5
    assert weighted_median(np.array([[5.0], [9.0], [5.0]]), np.ones(3)).tolist() == [5.0]


def test_weighted_median_no_overflow_near_float_max() -> None:
    big = np.finfo(np.float64).max
    assert weighted_median(np.array([[big], [big]]), np.array([1, 1])).tolist() == [big]


def test_weighted_trimmed_mean_straddling_cut() -> None:
    v = np.array([[1.0], [2.0], [3.0], [100.0]])
    w = np.array([1, 2, 1, 1])
    # N = 5, ratio 0.3 -> cut 1.5 at each end; keep [1.5, 3.5] of the weight axis:
    #   1 covers [0,1] -> 0; 2 covers [1,3] -> 1.5; 3 covers [3,4] -> 0.5; 100 covers [4,5] -> 0
    #   (1.5*2 + 0.5*3) / 2 = 2.25
    assert weighted_trimmed_mean(v, w, trim_ratio=0.3).tolist() == [2.25]
    # ratio 0 is the weighted mean: (1 + 4 + 3 + 100) / 5 = 21.6
    np.testing.assert_allclose(weighted_trimmed_mean(v, w, trim_ratio=0.0), [21.6], rtol=1e-15)
    # ratio 0.2 -> cut 1: keep [1, 4] -> 2 (weight 2) and 3 (weight 1): 7 / 3
    np.testing.assert_allclose(weighted_trimmed_mean(v, w, trim_ratio=0.2), [7 / 3], rtol=1e-15)


def test_weighted_trimmed_mean_with_unit_weights_is_the_trimmed_mean(files: Files) -> None:
    # With unit weights and trim_ratio * n an integer, it trims whole values like TrimmedMean.
    cols = [[1, 100, 2, 3, -50], [0.5, 0.5, 1.5, 2.5, 10]]
    paths, h = w_files(files, cols)
    flat = TrimmedMean(h, 0.2)
    for p in paths:
        with MappedModel(p) as m:
            flat.add(m, 1)
    expected = flat.result()["w"]
    flat.close()
    got = weighted_trimmed_mean(np.array(cols).T, np.ones(5), trim_ratio=0.2)
    np.testing.assert_allclose(got, expected, rtol=1e-7)
    np.testing.assert_allclose(got, [2.0, 1.5], rtol=1e-15)  # (1+2+3)/3, (0.5+1.5+2.5)/3


def test_block_functions_check_their_input() -> None:
    with pytest.raises(ValueError, match="weights must be finite and > 0"):
        weighted_median(np.ones((2, 1)), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="weights must be finite and > 0"):
        weighted_median(np.ones((2, 1)), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match=r"values must be \(n, m\)"):
        weighted_median(np.ones((2, 1)), np.ones(3))
    for bad in (-0.1, 0.5, float("nan")):
        with pytest.raises(ValueError, match="trim_ratio"):
            weighted_trimmed_mean(np.ones((2, 1)), np.ones(2), trim_ratio=bad)


# ------------------------------------------------------------------ merges of partial files


def test_fedavg_merge_is_the_example_weighted_mean(files: Files) -> None:
    a = files.write({"w": np.array([1, 2, 3], F32), "n": np.array([10], np.int64)})
    b = files.write({"w": np.array([3, 6, 9], F32), "n": np.array([20], np.int64)})
    h = read_header(a)
    # weights 1 and 3: (1*1 + 3*3)/4 = 2.5, (2 + 18)/4 = 5, (3 + 27)/4 = 7.5;
    # (10 + 60)/4 = 17.5 -> 18 (half to even)
    out = merged(make_partial_merge(FedAvgAggregator(), h), [a, b], [1.0, 3.0], [7, 1])
    np.testing.assert_allclose(out["w"], [2.5, 5.0, 7.5], rtol=1e-7)
    assert out["n"].tolist() == [18] and out["n"].dtype == np.int64
    # Identical to WeightedMean over the same files (what the reducer did before).
    ref = WeightedMean(h)
    for p, w in ((a, 1.0), (b, 3.0)):
        with MappedModel(p) as m:
            ref.add(m, w)
    np.testing.assert_array_equal(out["w"], ref.result()["w"])


def test_robust_merges_weigh_by_update_counts_not_claims(files: Files) -> None:
    paths, h = w_files(files, [[1.0, 5.0]])
    # c1 claims 10^12 examples but the combiner accepted 1 update; c0 accepted 3.
    med = merged(MedianOfPartials(template=h), paths, [1.0, 1e12], [3, 1])
    assert med["w"].tolist() == [1.0]  # the heavier by count
    trim = merged(TrimmedMeanOfPartials(template=h, trim_ratio=0.0), paths, [1.0, 1e12], [3, 1])
    assert trim["w"].tolist() == [2.0]  # (3*1 + 1*5) / 4
    # fedavg does use the claims (the weight policy caps them at the combiner).
    avg = merged(MeanOfPartials(template=h), paths, [1.0, 1e12], [3, 1])
    np.testing.assert_allclose(avg["w"], [5.0], rtol=1e-6)


def test_attacker_partial_stays_inside_the_honest_range(files: Files) -> None:
    # Four honest partials (one update each) and an attacker's partial (one update,
    # claiming 10^12 examples) with huge values in both directions.
    honest = [[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 0.5, 2.0], [10.0, 10.0, 10.0, 10.0]]
    attack = [1e30, -1e30, 1e30]
    cols = [[*h, a] for h, a in zip(honest, attack, strict=True)]
    paths, h = w_files(files, cols)
    weights = [10.0, 10.0, 10.0, 10.0, 1e12]
    counts = [1, 1, 1, 1, 1]  # total 5, the attacker 1
    med = merged(MedianOfPartials(template=h), paths, weights, counts)["w"]
    # sorted (1,2,3,4,A) -> 3; (A,-1,0,0.5,2) -> 0; (10,10,10,10,A) -> 10
    assert med.tolist() == [3.0, 0.0, 10.0]
    trim = merged(TrimmedMeanOfPartials(template=h, trim_ratio=0.2), paths, weights, counts)["w"]
    # cut = 0.2 * 5 = 1 update at each end: the attacker and one extreme honest value go.
    # sorted (1,2,3,4,A) -> (2+3+4)/3 = 3; (A,-1,0,0.5,2) -> (-1+0+0.5)/3 = -1/6;
    # (10,10,10,10,A) -> 10
    np.testing.assert_allclose(trim, [3.0, -1 / 6, 10.0], rtol=1e-6)
    lo = np.array([min(c) for c in honest])
    hi = np.array([max(c) for c in honest])
    for out in (med, trim):
        assert (out >= lo).all() and (out <= hi).all(), out


def test_attacker_with_half_the_updates_is_the_documented_limit(files: Files) -> None:
    paths, h = w_files(files, [[1.0, 2.0, 1e30]])
    # The attacker's combiner accepted 3 of 5 updates (its clients are the majority).
    med = merged(MedianOfPartials(template=h), paths, [1.0, 1.0, 1.0], [1, 1, 3])
    assert med["w"][0] == F32(1e30)
    # Trimmed mean: cut 0.2 * 5 = 1 of the attacker's 3; 2 of its weight is kept.
    trim = merged(TrimmedMeanOfPartials(template=h, trim_ratio=0.2), paths, [1] * 3, [1, 1, 3])
    assert trim["w"][0] > 1e29


def test_single_partial_is_returned_unchanged(files: Files) -> None:
    rng = np.random.default_rng(3)
    model = {
        "a": rng.standard_normal((4, 5)).astype(F32),
        "d": rng.standard_normal(7),  # float64
        "i": rng.integers(-1000, 1000, size=3).astype(np.int64),
    }
    p = files.write(model)
    h = read_header(p)
    for merge in (
        MedianOfPartials(template=h),
        TrimmedMeanOfPartials(template=h, trim_ratio=0.3),
    ):
        out = merged(merge, [p], [5.0], [2])
        for name, value in model.items():
            assert out[name].dtype == value.dtype
            np.testing.assert_array_equal(out[name], value)


@pytest.mark.parametrize("chunk_bytes", [1, 200, 1 << 20])
def test_chunks_cover_every_tensor_and_dtype(files: Files, chunk_bytes: int) -> None:
    rng = np.random.default_rng(0)
    models: list[dict[str, np.ndarray]] = [
        {
            "a": rng.standard_normal((3, 5)).astype(F32),
            "e": np.zeros((0,), F32),
            "b": rng.standard_normal(7),
            "c": rng.integers(-5, 5, size=4).astype(np.int32),
            "d": rng.standard_normal(2).astype(np.float16),
        }
        for _ in range(4)
    ]
    paths = [files.write(m) for m in models]
    h = read_header(paths[0])
    counts = [1, 2, 3, 2]
    w = np.array(counts, dtype=np.float64)
    med = merged(MedianOfPartials(template=h, chunk_bytes=chunk_bytes), paths, [1.0] * 4, counts)
    tm = TrimmedMeanOfPartials(template=h, trim_ratio=0.25, chunk_bytes=chunk_bytes)
    trim = merged(tm, paths, [1.0] * 4, counts)
    assert tm.chunk_size(4) >= 1
    for name in models[0]:
        stack = np.stack([m[name].astype(np.float64).reshape(-1) for m in models])
        shape = models[0][name].shape
        want_med = weighted_median(stack, w) if stack.shape[1] else np.zeros(0)
        want_trim = weighted_trimmed_mean(stack, w, trim_ratio=0.25) if stack.shape[1] else []
        for out, want in ((med, want_med), (trim, want_trim)):
            assert out[name].dtype == models[0][name].dtype and out[name].shape == shape
            want = np.asarray(want).reshape(shape)
            if name == "c":
                np.testing.assert_array_equal(out[name], np.rint(want))
            else:
                tol = 1e-3 if name == "d" else 1e-6
                np.testing.assert_allclose(out[name].astype(np.float64), want, atol=tol)


def test_merge_errors_name_the_partial(files: Files) -> None:
    a = files.write({"w": np.zeros(2, F32)})
    wrong = files.write({"w": np.zeros(3, F32)})
    h = read_header(a)
    med = MedianOfPartials(template=h)
    with pytest.raises(ValueError, match="no partials to merge"):
        med.merge([])
    with pytest.raises(PartialError, match=r"partial 'c1': tensor 'w': shape \[3\]") as ei:
        merged(med, [a, wrong], [1, 1], [1, 1])
    assert ei.value.name == "c1"
    with pytest.raises(ValueError, match="the partials of c0, c1 have a total n_updates of 0"):
        merged(med, [a, a], [5.0, 5.0], [0, 0])
    for bad in (-1, True, 1.5):
        with pytest.raises(PartialError, match="n_updates must be an integer >= 0") as ei:
            merged(med, [a, a], [1, 1], [1, bad])  # type: ignore[list-item]
        assert ei.value.name == "c1"
    avg = MeanOfPartials(template=h)
    for bad_w in (-1.0, float("inf"), float("nan")):
        with pytest.raises(PartialError, match="weight must be a finite number >= 0"):
            merged(avg, [a, a], [bad_w, 1.0], [1, 1])
    with pytest.raises(ValueError, match="total weight of 0"):
        merged(avg, [a], [0.0], [3])
    # A partial of weight 0 carries nothing and is left out.
    b = files.write({"w": np.array([4.0, 8.0], F32)})
    assert merged(avg, [a, b], [0.0, 2.0], [1, 1])["w"].tolist() == [4.0, 8.0]
    assert merged(med, [a, b], [1.0, 1.0], [0, 2])["w"].tolist() == [4.0, 8.0]
    with pytest.raises(ValueError, match="trim_ratio"):
        TrimmedMeanOfPartials(template=h, trim_ratio=0.5)
    with pytest.raises(ValueError, match="chunk_bytes"):
        MedianOfPartials(template=h, chunk_bytes=0)


def test_make_partial_merge(files: Files) -> None:
    h = read_header(files.write({"w": np.zeros(2, F32)}))
    assert type(make_partial_merge(FedAvgAggregator(), h)) is MeanOfPartials
    assert type(make_partial_merge(MedianAggregator(name="median"), h)) is MedianOfPartials
    tm = make_partial_merge(TrimmedMeanAggregator(name="trimmedmean", trim_ratio=0.25), h)
    assert isinstance(tm, TrimmedMeanOfPartials) and tm.trim_ratio == 0.25
    with pytest.raises(ValueError, match="unknown aggregator"):
        make_partial_merge("krum", h)  # type: ignore[arg-type]


# ------------------------------------------------------------------ memory


def _f32_model(i: int) -> dict[str, np.ndarray]:
    # ~4 MB of float32 in three tensors.
    return {
        "layer1.weight": np.full((512, 1024), i * 0.01, F32),
        "layer2.weight": np.full((256, 1024), -i * 0.02, F32),
        "layer2.bias": np.full((256 * 1024,), 1.0 + i, F32),
    }


def test_robust_merge_ram_is_the_model_plus_a_chunk(tmp_path: Path) -> None:
    paths = []
    for i in range(8):
        paths.append(tmp_path / f"p{i}.safetensors")
        save_model(paths[-1], _f32_model(i))
    template = read_header(paths[0])
    chunk_bytes = 1 * MB
    peaks: dict[tuple[str, int], int] = {}
    for n in (2, 8):
        for merge in (
            MedianOfPartials(template=template, chunk_bytes=chunk_bytes),
            TrimmedMeanOfPartials(template=template, trim_ratio=0.2, chunk_bytes=chunk_bytes),
        ):
            with opened(paths[:n], [1.0] * n, [1 + i % 3 for i in range(n)]) as parts:
                tracemalloc.start()
                try:
                    out = merge.merge(parts)
                    _, peak = tracemalloc.get_traced_memory()
                finally:
                    tracemalloc.stop()
            assert out["layer2.bias"].shape == (256 * 1024,)
            del out
            peaks[(type(merge).__name__, n)] = peak
    # The output model plus O(chunk) working memory, whatever the number of partials.
    for key, peak in peaks.items():
        assert peak < template.nbytes + 2 * chunk_bytes, (key, peak)


# ------------------------------------------------------------------ the reducer's merge


def _job(aggregator: dict[str, object]) -> FederatedJob:
    return parse_job(
        {"metadata": {"name": "merge"}, "spec": {"rounds": 3, "aggregator": aggregator}}
    )


def _store_round(
    store: LocalObjectStore, tmp: Path, job: FederatedJob, partials: list[dict[str, np.ndarray]]
) -> list[str]:
    """Store model 0 (zeros) and the partials of round 1; return the partial keys."""
    save_model(tmp / "g.safetensors", {k: np.zeros_like(v) for k, v in partials[0].items()})
    store.put_file(model_key(job.name, 0), tmp / "g.safetensors")
    keys = []
    for i, tensors in enumerate(partials):
        save_model(tmp / f"c{i}.safetensors", tensors)
        keys.append(partial_key(job.name, 1, 1, f"combiner-{i}"))
        store.put_file(keys[-1], tmp / f"c{i}.safetensors")
    return keys


@pytest.mark.parametrize(
    ("aggregator", "expected"),
    [
        # weights (examples) 1, 1, 10^12: the claim-heavy partial wins FedAvg.
        ({"name": "fedavg"}, [1e3, -1e3]),
        # counts 2, 2, 1 of 5: sorted (1, 3, 1e3) -> 3; (-1e3, -2, 0) -> -2
        ({"name": "median"}, [3.0, -2.0]),
        # cut 0.2*5 = 1 update at each end; sorted with their weight intervals:
        # 1 [0,2] keeps 1, 3 [2,4] keeps 2, 1e3 [4,5] keeps 0 -> (1 + 6) / 3;
        # -1e3 [0,1] keeps 0, -2 [1,3] keeps 2, 0 [3,5] keeps 1 -> -4 / 3
        ({"name": "trimmedmean", "trimRatio": "0.2"}, [7 / 3, -4 / 3]),
    ],
)
def test_merge_round_picks_the_merge_of_the_aggregator(
    tmp_path: Path, aggregator: dict[str, object], expected: list[float]
) -> None:
    job = _job(aggregator)
    store = LocalObjectStore(tmp_path / "store")
    (tmp_path / "work").mkdir()
    parts = [
        {"w": np.array([1.0, 0.0], F32)},
        {"w": np.array([3.0, -2.0], F32)},
        {"w": np.array([1e3, -1e3], F32)},
    ]
    keys = _store_round(store, tmp_path, job, parts)
    named = [
        NamedPartial("combiner-0", keys[0], 1.0, 2),
        NamedPartial("combiner-1", keys[1], 1.0, 2),
        NamedPartial("combiner-2", keys[2], 1e12, 1),
    ]
    stored = merge_round(job, store, round=1, attempt=1, partials=named, workdir=tmp_path / "work")
    assert stored.key == model_key("merge", 1)
    out = load_model(store.fetch(stored.key, tmp_path / "out.safetensors"))
    np.testing.assert_allclose(out["w"], expected, rtol=1e-6)
    assert list((tmp_path / "work").iterdir()) == []  # its scratch directory is gone


def test_merge_round_failures_name_the_combiner(tmp_path: Path) -> None:
    job = _job({"name": "median"})
    store = LocalObjectStore(tmp_path / "store")
    (tmp_path / "work").mkdir()
    good = {"w": np.array([1.0, 2.0], F32)}
    keys = _store_round(store, tmp_path, job, [good, {"w": np.array([np.nan, 0.0], F32)}])

    def run(partials: list[NamedPartial]) -> None:
        merge_round(job, store, round=1, attempt=1, partials=partials, workdir=tmp_path / "work")

    with pytest.raises(
        RoundFailed, match="partial of combiner combiner-1 is invalid: tensor 'w' holds NaN"
    ):
        run(
            [NamedPartial("combiner-0", keys[0], 1.0, 1), NamedPartial("combiner-1", keys[1], 1, 1)]
        )
    # A wrong shape.
    save_model(tmp_path / "bad.safetensors", {"w": np.zeros(3, F32)})
    store.put_file(keys[1], tmp_path / "bad.safetensors")
    with pytest.raises(RoundFailed, match=r"partial of combiner combiner-1 is invalid: .*shape"):
        run(
            [NamedPartial("combiner-0", keys[0], 1.0, 1), NamedPartial("combiner-1", keys[1], 1, 1)]
        )
    # Not a safetensors file at all.
    (tmp_path / "junk").write_bytes(b"\xff" * 64)
    store.put_file(keys[1], tmp_path / "junk")
    with pytest.raises(RoundFailed, match="partial of combiner combiner-1 is invalid"):
        run(
            [NamedPartial("combiner-0", keys[0], 1.0, 1), NamedPartial("combiner-1", keys[1], 1, 1)]
        )
    # Counts that were never filled in: refused, never re-weighted by the claims.
    with pytest.raises(RoundFailed, match=r"\(median\): the partials of combiner-0 have a total"):
        run([NamedPartial("combiner-0", keys[0], 100.0)])
    with pytest.raises(RoundFailed, match="partial of combiner combiner-0 is invalid: n_updates"):
        run([NamedPartial("combiner-0", keys[0], 1.0, -3)])
    with pytest.raises(RoundFailed, match=r"\(median\): no partials to merge"):
        run([])
    assert not store.exists(model_key("merge", 1))
