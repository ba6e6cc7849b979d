"""Real multi-process federations for tests: the same processes `fedkube run` starts."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from fedkube.localrun import LocalFederation, LocalRunOptions, Proc
from fedkube.state import RoundRecord, StateStore, open_state_store
from fedkube.vocabulary import AttemptStatus

HERE = Path(__file__).resolve().parent


def toy_manifest(
    name: str = "toy",
    *,
    rounds: int = 3,
    combiners: int = 2,
    clients: int = 4,
    per_round: int | None = None,
    min_updates: int | None = None,
    round_timeout: int = 30,
    config: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    per_round = clients if per_round is None else per_round
    return {
        "apiVersion": "fedkube.dev/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": name},
        "spec": {
            "rounds": rounds,
            "model": {"initFn": "toy_task:init"},
            "train": {
                "fn": "toy_task:train",
                "validateFn": "toy_task:validate",
                "command": ["python", "toy_task.py", "train"],
                "validateCommand": ["python", "toy_task.py", "validate"],
                "config": config or {},
            },
            "clients": {
                "perRound": per_round,
                "minUpdates": min_updates or per_round,
                "roundTimeoutSeconds": round_timeout,
                "waitTimeoutSeconds": 30,
                "heartbeatSeconds": 1,
                "simulation": {"clients": clients},
            },
            "combiners": {"replicas": combiners},
            **spec,
        },
    }


def write_job(directory: Path, manifest: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "toy_task.py", directory / "toy_task.py")
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def committed(fed: Federation) -> list[RoundRecord]:
    """The committed attempts of the federation's job, in round order."""
    return [r for r in fed.state.get_rounds(fed.name) if r.status == AttemptStatus.COMPLETED]


class Federation:
    """Start combiners, the reducer and clients as real processes; poke at them."""

    def __init__(self, job_file: Path, workdir: Path, **opts: Any) -> None:
        self.fed = LocalFederation(
            LocalRunOptions(job_file=job_file, workdir=workdir, progress=False, **opts),
            Console(file=open(os.devnull, "w")),  # noqa: SIM115
        )
        self.job_yaml, self.run_dir = self.fed.setup()
        self.state: StateStore = open_state_store(self.fed.state_uri)
        self.reducer: Proc | None = None
        self.clients: list[Proc] = []

    @property
    def name(self) -> str:
        return self.fed.job.name

    def start(self, *, clients: bool = True, reducer_args: list[str] | None = None) -> Federation:
        """Start the combiners, the reducer (with `reducer_args`, e.g. ``--linger``) and,
        unless `clients` is False, the simulated clients (`start_clients` later)."""
        if clients:
            self.fed.start_pool(self.job_yaml)  # imports the job while the combiners start
        self.fed.start_combiners(self.job_yaml, self.run_dir)
        self.reducer = self.fed.start_reducer(self.job_yaml, reducer_args)
        if clients:
            self.start_clients()
        return self

    def start_clients(self) -> list[Proc]:
        self.clients = self.fed.start_clients(self.job_yaml)
        return self.clients

    def metrics_urls(self) -> dict[str, str]:
        """Role process name -> its /metrics URL: the reducer (waiting until it listens)
        and every combiner."""
        assert self.reducer is not None, "start() first"
        self.fed.wait_reducer_metrics(self.reducer)
        return {n: f"http://{a}/metrics" for n, a in sorted(self.fed.metrics.items())}

    def start_client(self, i: int, n: int | None = None) -> Proc:
        n = n if n is not None else self.fed.job.spec.clients.simulation.clients
        return self.fed.start_client(self.job_yaml, i, n)

    def combiner(self, name: str) -> Proc:
        return [p for p in self.fed.procs if p.name == name and p.popen.poll() is None][-1]

    def restart_combiner(self, name: str) -> Proc:
        """Start a combiner again on the port it had, as a Kubernetes Service would."""
        port = int(self.fed.combiners[name].rsplit(":", 1)[1])
        proc = self.fed.start_combiner(self.job_yaml, self.run_dir, name, port)
        self.fed.wait_combiner(proc, self.run_dir)
        return proc

    def restart_reducer(self) -> Proc:
        self.reducer = self.fed.start_reducer(self.job_yaml)
        return self.reducer

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        proc.signal_group(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.popen.wait(timeout=30)

    def wait_for(self, cond: Callable[[], bool], timeout: float = 120.0, what: str = "") -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if cond():
                return
            if self.reducer is not None and self.reducer.popen.poll() is not None and not cond():
                raise AssertionError(
                    f"reducer exited ({self.reducer.popen.returncode}) while "
                    f"waiting for {what}:\n{self.log('reducer')}"
                )
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}\n{self.log('reducer')}")

    def wait_reducer(self, timeout: float = 180.0) -> int:
        assert self.reducer is not None
        try:
            return self.reducer.popen.wait(timeout=timeout)
        except Exception:
            raise AssertionError(f"reducer did not finish:\n{self.log('reducer')}") from None

    def log(self, name: str, lines: int = 40) -> str:
        p = self.fed.workdir / "logs" / f"{name}.log"
        return "\n".join(p.read_text(errors="replace").splitlines()[-lines:]) if p.exists() else ""

    def close(self) -> None:
        self.fed.stop()
        self.state.close()

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
