"""FederatedJobs on the real cluster (tests/cluster/): the linear example's manifest,
waiting on a job's phase and rounds, what its state store recorded, and the
FedAvg a test recomputes from that record.

The linear example (examples/linear) is deterministic for a given (model, config,
client), so every committed global model can be recomputed from its parent and
the round's accepted updates as the state store recorded them (client ids and
weights): `assert_models_are_the_recorded_fedavg` does that for every round.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedkube.model import load_model
from fedkube.state import StateStore
from fedkube.store import model_key
from fedkube.task import TaskContext
from fedkube.vocabulary import AssignmentStatus, AttemptStatus
from tests.support.k8s import kube_path, wait_for
from tests.support.release import RELEASE, REPO, Release

LINEAR = REPO / "examples" / "linear"
LINEAR_JOB = LINEAR / "job.yaml"
TERMINAL = ("Succeeded", "Failed")


def deep_update(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def linear_job(name: str = "linear", **spec: Any) -> dict[str, Any]:
    """examples/linear/job.yaml with `spec` deep-merged in (and another name)."""
    m: dict[str, Any] = yaml.safe_load(LINEAR_JOB.read_text())
    m["metadata"]["name"] = name
    deep_update(m["spec"], spec)
    return m


def fedjob(release: Release, ns: str, name: str) -> dict[str, Any] | None:
    try:
        obj: dict[str, Any] = release.k8s.api.get(
            kube_path("fedkube.dev/v1alpha1/federatedjobs", ns, name)
        )
    except Exception:
        return None
    return obj


def status(release: Release, ns: str, name: str) -> dict[str, Any]:
    return dict((fedjob(release, ns, name) or {}).get("status") or {})


def diagnostics(release: Release, ns: str, operator: str = RELEASE) -> str:
    """What a failing assertion should show: the pods, the log tails of the operator
    (of release `operator`) and of the reducer, and the job's Events."""
    k = release.k8s
    pods = k.kubectl("get", "pods", "-o", "wide", namespace=ns, check=False).stdout
    events = k.kubectl(
        "get", "events", "--sort-by=.lastTimestamp", namespace=ns, check=False
    ).stdout
    op_log = release.logs("operator", tail=40, instance=operator)
    op_log = "\n".join(line for line in op_log.splitlines() if "GET /healthz" not in line)
    return (
        f"\n--- pods in {ns}\n{pods}"
        f"\n--- events in {ns}\n{events[-3000:]}"
        f"\n--- operator ({operator})\n{op_log}"
        f"\n--- reducer\n{release.logs('reducer', ns, tail=60)}"
    )


def wait_job_key(release: Release, ns: str, name: str, timeout: float = 90) -> str:
    return str(
        wait_for(
            lambda: status(release, ns, name).get("jobKey"),
            timeout,
            f"status.jobKey of {ns}/{name}",
        )
    )


def wait_finished(
    release: Release, ns: str, name: str, timeout: float = 300, operator: str = RELEASE
) -> dict[str, Any]:
    """The status once the job is Succeeded or Failed (AssertionError with the pods
    and logs when it is neither after `timeout`; `operator` is the release serving
    `ns`)."""
    try:
        wait_for(
            lambda: status(release, ns, name).get("phase") in TERMINAL,
            timeout,
            f"{ns}/{name} to finish",
            interval=0.5,
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nstatus: {status(release, ns, name)}{diagnostics(release, ns, operator)}"
        ) from None
    return status(release, ns, name)


def delete_job(release: Release, ns: str, name: str, timeout: float = 120) -> None:
    """Delete the FederatedJob and wait until it and its pods are gone."""
    k = release.k8s
    k.kubectl("delete", "fedjob", name, "--ignore-not-found", "--wait=false", namespace=ns)

    def gone() -> bool:
        pods = k.api.list(kube_path("pods", ns), labelSelector=f"fedkube.dev/job={name}")
        return fedjob(release, ns, name) is None and not pods

    wait_for(gone, timeout, f"{ns}/{name} and its pods to be gone", interval=0.5)


def without_jobs(release: Release, *namespaces: str, name: str = "linear") -> Iterator[None]:
    """The body of a fixture: no FederatedJob `name` in `namespaces` before the test nor
    after it (deleted and waited for, pods included)."""
    for ns in namespaces:
        delete_job(release, ns, name)
    yield
    for ns in namespaces:
        delete_job(release, ns, name)


def wait_round_running(state: StateStore, key: str, round: int, timeout: float = 120) -> int:
    """The attempt of `round` once it runs (begun, not committed)."""

    def running() -> int | None:
        for r in state.get_rounds(key, participants=False):
            if r.round == round and r.status == AttemptStatus.RUNNING:
                return r.attempt
        return None

    return int(wait_for(running, timeout, f"round {round} of {key} to run", interval=0.2))


def committed(state: StateStore, key: str) -> dict[int, Any]:
    """round -> its committed RoundRecord, asserting no round was committed twice."""
    out: dict[int, Any] = {}
    for r in state.get_rounds(key):
        if r.status == AttemptStatus.COMPLETED:
            assert r.round not in out, f"round {r.round} of {key} committed twice"
            out[r.round] = r
    return out


def load_models(release: Release, key: str, rounds: int) -> list[dict[str, np.ndarray]]:
    """The global models 0..rounds of job `key` from the shared S3 store."""
    store = release.objects()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds + 1):
            path = Path(tmp) / f"{r}.safetensors"
            store.get_file(model_key(key, r), path)
            out.append(dict(load_model(path)))
    return out


@contextmanager
def linear_task() -> Iterator[Any]:
    sys.path.insert(0, str(LINEAR))
    try:
        import linear_fl.task as task

        yield task
    finally:
        sys.path.remove(str(LINEAR))
        sys.modules.pop("linear_fl.task", None)
        sys.modules.pop("linear_fl", None)


def client_index(client: str, job_name: str) -> int | None:
    """The pod ordinal of an in-cluster client (``<job>-client-<i>``), else None."""
    prefix = f"{job_name}-client-"
    return int(client[len(prefix) :]) if client.startswith(prefix) else None


def assert_models_are_the_recorded_fedavg(
    release: Release, key: str, job_name: str, config: dict[str, Any], rounds: int
) -> dict[int, list[str]]:
    """Every global model 1..rounds equals the FedAvg (weights as recorded) of the
    linear task run by the round's accepted clients on the model before it.
    Returns round -> the clients whose updates it aggregated."""
    state = release.state()
    try:
        done = committed(state, key)
        assert sorted(done) == list(range(1, rounds + 1)), sorted(done)
        updates = state.list_updates(key)
    finally:
        state.close()
    models = load_models(release, key, rounds)
    used: dict[int, list[str]] = {}
    with linear_task() as task:
        for r in range(1, rounds + 1):
            rec = done[r]
            accepted = [
                u
                for u in updates
                if u.round == r
                and u.attempt == rec.attempt
                and u.status == AssignmentStatus.ACCEPTED
            ]
            assert len(accepted) == rec.n_updates, (r, rec.n_updates, accepted)
            total = sum(u.weight for u in accepted)
            expect = {name: np.zeros_like(a, dtype=np.float64) for name, a in models[r - 1].items()}
            for u in accepted:
                ctx = TaskContext(
                    key,
                    r,
                    rec.attempt,
                    u.client,
                    config,
                    client_index=client_index(u.client, job_name),
                )
                out = task.train(models[r - 1], ctx)
                assert out.num_examples == u.num_examples, (u.client, out.num_examples)
                for name, a in out.model.items():
                    expect[name] += a.astype(np.float64) * (u.weight / total)
            for name, a in models[r].items():
                np.testing.assert_allclose(
                    a, expect[name], rtol=1e-4, atol=1e-5, err_msg=f"round {r} {name}"
                )
            used[r] = sorted(u.client for u in accepted)
    return used
