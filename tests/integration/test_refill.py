"""Freed slots on a real combiner over loopback gRPC: a selected client that
fails frees its slot, and the slot goes to a client the attempt has not tried
yet, one idle at the fan-out or one that connects later; never again to a
client the attempt already tried."""

from __future__ import annotations

import contextlib
import queue
import time

import numpy as np
import pytest

from fedkube.model import load_model
from fedkube.proto.v1 import fedkube_pb2 as pb
from tests.support.combiner import CombinerHarness, FakeClient, seed_model


@pytest.fixture
def comb(tmp_path):
    h = CombinerHarness(tmp_path)
    yield h
    h.close()


def no_task_for(clients: list[FakeClient], seconds: float = 0.5) -> None:
    """None of `clients` gets a task within `seconds`."""
    for c in clients:
        with pytest.raises(queue.Empty):
            c.next_task(timeout=seconds / len(clients))


def update(value: float) -> dict[str, np.ndarray]:
    m = seed_model()
    m["w"] += value
    return m


def test_a_freed_slot_goes_to_an_untried_client_and_only_to_one(comb):
    a, b, c = comb.client("a"), comb.client("b"), comb.client("c")
    comb.wait_connected(3)
    call = comb.run_round(quota=2, deadline_s=30)
    tasks: dict[str, pb.Task] = {}
    t0 = time.monotonic()
    while len(tasks) < 2:  # the fan-out: two of the three get a task
        assert time.monotonic() - t0 < 20, f"tasks for {sorted(tasks)} only"
        for cl in (a, b, c):
            with contextlib.suppress(queue.Empty):
                tasks[cl.client_id] = cl.next_task(timeout=0.05)
    first, second = (cl for cl in (a, b, c) if cl.client_id in tasks)
    (spare,) = (cl for cl in (a, b, c) if cl.client_id not in tasks)
    no_task_for([spare])

    # the first fails: its slot goes to the client idle since the fan-out
    assert first.report(tasks[first.client_id], error="out of memory").reason == "client_error"
    tasks[spare.client_id] = spare.next_task()
    # the spare fails too: nobody is left to try, and the failed ones get nothing again
    assert spare.report(tasks[spare.client_id], error="gave up").reason == "client_error"
    no_task_for([first, spare])

    # a client that connects now is one the attempt has not tried: it gets the slot
    late = comb.client("late")
    task = late.next_task()
    for cl, t, value in ((late, task, 2.0), (second, tasks[second.client_id], 4.0)):
        ack = cl.report(t, num_examples=1, digest=cl.upload(t, update(value)))
        assert ack.accepted, ack
    partial = call.result()
    assert (partial.n_updates, partial.failed) == (2, 2)
    assert sorted(partial.participants) == sorted(["late", second.client_id])
    np.testing.assert_array_equal(load_model(comb.store.local_path(partial.key))["w"], 3.0)
    no_task_for([first, spare])
