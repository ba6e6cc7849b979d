"""A real combiner reads each update once (fedkube.ingest): an update it rejects
half-way, after some of its chunks were already folded into the running sum,
leaves the sum bit-identical to before it.

The model is 3 MiB (three 1 MiB chunks). A good client reports first; then a
bad one whose file is fine up to a NaN in its very last value, or whose file
is whole and finite but does not match the digest it reported (every chunk is
folded before the mismatch shows). The round's partial is then bit for bit the
partial of the good update alone, as a round without the bad client gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedkube.digest import UPDATE_ALGORITHM, format_digest
from fedkube.model import load_model
from tests.support.combiner import CombinerHarness

N = 3 * (1 << 20) // 4  # float32 values: three chunks of the combiner's 1 MiB buffer


def seed() -> dict[str, np.ndarray]:
    return {"w": np.zeros(N - 1000, np.float32), "b": np.zeros(1000, np.float32)}


def update(scale: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(scale * 10))
    return {k: (rng.standard_normal(v.shape) * scale).astype(np.float32) for k, v in seed().items()}


def partial_of(tmp: Path, bad: dict[str, np.ndarray] | None, bad_digest: str | None) -> dict:
    comb = CombinerHarness(tmp, max_bytes=16 << 20, seed=seed())
    try:
        good_c = comb.client("good")
        clients = [good_c] + ([comb.client("bad")] if bad is not None else [])
        comb.wait_connected(len(clients))
        call = comb.run_round(quota=len(clients), deadline_s=30)
        tasks = [c.next_task() for c in clients]
        ack = good_c.report(tasks[0], num_examples=3, digest=good_c.upload(tasks[0], update(1.0)))
        assert ack.accepted, ack
        if bad is not None:
            digest = clients[1].upload(tasks[1], bad)
            ack = clients[1].report(tasks[1], num_examples=5, digest=bad_digest or digest)
            assert not ack.accepted
            assert ack.reason == ("checksum" if bad_digest else "not_finite"), ack
        partial = call.result()
        assert partial.n_updates == 1 and list(partial.participants) == ["good"]
        return load_model(comb.store.local_path(partial.key))
    finally:
        comb.close()


@pytest.mark.parametrize("case", ["nan_in_the_last_chunk", "digest_mismatch"])
def test_an_update_rejected_half_way_leaves_the_sum_bit_identical(
    tmp_path: Path, case: str
) -> None:
    alone = partial_of(tmp_path / "alone", None, None)
    bad = update(100.0)
    if case == "nan_in_the_last_chunk":
        bad["b"][-1] = np.nan  # the last value of the file: two chunks were folded before
        wrong = None
    else:
        wrong = format_digest(UPDATE_ALGORITHM, "0" * 32)
    with_bad = partial_of(tmp_path / "bad", bad, wrong)
    for name, value in alone.items():
        assert with_bad[name].tobytes() == value.tobytes(), name
