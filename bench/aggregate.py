"""Benchmark `aggregate`: the combiner's whole per-update path against its limits.

For N updates of P float32 parameters (100 x 1M and 20 x 10M; `--quick`: 10 x
64K and 4 x 256K), each a safetensors file of 8 tensors with the digest its
client would report, it times in this one process, best of `--repeat` runs:

* **fedkube, local store**: `fedkube.combiner.verify.read_update` on every update,
  as the combiner runs it (one pass: read, XXH3-128 digest, header and
  finiteness checks, fold into `WeightedMean` with its undo log), files in the
  page cache;
* **limit**: a BLAS ``saxpy`` running sum over the same updates already in memory;
* **stack**: ``np.average(np.stack(...), weights=...)`` per tensor over the files
  (the naive baseline);
* with S3 (the SeaweedFS test server this script starts): **fedkube, S3** (the
  same `read_update` on the S3 store: the response body is read, checked and
  folded with no temporary file) against **GET**, a plain minio GET of the same
  objects into one reused buffer (the network limit).

Targets (from the issue): local >= 0.5x the limit and >= 10x the stack
baseline; S3 >= 0.8x the plain GET. Throughputs are GB of update bytes per second.

    python bench/aggregate.py [--quick] [--no-s3] [--repeat 3] [--json rows.json]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.linalg.blas import saxpy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, add_common_args, finish, tensor_sizes

from fedkube.aggregate import WeightedMean
from fedkube.combiner.verify import read_update
from fedkube.digest import UPDATE_ALGORITHM, format_digest
from fedkube.ingest import ChunkBuffer
from fedkube.model import MappedModel, ModelHeader, read_header, save_model
from fedkube.store import ObjectStore
from fedkube.store.local import LocalObjectStore

GB = 1e9
CASES = [(100, 1_000_000), (20, 10_000_000)]
QUICK_CASES = [(10, 65_536), (4, 262_144)]
TENSORS = 8


def label(n: int, params: int) -> str:
    size = f"{params // 1_000_000}M" if params >= 1_000_000 else f"{params // 1024}K"
    return f"{n}x{size}"


def make_updates(store: LocalObjectStore, n: int, params: int) -> tuple[list[str], list[str]]:
    """N update objects of `params` float32 values in TENSORS tensors; their keys and
    digests."""
    rng = np.random.default_rng(n)
    base = {
        f"layer{i}.weight": rng.standard_normal(s).astype(np.float32)
        for i, s in enumerate(tensor_sizes(params, TENSORS))
    }
    keys, digests = [], []
    tmp = store.root / "tmp.safetensors"
    for u in range(n):
        key = f"bench/{label(n, params)}/u{u:04d}.safetensors"
        hexd = save_model(
            tmp, {k: v + np.float32(0.01 * u) for k, v in base.items()}, algorithm=UPDATE_ALGORITHM
        )
        store.put_file(key, tmp)
        keys.append(key)
        digests.append(format_digest(UPDATE_ALGORITHM, hexd))
    tmp.unlink()
    return keys, digests


def fedkube_path(
    store: ObjectStore,
    keys: list[str],
    digests: list[str],
    weights: list[float],
    template: ModelHeader,
    buffer: ChunkBuffer,
) -> np.ndarray:
    mean = WeightedMean(template)
    try:
        for key, digest, w in zip(keys, digests, weights, strict=True):
            read_update(
                store,
                key,
                template,
                max_bytes=1 << 40,
                digest=digest,
                begin=lambda h, w=w: mean.begin(h, w),
                buffer=buffer,
            )
        return mean._acc32.copy()
    finally:
        mean.close()


def limit_path(arrays: list[np.ndarray], weights: list[float]) -> np.ndarray:
    acc = np.zeros_like(arrays[0])
    for x, w in zip(arrays, weights, strict=True):
        saxpy(x, acc, a=w)
    return acc


def stack_path(paths: list[Path], weights: list[float]) -> np.ndarray:
    models = [MappedModel(p) for p in paths]
    try:
        out = []
        for info in models[0].header.tensors:
            stacked = np.stack([m.tensor(info) for m in models])
            out.append(np.average(stacked, axis=0, weights=weights).astype(np.float32).reshape(-1))
            del stacked
        return np.concatenate(out) * np.float32(sum(weights))
    finally:
        for m in models:
            m.close()


def get_path(client: object, bucket: str, keys: list[str], buf: memoryview) -> int:
    """A plain minio GET of every object into one reused buffer (the network limit)."""
    total = 0
    for key in keys:
        resp = client.get_object(bucket, key)  # type: ignore[attr-defined]
        fp = getattr(resp, "_fp", resp)
        while n := fp.readinto(buf):
            total += n
        resp.release_conn()
    return total


def best(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    secs, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        secs = min(secs, time.perf_counter() - t0)
    return secs, out


def run_case(n: int, params: int, args: argparse.Namespace, s3: object | None) -> list[Row]:
    root = Path(tempfile.mkdtemp(prefix="fedkube-bench-agg-"))
    try:
        local = LocalObjectStore(root / "objects")
        keys, digests = make_updates(local, n, params)
        paths = [local.local_path(k) for k in keys]
        template = read_header(paths[0])
        gb = template.nbytes * n / GB
        weights = [float(w) for w in np.random.default_rng(1).integers(1, 1000, n)]
        arrays = [np.fromfile(p, dtype=np.float32, offset=template.data_offset) for p in paths]
        buffer = ChunkBuffer()  # closed with the process
        t_limit, ref = best(lambda: limit_path(arrays, weights), args.repeat)
        t_fk, got = best(
            lambda: fedkube_path(local, keys, digests, weights, template, buffer), args.repeat
        )
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-2)  # type: ignore[arg-type]
        t_stack, _ = best(lambda: stack_path(paths, weights), max(1, args.repeat - 1))
        case = label(n, params)
        rows = [
            Row(
                f"local/{case} vs limit",
                "GB/s",
                gb / t_fk,
                gb / t_limit,
                0.5,
                note="limit: in-memory BLAS saxpy running sum",
            ),
            Row(
                f"local/{case} vs stack",
                "GB/s",
                gb / t_fk,
                gb / t_stack,
                10.0,
                note="stack: np.average(np.stack(...)) over the mapped files",
            ),
        ]
        if s3 is not None:
            rows.append(s3_row(s3, local, keys, digests, weights, template, buffer, gb, case, args))
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def s3_row(
    s3: object,
    local: LocalObjectStore,
    keys: list[str],
    digests: list[str],
    weights: list[float],
    template: ModelHeader,
    buffer: ChunkBuffer,
    gb: float,
    case: str,
    args: argparse.Namespace,
) -> Row:
    bucket = s3.new_bucket_name("bench")  # type: ignore[attr-defined]
    store = s3.store(bucket)  # type: ignore[attr-defined]
    try:
        for key in keys:
            store.put_file(key, local.local_path(key))
        client = s3.client()  # type: ignore[attr-defined]
        buf = memoryview(bytearray(1 << 20))
        t_get, _ = best(lambda: get_path(client, bucket, keys, buf), args.repeat)
        t_fk, _ = best(
            lambda: fedkube_path(store, keys, digests, weights, template, buffer), args.repeat
        )
        return Row(
            f"s3/{case} vs GET",
            "GB/s",
            gb / t_fk,
            gb / t_get,
            0.8,
            note="GET: plain minio GET into a reused buffer, same objects",
        )
    finally:
        s3.remove_bucket(bucket)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--no-s3", action="store_true", help="skip the S3 rows (no server started)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per path (best kept)")
    args = ap.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    s3 = None
    if not args.no_s3:
        from fedkube.devenv.s3 import start_s3

        s3 = start_s3()
    rows: list[Row] = []
    try:
        for n, params in QUICK_CASES if args.quick else CASES:
            rows += run_case(n, params, args, s3)
    finally:
        if s3 is not None:
            s3.stop()  # type: ignore[attr-defined]
    title = "aggregate: the combiner's per-update path (GB of updates per second)"
    return finish(title, rows, args)


if __name__ == "__main__":
    main()
