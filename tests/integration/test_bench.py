"""`python bench/run.py --quick` runs every benchmark at tiny sizes, so none of them
can rot: each script must run to the end against the real servers it starts
(the S3 test server, a combiner process, FerretDB) and write its rows. Nothing
here asserts a speed: the numbers at these sizes mean nothing, and timing
assertions have no place in a test suite."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROW_KEYS = {"case", "metric", "fedkube", "baseline", "ratio", "target", "met"}

pytestmark = pytest.mark.slow


def test_every_benchmark_runs_quick_and_writes_its_rows(
    tmp_path: Path, s3_server: object, mongo_server: object
) -> None:
    # the fixtures make sure the servers the scripts start can start (a skip, or a
    # failure under CI=true, naming what is missing, rather than a script's traceback)
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())
    cases = {r["case"].split(":")[0] for r in rows}
    assert cases == {
        "aggregate",
        "memory",
        "scale",
        "large_model",
        "dashboard_queries",
        "startup",
        "round_overhead",
    }, cases
    for r in rows:
        assert r.keys() >= ROW_KEYS, r
        assert isinstance(r["fedkube"], int | float) and math.isfinite(r["fedkube"]), r
        if r["baseline"]:
            assert r["ratio"] == pytest.approx(r["fedkube"] / r["baseline"]), r
    by_case = {r["case"]: r for r in rows}
    # round_overhead measured Flower too (under --quick a failed Flower run is an error)
    overhead = [
        r for r in rows
        if r["case"].startswith("round_overhead:") and r["metric"].startswith("round overhead")
    ]  # fmt: skip
    assert len(overhead) == 2 and all(r["baseline"] for r in overhead), overhead
    # the aggregate rows compare the combiner's path with the limit, the stack
    # baseline and a plain S3 GET, for both sizes
    for name in ("local/10x64K vs limit", "local/10x64K vs stack", "s3/4x256K vs GET"):
        assert f"aggregate: {name}" in by_case, sorted(by_case)
    # large_model found and measured every process: a role it missed would be a
    # peak of 0, which "meets" a target of at most 2.5x the model
    large = [r for r in rows if r["case"].startswith("large_model:")]
    assert {r["case"].split(",")[0] for r in large} == {
        f"large_model: {role} peak RSS" for role in ("combiner", "reducer", "client")
    }, large
    assert all(r["fedkube"] > 0 for r in large), large
    assert "| case" in proc.stdout and "every benchmark" in proc.stdout
