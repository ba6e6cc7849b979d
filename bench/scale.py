"""Benchmark `scale`: thousands of clients connected to ONE combiner process.

It starts `fedkube combiner` (local store, SQLite state) and a swarm of asyncio
clients spread over `--procs` processes (`--streams` task streams per gRPC
channel), all connecting at once, as after a combiner restart. Every client
speaks the real protocol: Connect with its own token, heartbeats every
`--heartbeat` seconds, and a report for any task it gets. For each count it
records:

* how the burst of connects ended: streams registered (initial metadata
  received and still open), and every other outcome by gRPC status;
* the combiner's RSS holding them all;
* one round's task fan-out: from RunRound to each client's receipt of its task
  (p50 and p99; every client is selected and "trains" `--train` seconds, 2 by
  default, before it reports).

The largest count whose burst registered every client, with fan-out p99 <=
0.5 s and RSS <= 512 MB, is the row (target >= 5,000).

    python bench/scale.py [--quick] [--counts 1000 2000 4000] [--json rows.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
)

from fedkube.model import save_model
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.proto.v1 import fedkube_pb2_grpc as pb_grpc
from fedkube.rpc import bearer
from fedkube.state import open_state_store
from fedkube.store import model_key, open_object_store
from fedkube.vocabulary import MetadataKey

COUNTS = [1000, 2000, 5000]
QUICK_COUNTS = [50, 200]
RSS_LIMIT_MB = 512
P99_LIMIT_S = 0.5


def prepare(tmp: Path, n: int) -> tuple[Path, dict[str, str]]:
    manifest = {
        "apiVersion": "fedkube.dev/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "swarm"},
        "spec": {
            "rounds": 1,
            "clients": {"perRound": n, "minUpdates": 1, "heartbeatSeconds": 20},
        },
    }
    job = tmp / "job.yaml"
    job.write_text(yaml.safe_dump(manifest))
    store = open_object_store(f"file://{tmp / 'store'}")
    save_model(tmp / "seed.safetensors", {"w": np.zeros(16, np.float32)})
    store.put_file(model_key("swarm", 0), tmp / "seed.safetensors")
    state = open_state_store(f"sqlite:///{tmp / 'state.db'}")
    state.create_job("swarm", manifest)
    tokens = {f"c{i:05d}": state.issue_credential("swarm", f"c{i:05d}")[0] for i in range(n)}
    state.close()
    return job, tokens


async def _client(
    stub: pb_grpc.CombinerStub,
    cid: str,
    token: str,
    heartbeat: float,
    train: float,
    out: dict[str, Any],
) -> None:
    md = bearer(token)
    call = stub.Connect(pb.Hello(client_id=cid, job="swarm"), metadata=md)
    try:
        headers = await call.initial_metadata()  # (empty when the call ended without any)
        if any(k == MetadataKey.HEARTBEAT_SECONDS.value for k, _ in headers or ()):
            out["registered"] = time.time()

        async def beat() -> None:
            while True:
                await asyncio.sleep(heartbeat)
                ack = await stub.Heartbeat(pb.Ping(client_id=cid, job="swarm"), metadata=md)
                if not ack.accepted:
                    out.setdefault("heartbeat_refused", ack.reason)

        beater = asyncio.create_task(beat())
        async for task in call:
            out["task_at"] = time.time()
            await asyncio.sleep(train)  # "training": the other tasks' fan-out goes on
            await stub.ReportUpdate(
                pb.Update(task_id=task.task_id, client_id=cid, job="swarm", round=task.round,
                          attempt=task.attempt, error="swarm clients do not train"),
                metadata=md,
            )  # fmt: skip
        beater.cancel()
        out["ended"] = "stream ended"
    except grpc.aio.AioRpcError as exc:
        out["ended"] = exc.code().name
        out["detail"] = (exc.details() or "")[:120]


def _swarm(address: str, items: list[tuple[str, str]], streams: int, heartbeat: float,
           train: float, hold: float, conn: Any) -> None:  # fmt: skip
    """One swarm process: connect every client at once, hold the streams `hold`
    seconds, send back what happened to each."""

    async def main() -> dict[str, dict[str, Any]]:
        channels = [grpc.aio.insecure_channel(address) for _ in range(0, len(items), streams)]
        results: dict[str, dict[str, Any]] = {cid: {} for cid, _ in items}
        tasks = [
            asyncio.create_task(
                _client(
                    pb_grpc.CombinerStub(channels[i // streams]),
                    cid,
                    tok,
                    heartbeat,
                    train,
                    results[cid],
                )
            )
            for i, (cid, tok) in enumerate(items)
        ]
        conn.send("started")
        await asyncio.sleep(hold)
        for t in tasks:
            t.cancel()
        for ch in channels:
            await ch.close(grace=None)
        return results

    conn.send(asyncio.run(main()))


def proc_rss_mb(pid: int) -> float:
    try:
        return proc_kb(f"/proc/{pid}/status", "VmRSS") / 1024
    except KeyError:
        return float("nan")


async def _round(address: str, n: int) -> float:
    async with grpc.aio.insecure_channel(address) as ch:
        control = pb_grpc.CombinerControlStub(ch)
        md = bearer(REDUCER_TOKEN)
        plan = pb.RoundPlan(job="swarm", round=1, attempt=1, kind=pb.TASK_KIND_TRAIN,
                            model_key=model_key("swarm", 0), quota=n,
                            deadline_unix_ms=int((time.time() + 120) * 1000), config_json="{}",
                            seed=0, max_bytes=1 << 20)  # fmt: skip
        t0 = time.time()
        async for _ in control.RunRound(plan, metadata=md, timeout=180):
            pass
        return t0


async def _connected(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as ch:
        st = await pb_grpc.CombinerControlStub(ch).Status(
            pb.StatusRequest(), metadata=bearer(REDUCER_TOKEN)
        )
        return int(st.connected)


def measure(n: int, args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="fedkube-bench-scale-"))
    try:
        job, tokens = prepare(tmp, n)
        with combiner_process(
            job, tmp, log_level=args.combiner_log_level, log=args.combiner_log
        ) as (proc, address):
            return _run_swarm(n, address, proc.pid, tokens, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_swarm(
    n: int, address: str, pid: int, tokens: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    """Fire the burst, wait for it to settle, run one round, collect every outcome."""
    items = sorted(tokens.items())
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for k in range(args.procs):
        parent, child = ctx.Pipe()
        share = items[k :: args.procs]
        swarm_args = (address, share, args.streams, args.heartbeat, args.train, args.hold)
        p = ctx.Process(target=_swarm, args=(*swarm_args, child))
        p.start()
        pipes.append(parent)
        procs.append(p)
    for parent in pipes:
        parent.recv()  # every process has fired its connects
    t_burst = time.time()
    deadline = t_burst + args.hold - 5
    while time.time() < deadline and asyncio.run(_connected(address)) < n:
        time.sleep(0.5)
    settle = time.time() - t_burst
    rss = proc_rss_mb(pid)
    t_round = asyncio.run(_round(address, n)) if asyncio.run(_connected(address)) == n else None
    results: dict[str, dict[str, Any]] = {}
    for parent in pipes:
        results.update(parent.recv())
    for p in procs:
        p.join(30)
    outcomes = collections.Counter(
        "registered"
        if "registered" in r and "ended" not in r
        else r.get("ended", "pending") + (" after registering" if "registered" in r else "")
        for r in results.values()
    )
    fanout = sorted(r["task_at"] - t_round for r in results.values() if t_round and "task_at" in r)
    return {
        "n": n, "settle_s": settle, "rss_mb": rss, "outcomes": dict(outcomes),
        "heartbeat_refused": sum(1 for r in results.values() if "heartbeat_refused" in r),
        "p50": fanout[len(fanout) // 2] if fanout else None,
        "p99": fanout[int(len(fanout) * 0.99) - 1] if fanout else None,
        "tasks": len(fanout),
        "details": collections.Counter(
            r["detail"] for r in results.values() if "detail" in r
        ).most_common(3),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--counts", type=int, nargs="+", default=None, help="clients per run")
    ap.add_argument("--procs", type=int, default=4, help="swarm processes")
    ap.add_argument("--streams", type=int, default=25, help="task streams per gRPC channel")
    ap.add_argument("--heartbeat", type=float, default=20.0, help="seconds between heartbeats")
    ap.add_argument("--train", type=float, default=2.0, help="seconds a client 'trains' a task")
    ap.add_argument("--hold", type=float, default=None, help="seconds each swarm holds its streams")
    ap.add_argument("--combiner-log-level", default="error", help="the combiner's --log-level")
    ap.add_argument("--combiner-log", type=Path, default=None, help="append its stderr here")
    args = ap.parse_args(argv)
    counts = args.counts or (QUICK_COUNTS if args.quick else COUNTS)
    if args.hold is None:
        args.hold = 20.0 if args.quick else 60.0
    best = 0
    rows: list[Row] = []
    for n in counts:
        m = measure(n, args)
        registered = m["outcomes"].get("registered", 0)
        rows.append(Row(f"burst of {n} connects", "share registered", registered / n, None, 1.0,
                        note=f"outcomes {m['outcomes']}, RSS {m['rss_mb']:.0f} MB, "
                        f"fan-out p50 {m['p50']} s, p99 {m['p99']} s"))  # fmt: skip
        ok = (m["outcomes"].get("registered", 0) == n and m["p99"] is not None
              and m["p99"] <= P99_LIMIT_S and m["rss_mb"] <= RSS_LIMIT_MB)  # fmt: skip
        print(f"  {n:>6} clients: {m}", flush=True)
        if ok:
            best = max(best, n)
    rows.append(Row("clients on one combiner", "clients", float(best), None, 5000.0,
                note=f"fan-out p99 <= {P99_LIMIT_S} s and RSS <= {RSS_LIMIT_MB} MB"))  # fmt: skip
    return finish("scale: clients one combiner holds after a burst of connects", rows, args)


if __name__ == "__main__":
    main()
