"""Start-up: from `fedkube run` to the first round, and to the job's end, for the mnist job.

    python bench/startup.py                  # examples/mnist/job.yaml: 10 rounds, 8 clients
    python bench/startup.py --quick          # 2 rounds
    python bench/startup.py --rounds 5 --no-fork-row

fedkube: `fedkube run examples/mnist/job.yaml -q` in a fresh work directory (8
in-process clients of a torch CNN, 2 combiners, SQLite and local files), timed
from just before the command is started: the first round started is the
RoundStarted event of round 1 in the job's state store (its clock), the whole
run is the command's exit (the job ran, the processes stopped, the summary was
printed). By default the clients are forked from one `fedkube client-pool`
process that imported the job's code once; a second run with `--no-fork` (one
`fedkube client` process per client, what `fedkube run` did before) is printed
for comparison unless `--no-fork-row`.

The limit: `python examples/mnist/simulate.py`, the same training (the same
task functions, config, data split, rounds and clients, one client after
another, FedAvg in numpy) in one process with no framework, timed the same way
from its start to its exit.

Targets: the first round started <= 3 s after the command; the whole run <=
1.3x the limit.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import Row, add_common_args, finish  # noqa: E402

ROOT = HERE.parent
MNIST = ROOT / "examples" / "mnist"
FIRST_ROUND_TARGET = 3.0
WHOLE_RUN_TARGET = 1.3


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONSAFEPATH", None)  # simulate.py imports mnist_fl from its folder
    env.pop("PYTHONPATH", None)
    return env


def run_fedkube(workdir: Path, rounds: int, fork: bool) -> tuple[float, float]:
    """(seconds to round 1 started, seconds to the command's exit)."""
    argv = [sys.executable, "-m", "fedkube", "run", str(MNIST / "job.yaml"), "-q",
            "--workdir", str(workdir), "--rounds", str(rounds),
            "--fork" if fork else "--no-fork"]  # fmt: skip
    wall0 = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=_env(), capture_output=True, text=True, cwd=ROOT)
    whole = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"fedkube run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    with sqlite3.connect(workdir / "state.db") as db:
        row = db.execute(
            "SELECT min(at) FROM events WHERE kind = 'RoundStarted' AND round = 1"
        ).fetchone()
    if not row or row[0] is None:
        raise SystemExit(f"no RoundStarted event for round 1 in {workdir / 'state.db'}")
    return row[0] - wall0, whole


def run_limit(rounds: int) -> float:
    """Seconds from starting examples/mnist/simulate.py to its exit."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "simulate.py", "--rounds", str(rounds)],
        env=_env(), capture_output=True, text=True, cwd=MNIST,
    )  # fmt: skip
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"simulate.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return secs


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 10, 2 with --quick)")
    ap.add_argument(
        "--no-fork-row", action="store_true", help="skip the comparison run with --no-fork"
    )
    args = ap.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 10)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        print(f"limit: simulate.py, {rounds} rounds ...", flush=True)
        limit = run_limit(rounds)
        print(f"  {limit:.1f} s", flush=True)
        variants = [True] if args.quick or args.no_fork_row else [True, False]
        for fork in variants:
            label = "forked clients" if fork else "a process per client (--no-fork)"
            print(f"fedkube run, {rounds} rounds, {label} ...", flush=True)
            first, whole = run_fedkube(Path(tmp) / f"wd-{fork}", rounds, fork)
            print(f"  round 1 started after {first:.2f} s, exited after {whole:.1f} s", flush=True)
            case = f"mnist {rounds} rounds, 8 clients" + ("" if fork else ", --no-fork")
            target = fork  # the targets are the default's; --no-fork is for comparison
            rows.append(
                Row(case, "first round started s", first,
                    target=FIRST_ROUND_TARGET if target else None, higher=False)
            )  # fmt: skip
            rows.append(
                Row(case, "whole run s vs in-process limit", whole, limit,
                    target=WHOLE_RUN_TARGET if target else None, higher=False,
                    note=f"limit (simulate.py, one process) {limit:.1f} s")
            )  # fmt: skip
    return finish("startup: fedkube run of the mnist example", rows, args)


if __name__ == "__main__":
    main()
