"""The ClientApp: "trains" by sleeping `train-seconds` (run config), then returns
the global model plus a small perturbation, with num-examples 10."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
    time.sleep(float(context.run_config["train-seconds"]))
    out = ArrayRecord([a + np.float32(1e-3) for a in arrays])
    content = RecordDict({"arrays": out, "metrics": MetricRecord({"num-examples": 10})})
    return Message(content=content, reply_to=msg)
