"""Benchmark: streaming WeightedMean (BLAS axpy) vs np.average(np.stack(...)).

Writes `--updates` float32 safetensors models of about `--mb` MB each to a
temporary directory, then times, in this one process and on the same (warm,
memory-mapped) files:

* WeightedMean, flat path: one ``saxpy`` over the whole data section per update;
* WeightedMean, per-tensor path: one ``saxpy`` per tensor (``use_flat=False``);
* numpy streaming: ``acc += w * x`` per tensor (a temporary per tensor);
* baseline: ``np.average(np.stack(all updates), axis=0, weights=w)`` per tensor.

It prints throughput (GB of update data folded in per second), the peak of
numpy allocations seen by tracemalloc, and the ratio to the baseline. Absolute
numbers depend on the machine; compare the ratios.

    python bench/aggregate.py --mb 64 --updates 16
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedkube.aggregate import WeightedMean
from fedkube.model import MappedModel, read_header, save_model

GB = 1e9


def make_models(root: Path, mb: int, updates: int, n_tensors: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    numel = mb * 1024 * 1024 // 4
    sizes = [numel // n_tensors] * n_tensors
    sizes[-1] += numel - sum(sizes)
    base = {
        f"layer{i}.weight": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(sizes)
    }
    paths = []
    for u in range(updates):
        noise = np.float32(0.01 * (u + 1))
        p = root / f"update{u:03d}.safetensors"
        save_model(p, {k: v + noise for k, v in base.items()})
        paths.append(p)
    return paths


def run_weighted_mean(
    paths: list[Path], weights: list[float], use_flat: bool
) -> dict[str, np.ndarray]:
    agg = WeightedMean(read_header(paths[0]), use_flat=use_flat)
    for p, w in zip(paths, weights, strict=True):
        with MappedModel(p) as m:
            agg.add(m, w)
    assert agg.n_flat == (len(paths) if use_flat else 0)
    return agg.result()


def run_numpy_streaming(paths: list[Path], weights: list[float]) -> dict[str, np.ndarray]:
    acc: dict[str, np.ndarray] = {}
    for p, w in zip(paths, weights, strict=True):
        with MappedModel(p) as m:
            for name, x in m.items():
                if name in acc:
                    acc[name] += np.float32(w) * x
                else:
                    acc[name] = np.float32(w) * x
    total = sum(weights)
    return {k: v / np.float32(total) for k, v in acc.items()}


def run_baseline(paths: list[Path], weights: list[float]) -> dict[str, np.ndarray]:
    models = [MappedModel(p) for p in paths]
    try:
        out = {}
        for info in models[0].header.tensors:
            stacked = np.stack([m.tensor(info) for m in models])
            out[info.name] = np.average(stacked, axis=0, weights=weights).astype(np.float32)
            del stacked
        return out
    finally:
        for m in models:
            m.close()


def measure(
    fn: Callable[[], dict[str, np.ndarray]], repeat: int
) -> tuple[float, int, dict[str, np.ndarray]]:
    """Best wall time of `repeat` runs, and the tracemalloc peak of one extra run."""
    best = float("inf")
    out: dict[str, np.ndarray] = {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        del out
    tracemalloc.start()
    try:
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return best, peak, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=256, help="model size in MB (float32)")
    ap.add_argument("--updates", type=int, default=16, help="number of client updates")
    ap.add_argument("--tensors", type=int, default=8, help="tensors per model")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per method (best is kept)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the update files")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="fedkube-bench-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        paths = make_models(root, args.mb, args.updates, args.tensors, args.seed)
        print(
            f"wrote {args.updates} updates x {args.mb} MB ({args.tensors} float32 tensors) "
            f"in {time.perf_counter() - t0:.1f}s"
        )
        rng = np.random.default_rng(args.seed)
        weights = [float(w) for w in rng.integers(1, 1000, size=args.updates)]
        data_gb = read_header(paths[0]).nbytes * args.updates / GB
        for p in paths:  # warm the page cache so every method reads from memory
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass

        methods: list[tuple[str, Callable[[], dict[str, np.ndarray]]]] = [
            ("np.average(np.stack) [baseline]", lambda: run_baseline(paths, weights)),
            ("numpy acc += w*x per tensor", lambda: run_numpy_streaming(paths, weights)),
            ("WeightedMean per-tensor saxpy", lambda: run_weighted_mean(paths, weights, False)),
            ("WeightedMean flat saxpy", lambda: run_weighted_mean(paths, weights, True)),
        ]
        rows = []
        ref: dict[str, np.ndarray] | None = None
        for name, fn in methods:
            secs, peak, out = measure(fn, args.repeat)
            if ref is None:
                ref = out
            else:
                err = max(float(np.abs(out[k] - ref[k]).max()) for k in ref)
                assert err < 1e-4, f"{name}: max abs difference {err} from the baseline"
            rows.append((name, secs, data_gb / secs, peak / 1e6))
            del out

        base_secs = rows[0][1]
        print(f"\n{args.updates} updates x {args.mb} MB = {data_gb:.2f} GB folded in per run")
        print(f"{'method':<34} {'time s':>8} {'GB/s':>7} {'peak MB':>9} {'speedup':>8}")
        for name, secs, gbps, peak_mb in rows:
            print(f"{name:<34} {secs:>8.3f} {gbps:>7.2f} {peak_mb:>9.1f} {base_secs / secs:>7.2f}x")
        flat, per_tensor = rows[3][1], rows[2][1]
        print(f"\nflat vs per-tensor WeightedMean: {per_tensor / flat:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
