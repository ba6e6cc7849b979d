"""What every benchmark shares: its result rows, the table it prints, `--json FILE`.

A row compares fedkube with a baseline measured in the same run (these machines
are noisy: only ratios travel). `target` is the ratio the issue asks for, with
`higher` saying which side of it is good; `met` is None when there is no target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One measurement. With a baseline the target applies to the ratio
    fedkube / baseline; without one (an absolute target, e.g. seconds) to fedkube."""

    case: str
    metric: str
    fedkube: float | None
    baseline: float | None = None
    target: float | None = None
    higher: bool = True  # a ratio at or above `target` meets it (else at or below)
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.fedkube is None or not self.baseline:
            return None
        return self.fedkube / self.baseline

    @property
    def met(self) -> bool | None:
        value = self.ratio if self.baseline is not None else self.fedkube
        if self.target is None or value is None:
            return None
        return value >= self.target if self.higher else value <= self.target

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ratio=self.ratio, met=self.met)
        return d


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--quick", action="store_true", help="tiny sizes: runs in seconds (the test suite's run)"
    )
    ap.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the rows here")


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n## {title}  ({platform.node()}, {time.strftime('%Y-%m-%d %H:%M')})")
    head = ("case", "metric", "fedkube", "baseline", "ratio", "target", "met")
    lines = [head]
    for r in rows:
        target = None if r.target is None else f"{'>=' if r.higher else '<='} {r.target:g}"
        met = {None: "-", True: "yes", False: "NO"}[r.met]
        lines.append(
            (r.case, r.metric, _fmt(r.fedkube), _fmt(r.baseline), _fmt(r.ratio), target or "-", met)
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    for n, line in enumerate(lines):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        if r.note:
            print(f"  {r.case}: {r.note}")


def write_json(path: Path | None, rows: list[Row]) -> None:
    if path is not None:
        path.write_text(json.dumps([r.as_json() for r in rows], indent=1) + "\n")


def tensor_sizes(params: int, tensors: int) -> list[int]:
    """`params` values split over `tensors` tensors (the last takes the remainder)."""
    sizes = [params // tensors] * tensors
    sizes[-1] += params - sum(sizes)
    return sizes


def proc_kb(path: str | Path, field: str) -> int:
    """The kB of `field` in a /proc file of ``Field:  N kB`` lines (/proc/PID/status,
    /proc/meminfo, /proc/PID/smaps_rollup); KeyError when it has no such line."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


#: the reducer token the benchmarks' combiners accept
REDUCER_TOKEN = "bench-reducer-token"


@contextlib.contextmanager
def combiner_process(
    job: Path, tmp: Path, *, log_level: str = "warning", log: Path | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`fedkube combiner` as a process of its own on loopback (store `tmp/store`,
    SQLite state `tmp/state.db`): (the process, its address); stopped on exit."""
    port_file = tmp / "port"
    env = {**os.environ, "FEDKUBE_REDUCER_TOKEN": REDUCER_TOKEN}
    stderr = open(log, "a") if log else None  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedkube", "combiner", "--job", str(job), "--name", "c0",
         "--listen", "127.0.0.1:0", "--port-file", str(port_file),
         "--store", f"file://{tmp / 'store'}", "--state", f"sqlite:///{tmp / 'state.db'}",
         "--workdir", str(tmp / "wd"), "--log-level", log_level],
        env=env, stderr=stderr,
    )  # fmt: skip
    try:
        t0 = time.monotonic()
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() - t0 > 60:
                raise SystemExit("the combiner did not start")
            time.sleep(0.05)
        yield proc, f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        proc.terminate()
        proc.wait(30)
        if stderr is not None:
            stderr.close()


def finish(title: str, rows: list[Row], args: argparse.Namespace) -> list[Row]:
    """The end of every benchmark's main: print the table, write `--json`, return."""
    print_table(title, rows)
    write_json(args.json, rows)
    return rows
