"""The ServerApp: FedAvg over every SuperNode, no evaluation, rounds timed.

Run config (pyproject.toml, overridden by `flwr run --run-config`):
num-server-rounds, num-nodes (every round trains on all of them, and the first
waits until that many are connected), params and tensors (the float32 model:
`params` parameters in `tensors` tensors), train-seconds (the ClientApp's
sleep; unused here) and timings-file (where the round times go, as JSON).

A round's time is measured here, in the ServerApp: it starts when the strategy
is asked to configure the round (`configure_train`: sampling the nodes and
building the messages, before they are pushed to the SuperLink) and ends when
`aggregate_train` returns the new global model. Everything in between is
Flower's: pushing the messages, the SuperNodes pulling them, a ClientApp per
message, the replies, pulling them back and FedAvg. Both instants are
`time.monotonic()` of this process. The file is rewritten after every round,
so a failed run still leaves the rounds it finished, and at the end, with
``"finished": true`` or the ``"error"`` that ended the run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


def initial_arrays(params: int, tensors: int) -> ArrayRecord:
    """`params` float32 parameters in `tensors` tensors (the last takes the rest)."""
    sizes = [params // tensors] * tensors
    sizes[-1] += params - sum(sizes)
    rng = np.random.default_rng(0)
    return ArrayRecord([rng.standard_normal(s).astype(np.float32) for s in sizes])


class TimedFedAvg(FedAvg):
    """FedAvg that records when each round starts and when its model is aggregated."""

    def __init__(self, timings_file: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timings_file = timings_file
        self.rounds: dict[int, dict[str, float]] = {}
        self.end: dict[str, Any] = {}  # {"finished": true} or {"error": "..."} at the end

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.rounds[server_round] = {"start": time.monotonic()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        result = super().aggregate_train(server_round, replies)
        rec = self.rounds[server_round]
        rec["committed"] = time.monotonic()
        rec["replies"] = sum(1 for m in replies if not m.has_error())
        self._write()
        return result

    def _write(self) -> None:
        if self.timings_file:
            rows = [{"round": r, **v} for r, v in sorted(self.rounds.items())]
            path = Path(self.timings_file)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"clock": "monotonic", "rounds": rows, **self.end}))
            tmp.replace(path)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    n = int(cfg["num-nodes"])
    strategy = TimedFedAvg(
        str(cfg["timings-file"]),
        fraction_train=1.0,
        fraction_evaluate=0.0,  # no federated evaluation: rounds are train only
        min_train_nodes=n,
        min_available_nodes=n,
    )
    try:
        strategy.start(
            grid=grid,
            initial_arrays=initial_arrays(int(cfg["params"]), int(cfg["tensors"])),
            num_rounds=int(cfg["num-server-rounds"]),
        )
    except BaseException as exc:
        strategy.end = {"error": f"{type(exc).__name__}: {exc}"}
        raise
    else:
        strategy.end = {"finished": True}
    finally:
        strategy._write()
