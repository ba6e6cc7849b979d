"""Benchmark `round_overhead`: what a round costs beyond the clients' training, fedkube
against Flower.

Clients that "train" by sleeping T seconds (2 by default) on a model of P
float32 parameters (1M, in 8 tensors), N of them (10 and 100), R rounds (5),
every client in every round, FedAvg, no evaluation. A round's overhead is its
wall time minus T: everything the framework does around the training. The row
is the median over rounds 2..R of each system (round 1 also pays for the
first connections, imports and caches: it is shown in the note, not counted),
and the target is fedkube <= 0.1x Flower at every N.

**fedkube**: a real local federation (`tests/support/federation.py`, what
``fedkube run`` starts): 2 combiners, the reducer and N simulated clients
(forked from one client pool), embedded store and state (SQLite), loopback
gRPC. The job
(`bench/overhead_task/`) seeds the model from a file (spec.model.seedUri), has
perRound = minUpdates = N, validation off, and its in-process train function
(``--fedkube-train command``: the same function as a train command, a process
per task) sleeps T and returns the model plus 1e-3. The combiners and the
clients start first; the reducer starts once the combiners report all N
clients connected. A round's wall time is the state store's: its attempt's
``started_at`` (the reducer begins the round, before it waits for clients and
plans) to ``completed_at`` (the round committed with model r written), so it
holds the task push, downloads, T, uploads, the combiners' checks and
aggregation, the reducer's merge and every state write.

**Flower** (``flwr`` FLWR_VERSION from PyPI, in a venv of its own: see
bench/_flower.py): its Deployment Engine on loopback, one SuperLink (in-memory
state) and N SuperNodes, each with its SuperExec, all online before ``flwr
run`` submits the app (bench/flower_app/). Its ServerApp runs FedAvg
(fraction_train 1.0, min_available_nodes N, fraction_evaluate 0) on the same
model; its ClientApp sleeps T and returns the model plus 1e-3. A round's wall
time is measured inside the ServerApp, from the strategy's
``configure_train`` (sampling, before the messages are pushed) to the end of
its ``aggregate_train`` (the new global model): the same span as fedkube's.
Flower 1.42 moves messages by polling (a SuperNode with nothing to do asks
the SuperLink again after 3 s, its SuperExec asks the SuperNode every 1 s,
the ServerApp asks for replies every 3 s) and runs a new ``flwr-clientapp``
process for every message: that is Flower as shipped, and it is what its
overhead measures (no setting was tuned for either system). The SuperNodes
and their SuperExecs are forked from one process that imported their code: a
SuperNode and its SuperExec take ~55 MB that way against ~200 MB as processes
of their own, and 100 of those would not fit in 24 GB. They run Flower's own
entry points with the usual arguments; ``--flower-exec`` starts each SuperNode
as a process of its own instead (Flower's default; round times agree where
both fit).

Each Flower round starts N ClientApp processes at once, each ~1.3 CPU
seconds of imports (here). A ClientApp that has not claimed its task 30 s
after its SuperExec took it is given up, the task offered again and another
ClientApp started, and an app that misses its heartbeats fails (flwr's
HEARTBEAT_DEFAULT_INTERVAL). So once N such starts need more than ~30 s of
the machine's cores, ClientApps pile up, rounds lose results and a run can
fail, or never end a round. Then the row has no baseline and its note says
how far Flower got: its run failed, did not end in time (300 s plus, per
round, T + 60 s + 2 s per client), or ate memory until the memory floor
stopped it. With --quick a failed Flower run is an error instead: that run
is there to catch a broken Flower path.

The note of each row gives every round's time (round 1 first; for fedkube
then the median of its stages in rounds 2..R, from the reducer's RoundRecord
timings: wait for clients, train = plans sent until the last combiner's
partial is back, merge, commit; for Flower the results per round when some
were missing), the median gap between one round's end and the next one's
start (outside both systems' round times, shown so that nothing hides there),
the set-up time (not counted) and the memory (PSS) of the processes still
running after the last round: fedkube's combiners and clients, Flower's
SuperLink, SuperNodes and SuperExecs. While a federation runs, a watch stops it when the machine has
less than ``--memory-floor`` MB left, rather than let the OOM killer choose.

When Flower cannot be set up (no network for pip, no venv module) the rows
have no baseline and say why; with CI=true that is an error instead.

    python bench/round_overhead.py                 # 10 and 100 clients, T = 2 s, 5 rounds, 1M
    python bench/round_overhead.py --quick         # 2 and 4 clients, T = 0.5 s, 2 rounds, 64K
    python bench/round_overhead.py --clients 10 --no-flower --json rows.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import Row, add_common_args, finish, proc_kb, tensor_sizes
from _flower import (
    FLWR_VERSION,
    Deployment,
    FlowerRunFailed,
    FlowerUnavailable,
    ensure_venv,
    process_tree,
)

from fedkube.model import save_model
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.proto.v1 import fedkube_pb2_grpc as pb_grpc
from fedkube.rpc import bearer
from fedkube.vocabulary import AttemptStatus
from tests.support.federation import Federation

HERE = Path(__file__).resolve().parent
TASK = HERE / "overhead_task" / "overhead_task.py"

#: (clients, T seconds, rounds, parameters): the issue's sizes, and --quick's
FULL = ([10, 100], 2.0, 5, 1_000_000)
QUICK = ([2, 4], 0.5, 2, 65_536)
TENSORS = 8
TARGET = 0.1  # fedkube's overhead <= 0.1x Flower's


@dataclass
class Rounds:
    """One system's run: each round's wall time (round 1 first) and what surrounds it."""

    times: list[float]
    gaps: list[float] = field(default_factory=list)  # round r-1's end .. round r's start
    setup_s: float = 0.0
    memory_mb: float = 0.0  # PSS of its processes still running after the last round
    stages: dict[str, float] = field(default_factory=dict)  # fedkube's, median of 2..R
    results: list[int] = field(default_factory=list)  # Flower's results per round
    clients: int = 0

    @property
    def steady(self) -> list[float]:
        return self.times[1:] or self.times

    @property
    def median(self) -> float:
        return statistics.median(self.steady)

    def describe(self, name: str) -> str:
        out = f"{name} rounds [{', '.join(f'{t:.2f}' for t in self.times)}] s"
        if self.stages:
            out += f" ({'/'.join(f'{k} {v:.2f}' for k, v in self.stages.items())} s)"
        if any(r < self.clients for r in self.results):
            out += f" with [{', '.join(map(str, self.results))}] results of {self.clients}"
        gap = f"{statistics.median(self.gaps):.3f}" if self.gaps else "-"
        return f"{out}, gap {gap} s, set-up {self.setup_s:.0f} s, {self.memory_mb / 1024:.2f} GB"


def mem_available_mb() -> float:
    return proc_kb("/proc/meminfo", "MemAvailable") / 1024


def descendants_pss_mb() -> float:
    """The PSS of every process below this one (this one not counted), in MB: what
    a federation's processes hold, shared pages split between their sharers."""
    total_kb = 0
    for pid in process_tree([os.getpid()]):
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError, KeyError):  # gone, or no memory of its own
            total_kb += proc_kb(f"/proc/{pid}/smaps_rollup", "Pss")
    return total_kb / 1024


class MemoryWatch:
    """While open, samples the machine's MemAvailable every 0.1 s; when less than
    `floor_mb` is left it calls `abort` (once) and `tripped` says why: a guard
    against the OOM killer, not a measurement."""

    def __init__(self, floor_mb: float) -> None:
        self.floor_mb = floor_mb
        #: stops the federation; says what it was doing
        self.abort: Callable[[], str] = lambda: ""
        self.start_mb = self.low_mb = mem_available_mb()
        self.tripped = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    @property
    def peak_mb(self) -> float:
        return max(0.0, self.start_mb - self.low_mb)

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            now = mem_available_mb()
            self.low_mb = min(self.low_mb, now)
            if now < self.floor_mb and not self.tripped:
                self.tripped = (
                    f"stopped with {now:.0f} MB of memory left (--memory-floor "
                    f"{self.floor_mb:.0f}) after taking {self.peak_mb / 1024:.1f} GB"
                )
                if doing := self.abort():
                    self.tripped += f": {doing}"

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------ fedkube


def seed_tensors(params: int, tensors: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        f"layer{i}": rng.standard_normal(s).astype(np.float32)
        for i, s in enumerate(tensor_sizes(params, tensors))
    }


def overhead_job(directory: Path, n: int, rounds: int, params: int, tensors: int,
                 seconds: float, combiners: int, train: str) -> Path:  # fmt: skip
    """The job directory: overhead_task.py, the seed model and job.yaml."""
    directory.mkdir(parents=True)
    shutil.copyfile(TASK, directory / TASK.name)
    seed = directory / "seed.safetensors"
    save_model(seed, seed_tensors(params, tensors))
    manifest: dict[str, Any] = {
        "apiVersion": "fedkube.dev/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": f"overhead{n}"},
        "spec": {
            "rounds": rounds,
            "model": {"seedUri": seed.as_uri()},
            "train": {
                "fn": "overhead_task:train",
                "validateFn": "overhead_task:validate",
                "command": ["python", TASK.name, "train"],
                "validateCommand": ["python", TASK.name, "validate"],
                "config": {"seconds": seconds},
            },
            "clients": {
                "perRound": n,
                "minUpdates": n,
                "simulation": {"clients": n, "inProcess": train == "fn"},
            },
            "combiners": {"replicas": combiners},
            "validation": {"enabled": False},
        },
    }
    job = directory / "job.yaml"
    job.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return job


def connected(addresses: list[str], token: str) -> int:
    """Clients connected to these combiners, as their Status says."""
    total = 0
    for address in addresses:
        with grpc.insecure_channel(address) as ch:
            stub = pb_grpc.CombinerControlStub(ch)
            total += stub.Status(pb.StatusRequest(), metadata=bearer(token), timeout=10).connected
    return total


def run_fedkube(n: int, args: argparse.Namespace, tmp: Path, watch: MemoryWatch) -> Rounds:
    job = overhead_job(tmp / f"fedkube-{n}", n, args.rounds, args.params, args.tensors,
                       args.seconds, args.combiners, args.fedkube_train)  # fmt: skip
    t0 = time.monotonic()
    with Federation(job, tmp / f"fedkube-{n}-wd") as fed:
        lf = fed.fed

        def abort() -> str:
            for p in list(lf.procs):
                p.signal_group(signal.SIGKILL)
            return ""

        watch.abort = abort
        lf.start_combiners(fed.job_yaml, fed.run_dir)
        fed.start_clients()
        addresses = list(lf.combiners.values())
        while (got := connected(addresses, lf.reducer_token)) < n:
            if time.monotonic() - t0 > 120 + 2 * n:
                raise RuntimeError(f"only {got} of {n} fedkube clients connected")
            time.sleep(0.2)
        setup = time.monotonic() - t0
        fed.restart_reducer()  # the round loop starts now, every client connected
        code = fed.wait_reducer(timeout=120 + args.rounds * (args.seconds + 60 + n))
        if code != 0:
            raise RuntimeError(f"the fedkube reducer exited {code}:\n{fed.log('reducer')}")
        memory = descendants_pss_mb()  # the combiners and the clients (the reducer ended)
        done = sorted(
            (r for r in fed.state.get_rounds(fed.name, participants=False)
             if r.status == AttemptStatus.COMPLETED),
            key=lambda r: r.round,
        )  # fmt: skip
    if len(done) != args.rounds or any(r.n_updates != n for r in done):
        raise RuntimeError(f"fedkube committed {[(r.round, r.n_updates) for r in done]}")
    ends = [r.completed_at or 0.0 for r in done]
    steady = done[1:] or done
    stages = {  # the reducer's RoundRecord.timings (they end before the commit's write)
        key.removesuffix("_s"): statistics.median(r.timings.get(key, 0.0) for r in steady)
        for key in ("wait_s", "train_s", "merge_s", "commit_s")
    }
    return Rounds(
        times=[end - r.started_at for r, end in zip(done, ends, strict=True)],
        gaps=[r.started_at - prev for r, prev in zip(done[1:], ends, strict=False)],
        setup_s=setup,
        memory_mb=memory,
        stages=stages,
    )


# ------------------------------------------------------------------ Flower


def run_flower(n: int, args: argparse.Namespace, tmp: Path, venv: Path,
               watch: MemoryWatch) -> Rounds:  # fmt: skip
    with Deployment(venv, tmp / f"flower-{n}", n, fork=not args.flower_exec) as dep:
        watch.abort = dep.kill
        setup = dep.start()
        got = dep.run(rounds=args.rounds, params=args.params, tensors=args.tensors,
                      seconds=args.seconds,
                      timeout=300 + args.rounds * (args.seconds + 60 + 2 * n))  # fmt: skip
        # the SuperLink, the SuperNodes and their SuperExecs (the ServerApp ended)
        memory = descendants_pss_mb()
    return Rounds(
        times=[r.seconds for r in got],
        gaps=[r.gap for r in got[1:]],
        setup_s=setup,
        memory_mb=memory,
        results=[r.replies for r in got],
        clients=n,
    )


# ------------------------------------------------------------------ main


def measure(
    name: str, args: argparse.Namespace, fn: Callable[..., Rounds], *fn_args: Any
) -> Rounds | str:
    """Run one system's federation, ``fn(*fn_args, watch)``: its Rounds, or why it
    has none: the memory watch stopped it, or Flower's run failed or stalled
    (except with --quick, whose run is there to catch a broken Flower path:
    there that raises, as any other failure does)."""
    with MemoryWatch(args.memory_floor) as watch:
        try:
            got = fn(*fn_args, watch)
        except FlowerRunFailed as exc:
            if args.quick and not watch.tripped:
                raise
            if not watch.tripped:
                print(f"  {name}: {exc}\n{exc.log}", flush=True)
                return f"{name} {exc}"
        except Exception:
            if not watch.tripped:
                raise
    if watch.tripped:
        print(f"  {name}: {watch.tripped}", flush=True)
        return f"{name}: {watch.tripped}"
    print(f"  {got.describe(name)}", flush=True)
    return got


def rows_for(n: int, args: argparse.Namespace, fk: Rounds | str, fl: Rounds | str) -> list[Row]:
    t = args.seconds
    steady = f"median of rounds 2..{args.rounds}"
    notes = [x.describe(name) if isinstance(x, Rounds) else x
             for name, x in (("fedkube", fk), ("Flower", fl))]  # fmt: skip
    note = f"T = {t:g} s, {args.params:,} params; " + "; ".join(notes)
    fk_round = fk.median if isinstance(fk, Rounds) else None
    fl_round = fl.median if isinstance(fl, Rounds) else None
    case = f"{n} clients"
    return [
        Row(
            case,
            f"round overhead s ({steady})",
            None if fk_round is None else fk_round - t,
            None if fl_round is None else fl_round - t,
            TARGET if fl_round is not None else None,  # the target is a ratio to Flower's
            higher=False,
            note=note,
        ),
        Row(case, f"round wall time s ({steady})", fk_round, fl_round, higher=False),
    ]


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(ap)
    ap.add_argument(
        "--clients",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="federation sizes (default 10 100; --quick 2 4)",
    )
    ap.add_argument(
        "--seconds",
        type=float,
        default=None,
        metavar="T",
        help="each client's training time, a sleep (default 2; --quick 0.5)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds per federation, >= 2 (default 5; --quick 2)",
    )
    ap.add_argument(
        "--params",
        type=int,
        default=None,
        help="float32 parameters of the model (default 1,000,000; --quick 65,536)",
    )
    ap.add_argument("--tensors", type=int, default=TENSORS, help="tensors of the model")
    ap.add_argument("--combiners", type=int, default=2, help="fedkube combiners")
    ap.add_argument(
        "--fedkube-train",
        choices=["fn", "command"],
        default="fn",
        help="fedkube's train function in-process (fn) or as a command, "
        "a process per task like Flower's ClientApp",
    )
    ap.add_argument("--no-flower", action="store_true", help="fedkube only, no baseline")
    ap.add_argument(
        "--flower-exec",
        action="store_true",
        help="start every SuperNode as a process of its own (Flower's default subprocess "
        "isolation) instead of forking them and their SuperExecs from one fork server "
        "(bench/_flower.py; 100 of them do not fit in 24 GB otherwise)",
    )
    ap.add_argument(
        "--memory-floor",
        type=float,
        default=4096,
        metavar="MB",
        help="stop a federation that leaves the machine less memory than this (default 4096)",
    )
    args = ap.parse_args(argv)
    # SIGTERM (a timeout, a test runner) ends the federations as Ctrl-C does, cleanly
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    sizes, seconds, rounds, params = QUICK if args.quick else FULL
    args.clients = sorted(args.clients or sizes)
    args.seconds = seconds if args.seconds is None else args.seconds
    args.rounds = rounds if args.rounds is None else args.rounds
    args.params = params if args.params is None else args.params
    if args.rounds < 2:
        ap.error("--rounds must be at least 2 (round 1 is not counted)")

    venv: Path | None = None
    no_flower = "no baseline: --no-flower"
    if not args.no_flower:
        try:
            venv = ensure_venv(lambda line: print(line, flush=True))
        except FlowerUnavailable as exc:
            msg = f"cannot set up Flower {FLWR_VERSION} for the baseline: {exc}"
            if os.environ.get("CI") == "true":
                print(f"error: {msg}", file=sys.stderr)
                raise SystemExit(1) from exc
            print(f"  {msg}\n  (the rows have no baseline)", flush=True)
            lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
            why = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
            no_flower = f"no baseline: Flower could not be set up: {why}"

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fedkube-bench-overhead-") as tmpdir:
        tmp = Path(tmpdir)
        for n in args.clients:
            print(f"  {n} clients, T = {args.seconds:g} s, {args.rounds} rounds, "
                  f"{args.params:,} params:", flush=True)  # fmt: skip
            fk = measure("fedkube", args, run_fedkube, n, args, tmp)
            fl: Rounds | str = no_flower
            if venv is not None:
                fl = measure("Flower", args, run_flower, n, args, tmp, venv)
            rows += rows_for(n, args, fk, fl)
    title = f"round_overhead: round wall time minus training, fedkube vs Flower {FLWR_VERSION}"
    return finish(title, rows, args)


if __name__ == "__main__":
    main()
