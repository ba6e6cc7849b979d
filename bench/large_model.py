"""Benchmark `large_model`: one round of a 2 GiB float32 model through S3, and the
peak memory of every process as a multiple of the model's size.

It starts the S3 test server (SeaweedFS), writes a seed of `--gib` GiB (8
float32 tensors) next to a job file, and runs `fedkube run` on it: one round,
one combiner, 2 simulated clients whose in-process train function adds a
constant to every weight in place (so the numbers are fedkube's, not a
training loop's). The store is the S3 server, the state SQLite. While the job
runs it samples every process `fedkube run` started (psutil, every 0.2 s) and
keeps each one's peak RSS (VmHWM); the rows are the largest per role
(combiner, reducer, client) over the model's size. The simulated clients are
forked by `fedkube client-pool` and keep its command line: a client is a
`client-pool` process whose parent is the pool (the pool itself, which only
imported the job, is not a row). The job must succeed, and every role must
have been seen running, or there is nothing to report.

Targets (from the issue): combiner <= 1.3x, reducer <= 2x, client <= 2.5x.

    python bench/large_model.py [--quick] [--gib 2] [--json rows.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, add_common_args, finish, proc_kb, tensor_sizes

from fedkube.model import save_model

TARGETS = {"combiner": 1.3, "reducer": 2.0, "client": 2.5}
TENSORS = 8
TASK = '''"""The large_model benchmark's train function: every weight + 1, in place."""


def train(model, ctx):
    from fedkube.task import TrainResult

    for value in model.values():
        value += 1
    return TrainResult(model, num_examples=10, metrics={"loss": 0.0})
'''


def write_job(tmp: Path, nbytes: int) -> Path:
    sizes = tensor_sizes(nbytes // 4, TENSORS)
    save_model(
        tmp / "seed.safetensors", {f"l{i}": np.zeros(n, np.float32) for i, n in enumerate(sizes)}
    )
    (tmp / "big_task.py").write_text(TASK)
    manifest = {
        "apiVersion": "fedkube.dev/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "big"},
        "spec": {
            "rounds": 1,
            "model": {
                "seedUri": f"file://{tmp / 'seed.safetensors'}",
                "maxBytes": 2 * nbytes + (1 << 20),
            },
            "train": {"fn": "big_task:train"},
            "clients": {"perRound": 2, "minUpdates": 2, "roundTimeoutSeconds": 1800,
                        "simulation": {"clients": 2}},
            "combiners": {"replicas": 1},
            "validation": {"enabled": False},
        },
    }  # fmt: skip
    job = tmp / "job.yaml"
    job.write_text(yaml.safe_dump(manifest))
    return job


def role(proc: psutil.Process) -> str | None:
    try:
        argv = proc.cmdline()
        if "client-pool" in argv:  # the pool, or a client it forked (same argv)
            parent = proc.parent()
            return "client" if parent is not None and "client-pool" in parent.cmdline() else None
    except psutil.Error:
        return None
    for r in TARGETS:
        if r in argv:
            return r
    return None


def peak_kb(pid: int) -> int:
    try:
        return proc_kb(f"/proc/{pid}/status", "VmHWM")
    except (OSError, KeyError):  # gone, or a process without memory of its own
        return 0


def run_job(job: Path, tmp: Path, s3: object) -> tuple[dict[str, int], float, int]:
    """Run the job; (peak kB per role, seconds, exit code)."""
    bucket = s3.new_bucket_name("big")  # type: ignore[attr-defined]
    env = {**os.environ, **s3.env()}  # type: ignore[attr-defined]
    argv = [sys.executable, "-m", "fedkube", "run", str(job), "--workdir", str(tmp / "wd"),
            "--store", s3.uri(bucket), "--quiet", "--log-level", "warning"]  # type: ignore[attr-defined]  # fmt: skip
    peaks: dict[str, int] = dict.fromkeys(TARGETS, 0)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env)
    try:
        me = psutil.Process(proc.pid)
        while proc.poll() is None:
            for child in me.children(recursive=True):
                r = role(child)
                if r is not None:
                    peaks[r] = max(peaks[r], peak_kb(child.pid))
            time.sleep(0.2)
        return peaks, time.monotonic() - t0, proc.returncode
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
        s3.remove_bucket(bucket)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--gib", type=float, default=2.0, help="model size in GiB (--quick: 1/16)")
    args = ap.parse_args(argv)
    nbytes = int((1 / 16 if args.quick else args.gib) * (1 << 30)) // 64 * 64
    from fedkube.devenv.s3 import start_s3

    s3 = start_s3()
    tmp = Path(tempfile.mkdtemp(prefix="fedkube-bench-big-"))
    try:
        job = write_job(tmp, nbytes)
        peaks, secs, code = run_job(job, tmp, s3)
    finally:
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if code != 0:
        raise SystemExit(f"the job failed (fedkube run exited {code})")
    unseen = [r for r, kb in peaks.items() if kb == 0]
    if unseen:
        raise SystemExit(f"no {' or '.join(unseen)} process was seen while the job ran")
    mb = nbytes / (1 << 20)
    print(f"  one round of a {mb:,.0f} MiB model through S3 in {secs:.1f} s", flush=True)
    rows = [
        Row(
            f"{r} peak RSS, {mb:,.0f} MiB model",
            "MiB",
            peaks[r] / 1024,
            mb,
            TARGETS[r],
            higher=False,
            note="baseline: the model's size",
        )
        for r in TARGETS
    ]
    return finish("large_model: peak RSS per process, as a multiple of the model", rows, args)


if __name__ == "__main__":
    main()
