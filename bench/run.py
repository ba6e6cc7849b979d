"""Run every benchmark and print one summary: python bench/run.py [--quick] [--json FILE].

Each benchmark is a script of its own in bench/ (run alone for its details and
options); this runs them one after the other, each in a fresh process so one's
memory cannot bend another's numbers, collects their `--json` rows (case,
metric, fedkube, baseline, ratio, target, met) and prints them together.
`--quick` passes on to every script (tiny sizes; the test suite runs it so the
scripts cannot rot). Exit status 0 when every script ran, whatever the targets:
a missed target is a finding to report, not a crash.

    python bench/run.py                      # everything, full sizes
    python bench/run.py --quick              # seconds per script
    python bench/run.py --only aggregate memory --json rows.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import Row, print_table  # noqa: E402

#: name -> script, in the order they run
BENCHMARKS = {
    "aggregate": "aggregate.py",
    "memory": "memory.py",
    "scale": "scale.py",
    "large_model": "large_model.py",
    "dashboard_queries": "dashboard_queries.py",
    "startup": "startup.py",
    "round_overhead": "round_overhead.py",
}


def run_one(name: str, quick: bool, extra: list[str]) -> tuple[int, list[Row], float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        argv = [sys.executable, str(HERE / BENCHMARKS[name]), "--json", str(out), *extra]
        if quick:
            argv.append("--quick")
        print(f"==> {name}: {' '.join(argv[1:])}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call(argv)
        secs = time.perf_counter() - t0
        rows = []
        if out.exists():
            for d in json.loads(out.read_text()):
                rows.append(
                    Row(
                        case=f"{name}: {d['case']}",
                        metric=d["metric"],
                        fedkube=d["fedkube"],
                        baseline=d.get("baseline"),
                        target=d.get("target"),
                        higher=d.get("higher", True),
                    )
                )
        return code, rows, secs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes in every script")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE", help="all rows, as JSON")
    ap.add_argument(
        "--only", nargs="+", choices=list(BENCHMARKS), default=None, help="run only these"
    )
    args = ap.parse_args(argv)
    rows: list[Row] = []
    failed = []
    for name in args.only or list(BENCHMARKS):
        code, got, secs = run_one(name, args.quick, [])
        print(f"<== {name}: exit {code} after {secs:.1f} s", flush=True)
        rows += got
        if code != 0:
            failed.append(name)
    print_table("every benchmark", rows)
    if args.json is not None:
        args.json.write_text(json.dumps([r.as_json() for r in rows], indent=1) + "\n")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
