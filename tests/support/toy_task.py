"""A tiny numpy "model" for fast federation tests (no torch).

Client i pulls the weights halfway towards its own target vector, so the
FedAvg result is easy to predict. Per-client misbehaviour for bad-input tests
comes from the train config: {"bad": {"client-3": "nan"}}; a hostile client
claims what it likes with {"claim": {"client-3": 10**12}} and poisons its
update with {"offset": {"client-3": 100.0}}; {"scribble": true} makes the
train command write into IN_MODEL; {"hold_round": {"round": 2, "seconds": 5}}
keeps the first attempt of round 2 training that much longer, so a test can
disrupt it while it is surely in flight (with "marker_dir": DIR each client
holding it first creates DIR/<client id>, so the test knows it is).
Also runnable as a train command: python toy_task.py train IN OUT.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from fedkube.task import TaskContext, TrainResult, ValidationResult

DIM = 64


def init() -> dict[str, np.ndarray]:
    return {
        "w": np.zeros(DIM, np.float32),
        "b": np.zeros((2, 3), np.float32),
        "count": np.zeros(1, np.int64),
    }


def target(i: int) -> np.ndarray:
    return np.random.default_rng(1000 + i).normal(size=DIM).astype(np.float32)


def examples(i: int) -> int:
    return 10 + i


def train(model: dict[str, np.ndarray], ctx: TaskContext) -> TrainResult:
    i = ctx.client_index or 0
    cfg = ctx.config
    delay = float(cfg.get("sleep", 0)) + float(
        cfg.get("sleep_per_client", {}).get(ctx.client_id, 0)
    )
    hold = cfg.get("hold_round", {})
    if hold and ctx.round == int(hold["round"]) and ctx.attempt == 1:
        delay += float(hold["seconds"])  # keeps one attempt open long enough to disrupt it
        if hold.get("marker_dir"):
            (Path(hold["marker_dir"]) / ctx.client_id).touch()
    if delay:
        time.sleep(delay)
    crash = cfg.get("crash", {}).get(ctx.client_id)
    if crash == "exit" and ctx.round == int(cfg.get("crash_round", 1)) and ctx.attempt == 1:
        os._exit(17)  # the client process dies mid-training
    if crash == "hang" and ctx.round == int(cfg.get("crash_round", 1)) and ctx.attempt == 1:
        time.sleep(3600)  # a stuck client: only the round deadline ends its task
    if crash == "raise":
        raise RuntimeError("toy training blew up")
    w = model["w"] + 0.5 * (target(i) - model["w"])
    out = {"w": w.astype(np.float32), "b": model["b"] + 1, "count": model["count"] + 1}
    bad = cfg.get("bad", {}).get(ctx.client_id)
    if bad == "nan":
        out["w"][3] = np.nan
    elif bad == "inf":
        out["b"][0, 0] = np.inf
    elif bad == "shape":
        out["w"] = np.zeros(DIM + 1, np.float32)
    elif bad == "names":
        out["w_renamed"] = out.pop("w")
    elif bad == "dtype":
        out["w"] = out["w"].astype(np.float64)
    elif bad == "big":
        out["extra"] = np.zeros(1 << 20, np.float32)
    if ctx.client_id in cfg.get("offset", {}):
        out["w"] = out["w"] + np.float32(cfg["offset"][ctx.client_id])
    loss = float(np.mean((w - target(i)) ** 2))
    claim = int(cfg.get("claim", {}).get(ctx.client_id, examples(i)))
    return TrainResult(out, num_examples=claim, metrics={"loss": loss})


def validate(model: dict[str, np.ndarray], ctx: TaskContext) -> ValidationResult:
    i = ctx.client_index or 0
    dist = float(np.mean((model["w"] - target(i)) ** 2))
    return ValidationResult(num_examples=5 + i, metrics={"dist": dist})


def scribble(path: str) -> None:
    """What a careless (or hostile) train command does to its input model."""
    with open(path, "r+b") as f:
        f.seek(-16, os.SEEK_END)
        f.write(b"\xff" * 16)


if __name__ == "__main__":
    import json
    import sys

    from fedkube.client.entrypoint import run

    run(train=train, validate=validate, init=init)
    if sys.argv[1:2] == ["train"] and json.loads(os.environ.get("FEDKUBE_CONFIG") or "{}").get(
        "scribble"
    ):
        scribble(sys.argv[2])  # after training: the update is fine, IN_MODEL is not
    raise SystemExit(0)
