"""A burst of thousands of connects, as after a combiner restart: every client is
registered (or would be told to retry), none is dropped.

gRPC's server cancels calls it has not yet handed to the application once too
many are pending (by default from 1,000, at random, and all beyond 3,000),
with a bare CANCELLED: a third of a burst of 4,000 connects ended that way,
and those clients' heartbeats were then refused as not connected. The
combiner raises both limits (fedkube.rpc.SERVER_OPTIONS). This runs the scale
benchmark's swarm (bench/scale.py: a real `fedkube combiner` process, clients
over asyncio gRPC from 4 processes) with 3,500 clients, beyond the old hard
limit, and checks that every one was registered. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
N = 3500

pytestmark = pytest.mark.slow


def test_a_burst_of_connects_registers_every_client(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scale.py"), "--counts", str(N), "--hold", "20",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["case"]: r for r in json.loads(out.read_text())}
    burst = rows[f"burst of {N} connects"]
    assert burst["fedkube"] == 1.0, burst["note"]
