"""Benchmark `memory`: a real combiner process's peak RSS while it aggregates a round.

For every (N updates, P float32 parameters) of 10, 100, 1,000 x 1M and 10M
(`--quick`: 10 and 50 x 64K), it starts `fedkube combiner` as its own process
(local store, SQLite state), connects N clients speaking the real protocol
(asyncio gRPC streams from this process), and once they are all connected
reads the combiner's resident set (VmRSS, "idle") and resets its high-water
mark (``/proc/<pid>/clear_refs``). It then runs one round: every client gets
a task, uploads its update (a hard link of one prepared file, so the disk
holds it once) and reports it with its digest; the combiner reads, checks and
folds each one and writes its partial. The peak (VmHWM) minus idle is what
aggregating the round cost in memory.

Targets (from the issue): at most 1.5x the model's size above idle, and flat
in N (here: the peak at the largest N at most 1.25x the peak at the smallest).

    python bench/memory.py [--quick] [--json rows.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    REDUCER_TOKEN,
    Row,
    add_common_args,
    combiner_process,
    finish,
    proc_kb,
    tensor_sizes,
)

from fedkube.digest import UPDATE_ALGORITHM, format_digest
from fedkube.model import save_model
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.proto.v1 import fedkube_pb2_grpc as pb_grpc
from fedkube.rpc import bearer
from fedkube.state import open_state_store
from fedkube.store import model_key, open_object_store

MB = 1 << 20
COUNTS = [10, 100, 1000]
SIZES = [1_000_000, 10_000_000]
QUICK_COUNTS = [10, 50]
QUICK_SIZES = [65_536]
TENSORS = 8
STREAMS_PER_CHANNEL = 100


def prepare(tmp: Path, n: int, params: int) -> tuple[Path, Path, dict[str, str], Path, str]:
    """Job file, store root, client tokens, one update file and its digest."""
    manifest = {
        "apiVersion": "fedkube.dev/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "mem"},
        "spec": {
            "rounds": 1,
            "model": {"maxBytes": 1 << 40},
            "clients": {"perRound": n, "minUpdates": 1, "heartbeatSeconds": 60},
        },
    }
    job = tmp / "job.yaml"
    job.write_text(yaml.safe_dump(manifest))
    store_root = tmp / "store"
    store = open_object_store(f"file://{store_root}")
    rng = np.random.default_rng(0)
    seed = {
        f"l{i}": rng.standard_normal(s).astype(np.float32)
        for i, s in enumerate(tensor_sizes(params, TENSORS))
    }
    save_model(tmp / "seed.safetensors", seed)
    store.put_file(model_key("mem", 0), tmp / "seed.safetensors")
    update = tmp / "update.safetensors"
    digest = format_digest(
        UPDATE_ALGORITHM,
        save_model(update, {k: v + 1 for k, v in seed.items()}, algorithm=UPDATE_ALGORITHM),
    )
    state = open_state_store(f"sqlite:///{tmp / 'state.db'}")
    state.create_job("mem", manifest)
    tokens = {f"c{i:04d}": state.issue_credential("mem", f"c{i:04d}")[0] for i in range(n)}
    state.close()
    return job, store_root, tokens, update, digest


async def client(
    stub: pb_grpc.CombinerStub, cid: str, token: str, update: Path, digest: str, acks: list[bool]
) -> None:
    md = bearer(token)
    call = stub.Connect(pb.Hello(client_id=cid, job="mem"), metadata=md)
    async for task in call:
        dest = Path(task.upload.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(update, dest)
        ack = await stub.ReportUpdate(
            pb.Update(task_id=task.task_id, client_id=cid, job="mem", round=task.round,
                      attempt=task.attempt, num_examples=10, digest=digest),
            metadata=md,
        )  # fmt: skip
        acks.append(ack.accepted)


async def drive(address: str, pid: int, tokens: dict[str, str], update: Path, digest: str,
                max_bytes: int) -> tuple[int, int, pb.Partial]:  # fmt: skip
    """Connect the clients, then run one round; (idle kB, peak kB, partial)."""
    ids = sorted(tokens)
    channels = [grpc.aio.insecure_channel(address) for _ in range(0, len(ids), STREAMS_PER_CHANNEL)]
    acks: list[bool] = []
    tasks = [
        asyncio.create_task(
            client(
                pb_grpc.CombinerStub(channels[i // STREAMS_PER_CHANNEL]),
                cid,
                tokens[cid],
                update,
                digest,
                acks,
            )
        )
        for i, cid in enumerate(ids)
    ]
    control = pb_grpc.CombinerControlStub(channels[0])
    rmd = bearer(REDUCER_TOKEN)
    t0 = time.monotonic()
    while (await control.Status(pb.StatusRequest(), metadata=rmd)).connected < len(ids):
        if time.monotonic() - t0 > 120:
            raise SystemExit(f"{len(ids)} clients did not all connect")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    idle = proc_kb(f"/proc/{pid}/status", "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    plan = pb.RoundPlan(job="mem", round=1, attempt=1, kind=pb.TASK_KIND_TRAIN,
                        model_key=model_key("mem", 0), quota=len(ids),
                        deadline_unix_ms=int((time.time() + 600) * 1000), config_json="{}",
                        seed=0, max_bytes=max_bytes)  # fmt: skip
    partial = None
    async for ev in control.RunRound(plan, metadata=rmd, timeout=900):
        if ev.HasField("partial"):
            partial = ev.partial
    peak = proc_kb(f"/proc/{pid}/status", "VmHWM")
    for t in tasks:
        t.cancel()
    for ch in channels:
        await ch.close()
    assert partial is not None, "no partial"
    assert partial.n_updates == len(ids) and all(acks), (partial.n_updates, acks.count(False))
    return idle, peak, partial


def measure(n: int, params: int) -> tuple[float, float, float]:
    """(MB above idle at the peak, model MB, seconds of the round)."""
    tmp = Path(tempfile.mkdtemp(prefix="fedkube-bench-mem-"))
    try:
        job, _, tokens, update, digest = prepare(tmp, n, params)
        with combiner_process(job, tmp) as (proc, address):
            t1 = time.monotonic()
            idle, peak, _ = asyncio.run(drive(address, proc.pid, tokens, update, digest, 1 << 40))
            return (peak - idle) / 1024, params * 4 / MB, time.monotonic() - t1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    args = ap.parse_args(argv)
    counts, sizes = (QUICK_COUNTS, QUICK_SIZES) if args.quick else (COUNTS, SIZES)
    rows: list[Row] = []
    for params in sizes:
        peaks = {}
        for n in counts:
            above, model_mb, secs = measure(n, params)
            peaks[n] = above
            print(f"  {n:>5} x {params:>10,} params: {above:8.1f} MB above idle "
                  f"(model {model_mb:.1f} MB), round {secs:.1f} s", flush=True)  # fmt: skip
            rows.append(Row(f"combiner/{n}x{params:,}", "MB above idle", above, model_mb, 1.5,
                            higher=False, note="baseline: the model's size"))  # fmt: skip
        lo, hi = min(counts), max(counts)
        rows.append(Row(f"combiner/flat {hi} vs {lo} x {params:,}", "MB above idle",
                        peaks[hi], peaks[lo], 1.25, higher=False,
                        note=f"baseline: the peak with {lo} updates"))  # fmt: skip
    return finish("memory: a combiner's peak RSS above idle while aggregating a round", rows, args)


if __name__ == "__main__":
    main()
