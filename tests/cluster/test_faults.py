"""Faults on real pods: `kubectl delete pod` of the reducer mid-round, then of a
combiner mid-round, then of the operator mid-job. The job still Succeeds; every
round is committed exactly once and its model is the FedAvg of what the state
store recorded; the client pods were never restarted (they reconnected through
the clients Service); the operator's restart duplicated nothing (tokens,
credentials, round Events)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fedjobs import (
    assert_models_are_the_recorded_fedavg,
    committed,
    diagnostics,
    linear_job,
    wait_finished,
    wait_job_key,
    wait_round_running,
    without_jobs,
)
from tests.support.k8s import kube_path
from tests.support.release import Release, secret_data

pytestmark = pytest.mark.slow

NS = "team-a"
ROUNDS = 6


@pytest.fixture
def job_ns(release: Release) -> Iterator[str]:
    for _ in without_jobs(release, NS):
        yield NS


def _pods(release: Release, ns: str, component: str) -> dict[str, dict]:  # type: ignore[type-arg]
    pods = release.k8s.api.list(
        kube_path("pods", ns),
        labelSelector=f"fedkube.dev/job=linear,app.kubernetes.io/component={component}",
    )
    return {p["metadata"]["name"]: p for p in pods}


def test_reducer_combiner_and_operator_deleted_mid_job(release: Release, job_ns: str) -> None:
    ns, k = job_ns, release.k8s
    config = {**linear_job()["spec"]["train"]["config"], "sleep": 3}
    manifest = linear_job(rounds=ROUNDS, train={"config": config})
    k.apply(manifest, ns)
    key = wait_job_key(release, ns, "linear")
    state = release.state()
    try:
        # the reducer, while round 2 trains
        wait_round_running(state, key, 2)
        (old_reducer,) = _pods(release, ns, "reducer")
        k.kubectl("delete", "pod", old_reducer, "--wait=false", namespace=ns)
        # a combiner, while round 4 trains (its clients reconnect to the other or to it)
        wait_round_running(state, key, 4)
        old_combiner_uid = _pods(release, ns, "combiner")["linear-combiner-0"]["metadata"]["uid"]
        k.kubectl("delete", "pod", "linear-combiner-0", "--wait=false", namespace=ns)
        # the operator, while round 5 trains
        wait_round_running(state, key, 5)
        tokens_before = secret_data(k, ns, "linear-client-tokens")
        reducer_token_before = secret_data(k, ns, "linear-tokens")
        op = release.pod("operator")
        k.kubectl("delete", "pod", op, "--wait=false", namespace=release.namespace)

        st = wait_finished(release, ns, "linear", timeout=400)
        assert st["phase"] == "Succeeded", f"{st}{diagnostics(release, ns)}"
        assert st["completedRounds"] == ROUNDS

        done = committed(state, key)  # asserts no round was committed twice
        assert sorted(done) == list(range(1, ROUNDS + 1))
        # the rounds the deletions hit were retried (a later attempt committed) or
        # finished; either way once, with the recorded updates' FedAvg
        used = assert_models_are_the_recorded_fedavg(release, key, "linear", config, ROUNDS)

        # new reducer and combiner pods; the client pods never restarted, and every
        # client took part after the combiner's deletion (reconnected via the Service)
        assert old_reducer not in _pods(release, ns, "reducer")
        new_combiner = _pods(release, ns, "combiner")["linear-combiner-0"]
        assert new_combiner["metadata"]["uid"] != old_combiner_uid
        clients = _pods(release, ns, "client")
        assert len(clients) == 4
        for name, pod in clients.items():
            assert pod["status"]["containerStatuses"][0]["restartCount"] == 0, name
        late = {c for r in range(5, ROUNDS + 1) for c in used[r]}
        assert late == set(clients), (late, used)

        # the operator's restart duplicated nothing
        assert release.pod("operator") != op
        assert secret_data(k, ns, "linear-client-tokens") == tokens_before
        assert secret_data(k, ns, "linear-tokens") == reducer_token_before
        creds = [c for c in state.list_credentials(key) if c.revoked_at is None]
        assert sorted(c.client for c in creds) == sorted(clients), creds
        events = k.kubectl_json(
            "get", "events", "--field-selector", "involvedObject.name=linear", namespace=ns
        )["items"]
        rounds_reported = [e["message"] for e in events if e["reason"] == "RoundCompleted"]
        for e in events:
            if e["reason"] == "RoundCompleted":
                assert e.get("count", 1) == 1, (e["message"], e.get("count"))
        assert len(rounds_reported) == len(set(rounds_reported)), rounds_reported
    finally:
        state.close()
