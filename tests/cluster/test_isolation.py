"""Jobs are isolated by namespace and identity, on real pods sharing the chart's S3
and MongoDB: two FederatedJobs named `linear` in team-a and team-b both succeed
with their own rounds and models; one deleted and created again starts afresh;
`kubectl patch` of spec.rounds up and down while a job runs does what the README
("Job identity and spec changes") says."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.fedjobs import (
    committed,
    delete_job,
    diagnostics,
    linear_job,
    status,
    wait_finished,
    wait_job_key,
    wait_round_running,
    without_jobs,
)
from tests.support.release import JOB_NAMESPACES, Release

pytestmark = pytest.mark.slow


@pytest.fixture
def namespaces(release: Release) -> Iterator[tuple[str, str]]:
    for _ in without_jobs(release, *JOB_NAMESPACES):
        yield JOB_NAMESPACES


def _patch_rounds(release: Release, ns: str, rounds: int) -> None:
    body = json.dumps({"spec": {"rounds": rounds}})
    release.k8s.kubectl("patch", "fedjob", "linear", "--type", "merge", "-p", body, namespace=ns)


def _models(release: Release, key: str) -> list[str]:
    return sorted(release.objects().list(f"jobs/{key}/models/"))


def test_same_name_in_two_namespaces_then_recreated_then_rounds_patched(
    release: Release, namespaces: tuple[str, str]
) -> None:
    a, b = namespaces
    k = release.k8s
    manifest = linear_job(rounds=3)
    for ns in (a, b):
        k.apply(manifest, ns)
    keys = {ns: wait_job_key(release, ns, "linear") for ns in (a, b)}
    assert keys[a] != keys[b] and keys[a].startswith(f"{a}/linear-"), keys
    for ns in (a, b):
        st = wait_finished(release, ns, "linear")
        assert st["phase"] == "Succeeded" and st["completedRounds"] == 3, (ns, st)
    state = release.state()
    try:
        for ns in (a, b):
            assert sorted(committed(state, keys[ns])) == [1, 2, 3], ns
            assert state.get_job(keys[ns]) is not None
            assert [m.round for m in state.list_models(keys[ns])] == [0, 1, 2, 3]
        # one bucket, two prefixes: each job's models under its own key
        models_a, models_b = _models(release, keys[a]), _models(release, keys[b])
        assert len(models_a) == len(models_b) == 4
        assert not set(models_a) & set(models_b)
        # each job's credentials are its own clients'
        for ns in (a, b):
            assert {c.job for c in state.list_credentials(keys[ns])} == {keys[ns]}

        # deleted and created again under its old name: a new key, a fresh start;
        # the old job's records stay as they were (and serve nobody)
        delete_job(release, a, "linear")
        k.apply(linear_job(rounds=2), a)
        fresh = wait_job_key(release, a, "linear")
        assert fresh != keys[a]
        # raised while it runs: the job continues to the new count
        wait_round_running(state, fresh, 1)
        _patch_rounds(release, a, 4)
        st = wait_finished(release, a, "linear")
        assert st["phase"] == "Succeeded" and st["completedRounds"] == 4, (
            f"{st}{diagnostics(release, a)}"
        )
        assert sorted(committed(state, fresh)) == [1, 2, 3, 4]
        assert state.list_models(fresh)[0].parent is None  # its own seed, not the old model
        assert sorted(committed(state, keys[a])) == [1, 2, 3]

        # lowered below the rounds done while it runs: Succeeded at the completed count
        delete_job(release, b, "linear")
        slow = {**manifest["spec"]["train"]["config"], "sleep": 2}
        k.apply(linear_job(rounds=8, train={"config": slow}), b)
        lowered = wait_job_key(release, b, "linear")
        wait_round_running(state, lowered, 2)
        _patch_rounds(release, b, 1)
        st = wait_finished(release, b, "linear")
        assert st["phase"] == "Succeeded", f"{st}{diagnostics(release, b)}"
        done = sorted(committed(state, lowered))
        assert done == list(range(1, len(done) + 1)) and 2 <= len(done) < 8, done
        assert st["completedRounds"] == len(done)
        assert "spec.rounds was lowered" in st.get("message", ""), st
        assert status(release, b, "linear")["phase"] == "Succeeded"
    finally:
        state.close()
