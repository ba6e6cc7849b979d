"""Server optimizers (Reddi et al. 2021) against hand-computed references.

All expected numbers below were worked out by hand (closed forms such as
0.25 / (sqrt(0.5) + 0.5) evaluated with plain float arithmetic), not by the code
under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedkube.aggregate import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    ServerOptimizer,
    make_server_optimizer,
)
from fedkube.aggregate.optim._adaptive import AdaptiveOptimizer
from fedkube.spec import (
    FedAdagradOptimizer,
    FedAdamOptimizer,
    FedAvgMOptimizer,
    FedAvgOptimizer,
    FedYogiOptimizer,
    _AdaptiveOptimizer,
)

F32 = np.float32


def _model(w: list[float], n: int = 5) -> dict[str, np.ndarray]:
    return {"w": np.array(w, dtype=F32), "n": np.array([n], dtype=np.int64)}


def _copy(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in t.items()}


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k])


def _two_steps(
    opt: ServerOptimizer,
) -> tuple[
    dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]
]:
    """Step 1: current w=[1, 2], aggregated [1.5, 1] (delta [0.5, -1]).
    Step 2: from step 1's model, delta [-1, 0.5]. Returns (next1, state1, next2, state2)."""
    cur1 = _model([1.0, 2.0], n=5)
    agg1 = _model([1.5, 1.0], n=7)
    cur1_before, agg1_before = _copy(cur1), _copy(agg1)
    next1, state1 = opt.step(cur1, agg1, {})
    _assert_same(cur1, cur1_before)  # inputs untouched
    _assert_same(agg1, agg1_before)

    agg2 = {"w": next1["w"] + np.array([-1.0, 0.5], dtype=F32), "n": np.array([9], np.int64)}
    state1_before = _copy(state1)
    next2, state2 = opt.step(next1, agg2, state1)
    _assert_same(state1, state1_before)  # the given state is not modified
    for key in state2:
        assert not np.shares_memory(state2[key], state1[key])
    return next1, state1, next2, state2


def _check_ints(next1: dict[str, np.ndarray], next2: dict[str, np.ndarray]) -> None:
    # Integer tensors take the aggregated value and keep their dtype.
    assert next1["n"].dtype == np.int64 and next1["n"].tolist() == [7]
    assert next2["n"].dtype == np.int64 and next2["n"].tolist() == [9]
    assert next1["w"].dtype == F32 and next2["w"].dtype == F32


def test_fedavg_is_identity() -> None:
    cur, agg = _model([1.0, 2.0]), _model([1.5, 1.0], n=7)
    nxt, state = FedAvg().step(cur, agg, {})
    assert state == {}
    assert nxt["w"].tolist() == [1.5, 1.0] and nxt["n"].tolist() == [7]
    assert cur["w"].tolist() == [1.0, 2.0]


def test_fedavgm_two_steps() -> None:
    # lr 0.5, momentum 0.9.
    # step 1: m = [0.5, -1];                 next = [1, 2] + 0.5 m = [1.25, 1.5]
    # step 2: delta [-1, 0.5]; m = 0.9*[0.5, -1] + [-1, 0.5] = [-0.55, -0.4]
    #         next = [1.25, 1.5] + 0.5 m = [0.975, 1.3]
    next1, state1, next2, state2 = _two_steps(FedAvgM(learning_rate=0.5, momentum=0.9))
    np.testing.assert_allclose(next1["w"], [1.25, 1.5], atol=1e-6)
    np.testing.assert_allclose(state1["m/w"], [0.5, -1.0], atol=1e-6)
    np.testing.assert_allclose(state2["m/w"], [-0.55, -0.4], atol=1e-6)
    np.testing.assert_allclose(next2["w"], [0.975, 1.3], atol=1e-6)
    assert set(state2) == {"m/w"}
    _check_ints(next1, next2)


def test_fedavgm_without_momentum_is_fedavg() -> None:
    cur, agg = _model([1.0, 2.0]), _model([1.5, 1.0])
    nxt, _ = FedAvgM(learning_rate=1.0, momentum=0.0).step(cur, agg, {})
    np.testing.assert_array_equal(nxt["w"], [1.5, 1.0])


# Adaptive optimizers: lr 0.1, beta1 0.5, beta2 0.75, tau 0.5 (so v starts at 0.25).
# delta1 = [0.5, -1], delta1^2 = [0.25, 1]; m1 = 0.5 * delta1 = [0.25, -0.5]
# delta2 = [-1, 0.5], delta2^2 = [1, 0.25]; m2 = 0.5 * m1 + 0.5 * delta2 = [-0.375, 0]
ADAPTIVE = {"learning_rate": 0.1, "beta1": 0.5, "beta2": 0.75, "tau": 0.5}
M1, M2 = [0.25, -0.5], [-0.375, 0.0]


@pytest.mark.parametrize(
    ("cls", "v1", "next1", "v2", "next2"),
    [
        # Adagrad: v1 = 0.25 + [0.25, 1] = [0.5, 1.25]
        #   next1 = [1 + 0.1*0.25/(sqrt(.5)+.5), 2 - 0.1*0.5/(sqrt(1.25)+.5)]
        #         = [1 + 0.05*(sqrt2-1), 2 - 0.05/phi]
        #   v2 = v1 + [1, 0.25] = [1.5, 1.5]; next2[0] = next1[0] - 0.1*0.375/(sqrt(1.5)+.5)
        (
            FedAdagrad,
            [0.5, 1.25],
            [1.0207106781, 1.9690983006],
            [1.5, 1.5],
            [0.9989683320, 1.9690983006],
        ),
        # Adam: v1 = 0.75*0.25 + 0.25*[0.25, 1] = [0.25, 0.4375]
        #   next1 = [1 + 0.1*0.25/1, 2 - 0.1*0.5/(sqrt(.4375)+.5)]
        #   v2 = 0.75*v1 + 0.25*[1, 0.25] = [0.4375, 0.390625]
        #   next2[0] = 1.025 - 0.1*0.375/(sqrt(.4375)+.5)
        (
            FedAdam,
            [0.25, 0.4375],
            [1.025, 1.9569499126],
            [0.4375, 0.390625],
            [0.9927124344, 1.9569499126],
        ),
        # Yogi: v1 = 0.25 - 0.25*[0.25, 1]*sign(0.25 - [0.25, 1]) = [0.25 - 0, 0.25 + 0.25]
        #   next1 = [1 + 0.1*0.25/1, 2 - 0.1*0.5/(sqrt(.5)+.5)]
        #   v2 = v1 - 0.25*[1, 0.25]*sign(v1 - [1, 0.25]) = [0.25 + 0.25, 0.5 - 0.0625]
        #   next2[0] = 1.025 - 0.1*0.375/(sqrt(.5)+.5)
        (FedYogi, [0.25, 0.5], [1.025, 1.9585786438], [0.5, 0.4375], [0.9939339828, 1.9585786438]),
    ],
)
def test_adaptive_two_steps(
    cls: type[AdaptiveOptimizer],
    v1: list[float],
    next1: list[float],
    v2: list[float],
    next2: list[float],
) -> None:
    got1, state1, got2, state2 = _two_steps(cls(**ADAPTIVE))
    assert set(state1) == set(state2) == {"m/w", "v/w"}
    np.testing.assert_allclose(state1["m/w"], M1, atol=1e-7)
    np.testing.assert_allclose(state1["v/w"], v1, atol=1e-7)
    np.testing.assert_allclose(got1["w"], next1, atol=1e-6)
    np.testing.assert_allclose(state2["m/w"], M2, atol=1e-6)
    np.testing.assert_allclose(state2["v/w"], v2, atol=1e-6)
    np.testing.assert_allclose(got2["w"], next2, atol=1e-6)
    _check_ints(got1, got2)


def test_initial_v_is_tau_squared() -> None:
    # No change (delta 0): m stays 0, Adagrad's v stays tau^2 = 1e-4, the model does not move.
    cur = {"w": np.array([3.0], F32)}
    nxt, state = FedAdagrad(tau=0.01).step(cur, {"w": np.array([3.0], F32)}, {})
    assert nxt["w"].tolist() == [3.0]
    np.testing.assert_allclose(state["v/w"], [1e-4], rtol=1e-6)
    np.testing.assert_array_equal(state["m/w"], [0.0])


def test_state_dtypes_follow_tensors() -> None:
    cur: dict[str, np.ndarray] = {
        "d": np.array([1.0], np.float64),
        "h": np.array([1.0], np.float16),
    }
    agg: dict[str, np.ndarray] = {
        "d": np.array([2.0], np.float64),
        "h": np.array([2.0], np.float16),
    }
    nxt, state = FedAdam().step(cur, agg, {})
    assert nxt["d"].dtype == np.float64 and nxt["h"].dtype == np.float16
    assert state["m/d"].dtype == np.float64 and state["v/h"].dtype == np.float32


def test_bad_inputs() -> None:
    opt = FedAdam()
    cur = {"w": np.zeros(2, F32)}
    with pytest.raises(ValueError, match="missing"):
        opt.step(cur, {"x": np.zeros(2, F32)}, {})
    with pytest.raises(ValueError, match="'w'"):
        opt.step(cur, {"w": np.zeros(3, F32)}, {})
    with pytest.raises(ValueError, match="m/w"):
        opt.step(cur, {"w": np.zeros(2, F32)}, {"m/w": np.zeros(3, F32)})
    for kwargs in ({"learning_rate": 0.0}, {"beta1": 1.0}, {"beta2": -0.1}, {"tau": 0.0}):
        with pytest.raises(ValueError):
            FedYogi(**kwargs)
    with pytest.raises(ValueError):
        FedAvgM(momentum=1.0)
    with pytest.raises(ValueError):
        FedAvgM(learning_rate=float("nan"))


def test_factory_and_defaults_match_spec() -> None:
    assert isinstance(make_server_optimizer(FedAvgOptimizer()), FedAvg)
    m = make_server_optimizer(FedAvgMOptimizer(name="fedavgm"))
    assert isinstance(m, FedAvgM)
    d = FedAvgM()
    assert (m.learning_rate, m.momentum) == (d.learning_rate, d.momentum) == (1.0, 0.9)
    adaptive: list[tuple[type[_AdaptiveOptimizer], type[AdaptiveOptimizer], str]] = [
        (FedAdamOptimizer, FedAdam, "fedadam"),
        (FedYogiOptimizer, FedYogi, "fedyogi"),
        (FedAdagradOptimizer, FedAdagrad, "fedadagrad"),
    ]
    for spec_cls, cls, name in adaptive:
        default = cls()
        spec = spec_cls.model_validate({"name": name})
        made = make_server_optimizer(spec)  # type: ignore[arg-type]
        assert type(made) is cls
        assert (spec.learning_rate, spec.beta1, spec.beta2, spec.tau) == (
            default.learning_rate,
            default.beta1,
            default.beta2,
            default.tau,
        )
        custom = make_server_optimizer(
            spec_cls.model_validate(  # type: ignore[arg-type]
                {"name": name, "learningRate": "0.5", "beta1": "0.1", "beta2": "0.2", "tau": "0.3"}
            )
        )
        assert isinstance(custom, cls)
        assert (custom.learning_rate, custom.beta1, custom.beta2, custom.tau) == (
            0.5,
            0.1,
            0.2,
            0.3,
        )
