"""A plain FedAvg loop over the example's task functions (no fedkube servers).

Each round every client trains from the global model on its own shard; the new
global model is the example-weighted average of the client models (FedAvg);
it is then validated on every client's held-out shard and the example-weighted
mean accuracy is printed. Used to tune ``spec.train.config`` in ``job.yaml``,
whose config is the default here.

    python simulate.py [--rounds 10] [--clients 8] [--set lr=0.05 --set epochs=2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkube.spec import load_job_file
from fedkube.task import TaskContext, Tensors
from mnist_fl.task import init, train, validate

JOB_FILE = Path(__file__).resolve().parent.parent / "job.yaml"


@dataclass(frozen=True)
class RoundResult:
    round: int
    accuracy: float  # example-weighted mean over clients' held-out shards
    loss: float
    train_loss: float  # example-weighted mean of the clients' last local epoch
    seconds: float


def fedavg(models: Sequence[Tensors], weights: Sequence[int]) -> Tensors:
    """The example-weighted average of client models (float64 sum, input dtype out)."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("FedAvg needs a positive total number of examples")
    out: Tensors = {}
    for name, ref in models[0].items():
        acc = np.zeros(ref.shape, dtype=np.float64)
        for m, w in zip(models, weights, strict=True):
            acc += m[name].astype(np.float64) * (w / total)
        out[name] = acc.astype(ref.dtype)
    return out


def run_simulation(
    config: Mapping[str, Any], rounds: int = 10, num_clients: int = 8, *, verbose: bool = True
) -> list[RoundResult]:
    """Run `rounds` FedAvg rounds with every client training each round."""
    model = init()
    results: list[RoundResult] = []

    def ctx(rnd: int, c: int) -> TaskContext:
        return TaskContext(
            job="mnist-sim",
            round=rnd,
            attempt=0,
            client_id=f"client-{c}",
            config=config,
            client_index=c,
            num_clients=num_clients,
        )

    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        updates = [train(model, ctx(rnd, c)) for c in range(num_clients)]
        model = fedavg([u.model for u in updates], [u.num_examples for u in updates])
        vals = [validate(model, ctx(rnd, c)) for c in range(num_clients)]
        n_val = sum(v.num_examples for v in vals)
        n_train = sum(u.num_examples for u in updates)
        res = RoundResult(
            round=rnd,
            accuracy=sum(v.metrics["accuracy"] * v.num_examples for v in vals) / n_val,
            loss=sum(v.metrics["loss"] * v.num_examples for v in vals) / n_val,
            train_loss=sum(u.metrics["train_loss"] * u.num_examples for u in updates) / n_train,
            seconds=time.perf_counter() - t0,
        )
        results.append(res)
        if verbose:
            print(
                f"round {rnd:3d}  held-out accuracy {res.accuracy:.4f}  loss {res.loss:.4f}  "
                f"train loss {res.train_loss:.4f}  ({res.seconds:.2f}s)",
                flush=True,
            )
    return results


def _parse_set(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", type=Path, default=JOB_FILE, help="job file with spec.train.config")
    ap.add_argument("--rounds", type=int, default=None, help="default: spec.rounds")
    ap.add_argument("--clients", type=int, default=None, help="default: simulation clients")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    job = load_job_file(args.job)
    config = {**job.spec.train.config, **_parse_set(args.set)}
    rounds = args.rounds or job.spec.rounds
    clients = args.clients or job.spec.clients.simulation.clients or 8
    print(f"FedAvg: {clients} clients, {rounds} rounds, config {config}", flush=True)
    t0 = time.perf_counter()
    results = run_simulation(config, rounds, clients)
    print(
        f"final held-out accuracy {results[-1].accuracy:.4f} after {rounds} rounds "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
