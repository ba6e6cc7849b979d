"""The CRD and the operator against a real kube-apiserver + kube-controller-manager.

The operator runs as a real `fedkube operator` process; the state store is a
real MongoDB (FerretDB) and the object store a real S3 (SeaweedFS). These tests
need only the API server (children, owner references, scale, suspend, restart,
garbage collection, Secrets); pods run on the real cluster, in tests/cluster/
(a whole federation, faults, isolation, TLS, RBAC).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedkube.spec import job_key as spec_job_key
from fedkube.state import open_state_store
from tests.support.k8s import EXAMPLE_JOB, K8s, example_job, wait_for

pytestmark = pytest.mark.slow

FEDKUBE = (sys.executable, "-P", "-m", "fedkube")


def apply_fails(k8s: K8s, ns: str, manifest: dict[str, Any]) -> str:
    proc = k8s.kubectl("apply", "-f", "-", input=json.dumps(manifest), namespace=ns, check=False)
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


def test_crd_and_example_apply_with_printer_columns(k8s, crd, namespace):
    k8s.kubectl("apply", "-f", str(EXAMPLE_JOB), namespace=namespace)
    out = k8s.kubectl("get", "fedjobs", namespace=namespace).stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "ROUND", "ROUNDS", "COMBINERS", "READY", "METRIC", "AGE"]
    assert out.splitlines()[1].split()[0] == "mnist"
    obj = k8s.kubectl_json("get", "fedjob", "mnist", namespace=namespace)
    assert obj["spec"]["rounds"] == 10
    assert obj["spec"]["aggregator"]["name"] == "fedavg"  # defaulted by the apiserver
    for short in ("fj", "fedjob"):
        k8s.kubectl("get", short, "mnist", namespace=namespace)


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (
            lambda m: m["spec"].update(rounds=0),
            "spec.rounds",
            "should be greater than or equal to 1",
        ),
        (
            lambda m: m["spec"]["clients"].update(perRound=2, minUpdates=3),
            "spec.clients",
            "spec.clients.minUpdates must be <= spec.clients.perRound",
        ),
        (
            lambda m: m["spec"].update(aggregator={"name": "krum"}),
            "spec.aggregator.name",
            'Unsupported value: "krum"',
        ),
        (
            lambda m: m["spec"].update(aggregator={"name": "median", "trimRatio": "0.1"}),
            "spec.aggregator.trimRatio",
            "only valid when spec.aggregator.name is trimmedmean",
        ),
        (
            lambda m: m["metadata"].update(name="x" * 41),
            "metadata.name",
            "at most 40 characters",
        ),
    ],
    ids=["rounds-0", "minUpdates-gt-perRound", "unknown-aggregator", "wrong-param", "long-name"],
)
def test_invalid_specs_are_rejected_naming_the_field(k8s, crd, namespace, mutate, field, message):
    m = example_job()
    mutate(m)
    err = apply_fails(k8s, namespace, m)
    assert field in err and message in err, err


# ---------------------------------------------------------------- operator


def secrets(k8s: K8s, ns: str, s3_server: Any, mongo_uri: str) -> None:
    k8s.kubectl(
        "create",
        "secret",
        "generic",
        "fedkube-s3-credentials",
        f"--from-literal=AWS_ACCESS_KEY_ID={s3_server.access_key}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={s3_server.secret_key}",
        namespace=ns,
    )
    k8s.kubectl(
        "create",
        "secret",
        "generic",
        "fedkube-mongodb",
        f"--from-literal=uri={mongo_uri}",
        namespace=ns,
    )


def job_for(s3_server: Any, bucket: str, **spec: Any) -> dict[str, Any]:
    m = example_job(**spec)
    m["spec"]["storage"] = {
        "s3": {
            "endpoint": s3_server.endpoint,
            "bucket": bucket,
            "secure": False,
            "credentialsSecret": "fedkube-s3-credentials",
        }
    }
    return m


class Operator:
    def __init__(self, k8s: K8s, ns: str, log: Path) -> None:
        self.k8s, self.ns, self.log_path = k8s, ns, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        fh = open(self.log_path, "ab")  # noqa: SIM115 - the process owns it
        env = {**os.environ, "PYTHONSAFEPATH": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-P",
                "-m",
                "fedkube",
                "operator",
                "--namespace",
                self.ns,
                "--kubeconfig",
                str(self.k8s.kubeconfig),
                "--liveness-port",
                "0",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def operator(k8s, crd, namespace, tmp_path) -> Iterator[Operator]:
    op = Operator(k8s, namespace, tmp_path / "operator.log").start()
    try:
        yield op
    finally:
        op.stop()


def get(k8s: K8s, ns: str, kind: str, name: str) -> dict[str, Any] | None:
    proc = k8s.kubectl("get", kind, name, "-o", "json", namespace=ns, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def job_key(k8s: K8s, ns: str, name: str = "mnist") -> str:
    """The job key the state store knows the FederatedJob by (its status.jobKey),
    checked against namespace, name and uid."""
    fj = get(k8s, ns, "fedjob", name) or {}
    assert fj, f"no FederatedJob {ns}/{name}"
    expected = spec_job_key(name, ns, fj["metadata"]["uid"])
    wait_for(
        lambda: (get(k8s, ns, "fedjob", name) or {}).get("status", {}).get("jobKey") == expected,
        30,
        "status.jobKey",
    )
    return expected


CHILDREN = [
    ("configmap", "mnist-job"),
    ("secret", "mnist-tokens"),
    ("service", "mnist-reducer"),
    ("service", "mnist-combiner"),
    ("service", "mnist-clients"),
    ("statefulset", "mnist-combiner"),
    ("deployment", "mnist-reducer"),
]


def wait_children(k8s: K8s, ns: str, op: Operator) -> dict[tuple[str, str], dict[str, Any]]:
    def all_there() -> bool:
        return all(get(k8s, ns, k, n) is not None for k, n in CHILDREN)

    try:
        wait_for(all_there, 60, "the operator to create every child")
    except Exception:
        raise AssertionError(f"children missing; operator log:\n{op.log()}") from None
    return {(k, n): get(k8s, ns, k, n) or {} for k, n in CHILDREN}


def test_operator_children_scale_suspend_restart_and_delete(
    k8s, namespace, operator, s3_server, s3_bucket, mongo_uri
):
    ns = namespace
    secrets(k8s, ns, s3_server, mongo_uri)
    k8s.apply(job_for(s3_server, s3_bucket), namespace=ns)
    fj = k8s.kubectl_json("get", "fedjob", "mnist", namespace=ns)
    children = wait_children(k8s, ns, operator)
    for (kind, name), obj in children.items():
        refs = obj["metadata"].get("ownerReferences", [])
        assert [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs] == [
            ("FederatedJob", "mnist", fj["metadata"]["uid"], True)
        ], (kind, name)
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "mnist", (kind, name)
        assert labels["app.kubernetes.io/managed-by"] == "fedkube-operator"
    dep = children[("deployment", "mnist-reducer")]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:2] == ["fedkube", "reducer"]
    assert "--combiner-template" in c["command"] and "--linger" in c["command"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in c["env"]}
    assert env["FEDKUBE_REDUCER_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "mnist-tokens",
        "key": "reducer-token",
    }
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == (
        "fedkube-s3-credentials"
    )
    assert dep["spec"]["strategy"]["type"] == "Recreate" and dep["spec"]["replicas"] == 1
    sts = children[("statefulset", "mnist-combiner")]
    cc = sts["spec"]["template"]["spec"]["containers"][0]
    assert cc["command"][:2] == ["fedkube", "combiner"] and "$(POD_NAME)" in cc["command"]
    assert "FEDKUBE_CLIENT_TOKEN" not in {e["name"] for e in cc["env"]}
    assert "FEDKUBE_CLIENT_TOKEN" not in env
    # the Secret holds the reducer token only: clients have per-client credentials
    assert set(children[("secret", "mnist-tokens")]["data"]) == {"reducer-token"}
    assert cc["ports"][0]["containerPort"] == 7070
    assert cc["readinessProbe"]["tcpSocket"]["port"] == 7070
    assert sts["spec"]["replicas"] == 2 and sts["spec"]["serviceName"] == "mnist-combiner"
    assert children[("service", "mnist-combiner")]["spec"]["clusterIP"] == "None"
    # the spec is in the ConfigMap the pods read, and in the state store for the reducer
    cm = yaml.safe_load(children[("configmap", "mnist-job")]["data"]["job.yaml"])
    assert cm["spec"]["rounds"] == 10
    state = open_state_store(mongo_uri)
    key = job_key(k8s, ns)
    assert key.startswith(f"{ns}/mnist-")
    wait_for(lambda: state.get_job(key) is not None, 30, "the job record")
    # the status is synced (no pods: Pending, 0 ready combiners)
    wait_for(
        lambda: (get(k8s, ns, "fedjob", "mnist") or {}).get("status", {}).get("phase"),
        30,
        "a status phase",
    )
    st = get(k8s, ns, "fedjob", "mnist")["status"]
    assert st["phase"] == "Pending" and st["combiners"]["replicas"] == 2
    assert st["observedGeneration"] == fj["metadata"]["generation"]

    # kubectl scale goes through the scale subresource onto spec.combiners.replicas
    k8s.kubectl("scale", "fedjob/mnist", "--replicas=3", namespace=ns)
    wait_for(
        lambda: get(k8s, ns, "statefulset", "mnist-combiner")["spec"]["replicas"] == 3,
        30,
        "3 combiners",
    )
    wait_for(
        lambda: state.get_job(key).manifest["spec"]["combiners"]["replicas"] == 3,
        30,
        "the job record to follow the scale",
    )

    # suspend scales the combiners to zero; resume brings them back
    k8s.kubectl(
        "patch", "fedjob/mnist", "--type", "merge", "-p", '{"spec":{"suspend":true}}', namespace=ns
    )
    wait_for(
        lambda: get(k8s, ns, "statefulset", "mnist-combiner")["spec"]["replicas"] == 0,
        30,
        "suspend to scale combiners to 0",
    )
    wait_for(
        lambda: get(k8s, ns, "fedjob", "mnist")["status"]["phase"] == "Suspended",
        30,
        "phase Suspended",
    )
    assert state.get_job(key).manifest["spec"]["suspend"] is True
    k8s.kubectl(
        "patch", "fedjob/mnist", "--type", "merge", "-p", '{"spec":{"suspend":false}}', namespace=ns
    )
    wait_for(
        lambda: get(k8s, ns, "statefulset", "mnist-combiner")["spec"]["replicas"] == 3, 30, "resume"
    )

    # an operator restart re-applies idempotently: same objects, no duplicates
    before = {(k, n): get(k8s, ns, k, n)["metadata"]["uid"] for k, n in CHILDREN}
    tokens_before = get(k8s, ns, "secret", "mnist-tokens")["data"]
    operator.stop()
    operator.start()
    time.sleep(3)  # give the restarted operator its resume pass
    after = {(k, n): get(k8s, ns, k, n)["metadata"]["uid"] for k, n in CHILDREN}
    assert after == before
    assert get(k8s, ns, "secret", "mnist-tokens")["data"] == tokens_before
    for kind in ("deployments", "statefulsets", "services", "configmaps"):
        items = k8s.kubectl_json(
            "get", kind, "-l", "app.kubernetes.io/instance=mnist", namespace=ns
        )["items"]
        assert len(items) == sum(1 for k, _ in CHILDREN if kind.startswith(k)), kind

    # deleting the FederatedJob removes every child (garbage collector)
    k8s.kubectl("delete", "fedjob", "mnist", "--wait=true", namespace=ns)
    wait_for(
        lambda: all(get(k8s, ns, k, n) is None for k, n in CHILDREN),
        60,
        "garbage collection of the children",
    )
    state.close()


def test_invalid_job_for_kubernetes_gets_an_event(k8s, namespace, operator):
    m = example_job()
    m["spec"].pop("storage")  # no shared storage: pods could not exchange models
    k8s.apply(m, namespace=namespace)

    def event() -> str:
        evs = k8s.kubectl_json(
            "get", "events", "--field-selector", "involvedObject.name=mnist", namespace=namespace
        )["items"]
        return " ".join(f"{e['reason']}: {e['message']}" for e in evs)

    wait_for(lambda: "InvalidSpec" in event(), 60, "an InvalidSpec event")
    assert "spec.storage.s3" in event()
    wait_for(
        lambda: (
            (get(k8s, namespace, "fedjob", "mnist") or {}).get("status", {}).get("phase")
            == "Failed"
        ),
        30,
        "phase Failed",
    )
    assert get(k8s, namespace, "statefulset", "mnist-combiner") is None


def test_an_old_shared_client_token_is_removed_and_the_reducer_token_kept(
    k8s, namespace, operator, s3_server, s3_bucket, mongo_uri
):
    """The Secret an older operator made held a shared client token next to the
    reducer token; this operator keeps the reducer token and drops the other key
    (clients now have credentials of their own). No pods needed: the operator's
    server-side apply against the apiserver is the whole story."""
    ns = namespace
    secrets(k8s, ns, s3_server, mongo_uri)
    legacy = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "mnist-tokens"},
        "type": "Opaque",
        "stringData": {"client-token": "old-shared-token", "reducer-token": "old-reducer-token"},
    }
    k8s.kubectl(
        "apply",
        "--server-side",
        "--field-manager=fedkube-operator",
        "-f",
        "-",
        input=json.dumps(legacy),
        namespace=ns,
    )
    k8s.apply(job_for(s3_server, s3_bucket), namespace=ns)
    wait_children(k8s, ns, operator)

    def secret_data() -> dict[str, str]:
        return (get(k8s, ns, "secret", "mnist-tokens") or {}).get("data") or {}

    try:
        wait_for(lambda: set(secret_data()) == {"reducer-token"}, 30, "the old key to go")
    except Exception:
        keys = sorted(secret_data())
        raise AssertionError(f"Secret keys {keys}; operator:\n{operator.log()}") from None
    assert base64.b64decode(secret_data()["reducer-token"]).decode() == "old-reducer-token"
