"""Client selection and quota policies (pure functions)."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from fedkube.selection import derive_seed, distribute_quota, select_clients, weighted_metrics

POOL = [f"client-{i:02d}" for i in range(20)]

# ---------------------------------------------------------------- select_clients


def test_select_is_deterministic_for_a_seed() -> None:
    a = select_clients(POOL, 5, seed=42)
    assert a == select_clients(POOL, 5, seed=42)
    assert len(a) == 5
    assert set(a) <= set(POOL)
    assert a == sorted(a)


def test_select_depends_on_the_seed() -> None:
    picks = {tuple(select_clients(POOL, 5, seed=s)) for s in range(20)}
    assert len(picks) > 10


def test_select_is_independent_of_input_order() -> None:
    expected = select_clients(POOL, 7, seed=3)
    rng = random.Random(0)
    for _ in range(10):
        shuffled = POOL[:]
        rng.shuffle(shuffled)
        assert select_clients(shuffled, 7, seed=3) == expected
    assert select_clients(tuple(reversed(POOL)), 7, seed=3) == expected


@pytest.mark.parametrize("quota", [20, 21, 1000])
def test_select_all_when_quota_covers_the_pool(quota: int) -> None:
    assert select_clients(list(reversed(POOL)), quota, seed=1) == sorted(POOL)


def test_select_no_duplicates_even_with_duplicate_input() -> None:
    doubled = POOL + POOL[:5]
    for seed in range(20):
        picked = select_clients(doubled, 10, seed=seed)
        assert len(picked) == len(set(picked)) == 10
    assert select_clients(["a", "a", "b"], 5, seed=0) == ["a", "b"]


def test_select_zero_and_empty() -> None:
    assert select_clients(POOL, 0, seed=1) == []
    assert select_clients([], 3, seed=1) == []


# ---------------------------------------------------------------- distribute_quota


def test_quota_proportional_with_largest_remainder() -> None:
    # 7 over 5/3/2 connected: exact 3.5, 2.1, 1.4 -> floors 3, 2, 1; the one left
    # goes to the largest remainder (a: 0.5).
    assert distribute_quota(7, {"a": 5, "b": 3, "c": 2}) == {"a": 4, "b": 2, "c": 1}
    # 5 over 1/1/1: capped at what is connected.
    assert distribute_quota(5, {"a": 1, "b": 1, "c": 1}) == {"a": 1, "b": 1, "c": 1}
    # Equal remainders are broken by name.
    assert distribute_quota(1, {"b": 1, "a": 1}) == {"a": 1, "b": 0}
    assert distribute_quota(2, {"c": 1, "b": 1, "a": 1}) == {"a": 1, "b": 1, "c": 0}


@pytest.mark.parametrize("total", [0, 1, 2, 5, 9, 10, 11, 50])
@pytest.mark.parametrize(
    "connected",
    [
        {"a": 5, "b": 3, "c": 2},
        {"a": 1, "b": 0, "c": 9},
        {"only": 4},
        {"a": 3, "b": 3, "c": 3, "d": 1},
    ],
)
def test_quota_sums_to_min_of_total_and_available(total: int, connected: dict[str, int]) -> None:
    quota = distribute_quota(total, connected)
    assert set(quota) == set(connected)
    assert sum(quota.values()) == min(total, sum(connected.values()))
    for name, q in quota.items():
        assert 0 <= q <= connected[name]


def test_quota_never_exceeds_connected_randomized() -> None:
    rng = random.Random(7)
    for _ in range(500):
        connected = {f"c{i}": rng.randint(0, 12) for i in range(rng.randint(1, 6))}
        total = rng.randint(0, 80)
        quota = distribute_quota(total, connected)
        assert sum(quota.values()) == min(total, sum(connected.values()))
        assert all(0 <= quota[n] <= connected[n] for n in connected)
        # Largest remainder: nobody is more than one away from its exact share.
        avail = sum(connected.values())
        if avail:
            want = min(total, avail)
            for n, c in connected.items():
                assert abs(quota[n] - want * c / avail) < 1


def test_quota_zero_capacity() -> None:
    assert distribute_quota(5, {"a": 0, "b": 0}) == {"a": 0, "b": 0}
    assert distribute_quota(5, {}) == {}
    assert distribute_quota(3, {"a": 0, "b": 4}) == {"a": 0, "b": 3}
    assert distribute_quota(3, {"a": -2, "b": 4}) == {"a": 0, "b": 3}
    assert distribute_quota(-1, {"a": 3}) == {"a": 0}


# ---------------------------------------------------------------- weighted_metrics


def test_weighted_metrics_hand_computed() -> None:
    items = [
        ({"loss": 1.0, "acc": 0.5}, 10.0),
        ({"loss": 3.0, "acc": 0.8}, 30.0),
        ({"loss": 2.0}, 20.0),  # reports loss only
    ]
    out = weighted_metrics(items)
    # loss: (10*1 + 30*3 + 20*2) / 60 = 140/60; acc: (10*0.5 + 30*0.8) / 40 = 29/40
    assert out["loss"] == pytest.approx(140 / 60)
    assert out["acc"] == pytest.approx(29 / 40)
    assert list(out) == ["acc", "loss"]


def test_weighted_metrics_skips_non_positive_weights() -> None:
    items = [({"loss": 100.0}, 0.0), ({"loss": 50.0}, -1.0), ({"loss": 2.0}, 4.0)]
    assert weighted_metrics(items) == {"loss": 2.0}
    assert weighted_metrics([({"loss": 1.0}, 0.0)]) == {}
    assert weighted_metrics([]) == {}


def test_weighted_metrics_accepts_ints() -> None:
    assert weighted_metrics([({"n": 1}, 1), ({"n": 2}, 3)]) == {"n": pytest.approx(7 / 4)}


# ---------------------------------------------------------------- derive_seed


def test_derive_seed_is_stable() -> None:
    # Pinned: a change here changes which clients every existing job selects.
    assert derive_seed(0, 1, 2, "c") == 2403415532081962645
    assert derive_seed("job", 3) == 6888394933314593401
    assert derive_seed(0, 1, 2, "c") == derive_seed("0", "1", "2", "c")


def test_derive_seed_range_and_sensitivity() -> None:
    seeds = {derive_seed("job", r, a) for r in range(50) for a in range(3)}
    assert len(seeds) == 150
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed("ab", "c") != derive_seed("a", "bc")


def test_derive_seed_is_the_same_in_another_process() -> None:
    code = "from fedkube.selection import derive_seed; print(derive_seed('job', 3, 1))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout
    assert int(out) == derive_seed("job", 3, 1)


def test_select_steady_prefers_clients_connected_longer():
    from fedkube.selection import select_steady

    idle = {"old-a": 100.0, "old-b": 50.0, "old-c": 20.0, "new-x": 1.0, "new-y": 0.5}
    for seed in range(20):
        picked = select_steady(idle, 2, seed, settle_seconds=10)
        assert set(picked) <= {"old-a", "old-b", "old-c"} and len(set(picked)) == 2
    # too few steady ones: the longest-connected of the rest fill up
    assert select_steady(idle, 4, 1, settle_seconds=10)[3:] == ["new-x"]
    assert sorted(select_steady(idle, 9, 1, settle_seconds=10)) == sorted(idle)
    assert select_steady(idle, 0, 1, settle_seconds=10) == []
    # seeded: the same seed picks the same clients whatever the dict order
    rev = dict(reversed(list(idle.items())))
    assert select_steady(idle, 2, 7, settle_seconds=10) == select_steady(
        rev, 2, 7, settle_seconds=10
    )
