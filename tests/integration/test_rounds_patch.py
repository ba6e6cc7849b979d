"""spec.rounds changed while a job runs (what `kubectl patch` does through the
operator, which copies the spec into the job record): real processes, local stores.

Raising it continues the job, even one that already Succeeded (the reducer lingers
on Kubernetes); lowering it below the completed rounds ends the job Succeeded at
the rounds it completed. The reducer reads spec.rounds from the record before each
round, so no pod restarts."""

from __future__ import annotations

import copy
import signal
from pathlib import Path

from fedkube.vocabulary import Phase
from tests.support.federation import Federation, committed, toy_manifest, write_job


def set_rounds(fed: Federation, rounds: int) -> None:
    """What the operator does on a spec change: store the new manifest in the record."""
    rec = fed.state.get_job(fed.name)
    assert rec is not None
    manifest = copy.deepcopy(rec.manifest)
    manifest["spec"]["rounds"] = rounds
    fed.state.create_job(fed.name, manifest)


def completed(fed: Federation) -> int:
    rec = fed.state.get_job(fed.name)
    return 0 if rec is None else rec.completed_rounds


def test_raising_rounds_while_running_continues_the_job(tmp_path: Path) -> None:
    job = write_job(tmp_path / "job", toy_manifest(rounds=2, config={"sleep": 0.4}))
    with Federation(job, tmp_path / "wd") as fed:
        fed.start()
        fed.wait_for(lambda: completed(fed) >= 1, what="round 1 to commit")
        set_rounds(fed, 4)
        assert fed.wait_reducer() == 0, fed.log("reducer")
        assert [r.round for r in committed(fed)] == [1, 2, 3, 4]
        rec = fed.state.get_job(fed.name)
        assert rec is not None and rec.phase == Phase.SUCCEEDED
        assert rec.message == "completed 4 rounds"


def test_lowering_rounds_below_the_completed_ones_ends_the_job_there(tmp_path: Path) -> None:
    job = write_job(tmp_path / "job", toy_manifest(rounds=8, config={"sleep": 0.4}))
    with Federation(job, tmp_path / "wd") as fed:
        fed.start()
        fed.wait_for(lambda: completed(fed) >= 2, what="round 2 to commit")
        set_rounds(fed, 1)
        assert fed.wait_reducer() == 0, fed.log("reducer")
        rounds = [r.round for r in committed(fed)]
        # the round in flight when the patch landed may finish; none starts after it
        assert rounds == list(range(1, len(rounds) + 1)) and 2 <= len(rounds) <= 3, rounds
        rec = fed.state.get_job(fed.name)
        assert rec is not None and rec.phase == Phase.SUCCEEDED
        assert rec.completed_rounds == len(rounds)
        assert rec.message == (
            f"completed {len(rounds)} rounds (spec.rounds was lowered to 1 while it ran)"
        )


def test_raising_rounds_of_a_finished_lingering_job_runs_the_new_rounds(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path / "job", toy_manifest(rounds=1))
    with Federation(job, tmp_path / "wd") as fed:
        fed.start(reducer_args=["--linger"])

        def succeeded(n: int) -> bool:
            rec = fed.state.get_job(fed.name)
            return rec is not None and rec.phase == Phase.SUCCEEDED and rec.completed_rounds == n

        fed.wait_for(lambda: succeeded(1), what="the job to succeed after 1 round")
        set_rounds(fed, 3)
        fed.wait_for(lambda: succeeded(3), what="rounds 2 and 3 after the patch")
        assert [r.round for r in committed(fed)] == [1, 2, 3]
        assert fed.reducer is not None and fed.reducer.popen.poll() is None  # still lingering
        fed.kill(fed.reducer, signal.SIGTERM)
