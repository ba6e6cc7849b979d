"""Client selection and quota policies. Pure functions."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts (job seed, round, attempt, name)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def select_clients(idle: Sequence[str], quota: int, seed: int) -> list[str]:
    """Pick `quota` clients out of `idle` (all of them if fewer), seeded and
    independent of the order in which clients connected."""
    pool = sorted(set(idle))
    if quota >= len(pool):
        return pool
    return sorted(random.Random(seed).sample(pool, quota))


def select_steady(
    idle: Mapping[str, float], quota: int, seed: int, *, settle_seconds: float
) -> list[str]:
    """Pick `quota` of the idle clients (id -> seconds connected), preferring steady ones.

    Clients connected for at least `settle_seconds` are picked first, at random
    (seeded, as `select_clients`); when they are too few, the rest are filled
    with the longest-connected of the others. Under churn (clients that come and
    go) the ones that have stayed get the tasks, so an attempt is not spent on
    clients about to leave."""
    if quota <= 0:
        return []
    steady = {c for c, age in idle.items() if age >= settle_seconds}
    chosen = select_clients(sorted(steady), quota, seed)
    if len(chosen) < quota:
        fresh = sorted((c for c in idle if c not in steady), key=lambda c: (-idle[c], c))
        chosen += fresh[: quota - len(chosen)]
    return chosen


def distribute_quota(total: int, connected: Mapping[str, int]) -> dict[str, int]:
    """Split `total` selections over combiners in proportion to their connected
    clients (largest remainder), never more than a combiner has connected."""
    names = sorted(connected)
    capacity = {n: max(0, connected[n]) for n in names}
    avail = sum(capacity.values())
    if avail == 0:
        return {n: 0 for n in names}
    want = max(0, min(total, avail))
    exact = {n: want * capacity[n] / avail for n in names}
    quota = {n: int(exact[n]) for n in names}
    rest = want - sum(quota.values())
    order = sorted(names, key=lambda n: (-(exact[n] - quota[n]), n))
    i = 0
    while rest > 0 and order:
        n = order[i % len(order)]
        if quota[n] < capacity[n]:
            quota[n] += 1
            rest -= 1
        i += 1
    return quota


def weighted_metrics(items: Sequence[tuple[Mapping[str, float], float]]) -> dict[str, float]:
    """Weighted mean of metric dicts, per metric over the items that report it."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for metrics, w in items:
        if w <= 0:
            continue
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v) * w
            weights[k] = weights.get(k, 0.0) + w
    return {k: sums[k] / weights[k] for k in sorted(sums)}
