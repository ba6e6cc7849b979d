"""The fedkube task functions of the MNIST example: `init`, `train`, `validate`.

They follow the in-process contract of `fedkube.task` (a model is an ordered
mapping ``name -> numpy array``) and are used both in-process (``spec.train.fn:
mnist_fl.task:train``) and through ``entrypoint.py`` (``spec.train.command``).

Train config keys (``spec.train.config``; numbers may be strings, "0.01"):

==============  =======  ====================================================
key             default  meaning
==============  =======  ====================================================
epochs          3        local epochs per round
batch_size      32       local mini-batch size
lr              0.05     local learning rate
optimizer       sgd      ``sgd`` (with momentum) or ``adam``
momentum        0.9      SGD momentum
weight_decay    0        L2 penalty
num_clients     8        number of shards when the task does not say
alpha           0.5      Dirichlet label-skew concentration
seed            42       data split and shuffling seed
test_fraction   0.2      held-out part of each client's shard
torch_threads   1        torch intra-op threads (clients share the cores)
==============  =======  ====================================================

Data and models are cached in module state, so in-process clients stay warm
between rounds: the data is loaded and split once per process and each thread
keeps one CNN (threads never share a module). Training is deterministic for a
given (model, config, round, client): batches are shuffled by a generator seeded
with (seed, round, client shard) and the network has no randomness.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedkube.model import from_torch, to_torch
from fedkube.task import TaskContext, Tensors, TrainResult, ValidationResult
from mnist_fl.data import DEFAULT_SEED, Shard, cfg_float, cfg_int, client_shard
from mnist_fl.model import Net

INIT_SEED = DEFAULT_SEED

_local = threading.local()
_threads_lock = threading.Lock()
_threads_set: int | None = None


def _setup(config: Mapping[str, Any]) -> None:
    """Use few torch threads: many clients share a couple of cores."""
    global _threads_set
    n = cfg_int(config, "torch_threads", 1)
    with _threads_lock:
        if _threads_set != n:
            torch.set_num_threads(n)
            _threads_set = n


def _net() -> Net:
    """This thread's CNN (created once, reused across rounds)."""
    net: Net | None = getattr(_local, "net", None)
    if net is None:
        net = Net()
        _local.net = net
    return net


def _load(model: Tensors) -> Net:
    net = _net()
    net.load_state_dict(to_torch(model), strict=True)
    return net


def _shard(ctx: TaskContext) -> Shard:
    return client_shard(ctx.config, ctx.client_index, ctx.num_clients, ctx.client_id)


def init() -> Tensors:
    """The seed model: the CNN initialised from a fixed seed, as numpy tensors."""
    _setup({})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        net = Net()
    return from_torch(net.state_dict())


def _optimizer(net: Net, config: Mapping[str, Any]) -> torch.optim.Optimizer:
    name = str(config.get("optimizer", "sgd")).lower()
    lr = cfg_float(config, "lr", 0.05)
    wd = cfg_float(config, "weight_decay", 0.0)
    if name == "sgd":
        momentum = cfg_float(config, "momentum", 0.9)
        return torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(net.parameters(), lr=lr, weight_decay=wd)
    raise ValueError(f"config optimizer: expected 'sgd' or 'adam', got {name!r}")


def train(model: Tensors, ctx: TaskContext) -> TrainResult:
    """Local training on this client's train shard, starting from the global model."""
    config = ctx.config
    _setup(config)
    shard = _shard(ctx)
    epochs = cfg_int(config, "epochs", 3)
    batch_size = cfg_int(config, "batch_size", 32)
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"config epochs ({epochs}) and batch_size ({batch_size}) must be >= 1")
    seed = cfg_int(config, "seed", DEFAULT_SEED)
    rng = np.random.default_rng([seed, ctx.round, shard.index, 2])

    net = _load(model)
    net.train()
    opt = _optimizer(net, config)
    x = torch.from_numpy(shard.x_train)
    y = torch.from_numpy(shard.y_train)
    n = shard.num_train
    loss_sum = 0.0
    correct = 0
    for _ in range(epochs):
        loss_sum, correct = 0.0, 0
        perm = torch.from_numpy(rng.permutation(n))
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            logits = net(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == yb).sum())
    return TrainResult(
        model=from_torch(net.state_dict()),
        num_examples=n,
        # The last local epoch, measured while training.
        metrics={"train_loss": loss_sum / n, "train_accuracy": correct / n},
    )


def evaluate(model: Tensors, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(loss, accuracy) of `model` on images `x` and labels `y`."""
    net = _load(model)
    net.eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(x))
        target = torch.from_numpy(y)
        loss = float(F.cross_entropy(logits, target))
        acc = float((logits.argmax(1) == target).float().mean())
    return loss, acc


def validate(model: Tensors, ctx: TaskContext) -> ValidationResult:
    """The global model on this client's held-out shard."""
    _setup(ctx.config)
    shard = _shard(ctx)
    loss, acc = evaluate(model, shard.x_test, shard.y_test)
    return ValidationResult(num_examples=shard.num_test, metrics={"accuracy": acc, "loss": loss})
