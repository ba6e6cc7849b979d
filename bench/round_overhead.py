"""Round overhead per client: what fedkube adds beyond the clients' own training.

Runs real federations (reducer, combiners and N client processes on loopback
gRPC, embedded store and state) with the toy numpy task, whose training takes
microseconds, so a round's time is almost all fedkube: selection, task push,
transfer, checks, aggregation, state writes, merge, commit. Prints the median
round time for each N and the per-client slope against the smallest N (the
baseline in the same run).

    python bench/round_overhead.py                 # N = 2, 8, 32
    python bench/round_overhead.py --clients 4 16 64 --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.federation import Federation, toy_manifest, write_job  # noqa: E402


def measure(n: int, rounds: int, combiners: int, tmp: Path) -> tuple[float, float]:
    manifest = toy_manifest(name=f"bench{n}", rounds=rounds, clients=n, combiners=combiners)
    manifest["spec"]["validation"] = {"enabled": False}
    job = write_job(tmp / f"job{n}", manifest)
    with Federation(job, tmp / f"wd{n}") as fed:
        fed.start()
        if fed.wait_reducer(timeout=600) != 0:
            raise SystemExit(f"federation with {n} clients failed:\n{fed.log('reducer')}")
        done = [r for r in fed.state.get_rounds(fed.name) if r.status == "completed"]
    # Round 1 includes client start-up (waiting for connections); skip it.
    steady = done[1:] or done
    train = statistics.median(r.timings["train_s"] for r in steady)
    total = statistics.median(r.timings["total_s"] - r.timings.get("wait_s", 0) for r in steady)
    return train, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[2, 8, 32])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--combiners", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(args.clients):
            train, total = measure(n, args.rounds, args.combiners, Path(tmp))
            rows.append((n, train, total))
            print(f"  {n:>4} clients: round {total * 1000:8.1f} ms", flush=True)
    base_n, _, base_total = rows[0]
    print()
    slope_col = f"ms/client vs N={base_n}"
    print(f"{'clients':>8} {'round ms':>10} {'train phase ms':>15} {slope_col:>20}")
    for n, train, total in rows:
        slope = (total - base_total) / (n - base_n) * 1000 if n != base_n else float("nan")
        print(f"{n:>8} {total * 1000:>10.1f} {train * 1000:>15.1f} {slope:>20.2f}")


if __name__ == "__main__":
    main()
