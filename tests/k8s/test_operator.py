"""The CRD and the operator against a real kube-apiserver + kube-controller-manager.

The operator runs as a real `fedkube operator` process; the state store is a
real MongoDB (FerretDB) and the object store a real S3 (SeaweedFS). The pod
runner starts the processes the operator's Deployment and StatefulSet describe.
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
from fedkube.store import model_key
from fedkube.vocabulary import EventKind
from tests.support.k8s import EXAMPLE_JOB, REPO, K8s, example_job, wait_for

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


def wait_ready_combiners(k8s: K8s, ns: str, n: int) -> None:
    wait_for(
        lambda: (
            (get(k8s, ns, "fedjob", "mnist") or {})
            .get("status", {})
            .get("combiners", {})
            .get("ready")
            == n
        ),
        90,
        f"{n} ready combiners",
    )


def issue_token(state_uri: str, job: str, client: str) -> str:
    """`fedkube clients issue` against the job's state store: the token, printed once."""
    proc = subprocess.run(
        [*FEDKUBE, "clients", "issue", job, client, "--state", state_uri],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"for client {client!r}" in proc.stderr, proc.stderr
    token = proc.stdout.strip()
    assert token.startswith("fkc_") and "\n" not in token, proc.stdout
    return token


def start_client(
    run_dir: Path, addr: str, client: str, token: str, *args: str
) -> subprocess.Popen[bytes]:
    """`fedkube client --client-id CLIENT` with `token` as its `FEDKUBE_CLIENT_TOKEN`;
    output in run_dir/client.log, work files in run_dir/work."""
    env = {
        **os.environ,
        "FEDKUBE_CLIENT_TOKEN": token,
        "PYTHONSAFEPATH": "1",
        "GRPC_DNS_RESOLVER": "native",  # see tests/support/podrunner.py
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "client.log", "ab")  # noqa: SIM115 - the process owns it
    argv = [*FEDKUBE, "client", "--connect", addr, "--client-id", client]
    return subprocess.Popen(
        [*argv, "--workdir", str(run_dir / "work"), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def stop_clients(clients: list[subprocess.Popen[bytes]]) -> None:
    for p in clients:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in clients:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def log_tail(run_dir: Path) -> str:
    return (run_dir / "client.log").read_text(errors="replace")[-2000:]


def log_messages(run_dir: Path) -> list[str]:
    """The ``msg`` of every JSON log line of the client started in `run_dir`."""
    out = []
    for line in (run_dir / "client.log").read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line).get("msg", ""))
        except (ValueError, AttributeError):
            continue
    return out


def test_clients_prove_their_id_and_an_old_shared_client_token_is_removed(
    k8s, namespace, operator, pod_runner, s3_server, s3_bucket, mongo_uri, tmp_path
):
    """Per-client credentials on the cluster (no torch: the clients never train).

    The Secret an older operator made held a shared client token next to the
    reducer token; this operator keeps the reducer token and drops the other key.
    A client connecting as site-0 with site-1's (valid) credential is refused
    with PERMISSION_DENIED and recorded, while site-0, with its own, stays
    connected.
    """
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

    wait_ready_combiners(k8s, ns, 2)
    key = job_key(k8s, ns)
    tokens = {c: issue_token(mongo_uri, key, c) for c in ("site-0", "site-1")}
    addr = f"mnist-combiner-0.mnist-combiner.{ns}.svc:7070"
    # no model code needed: the clients only connect (a task would fail, harmlessly)
    no_code = ("--job", key, "--train-cmd", "false")
    honest_dir, impostor_dir = tmp_path / "honest", tmp_path / "impostor"
    honest = start_client(honest_dir, addr, "site-0", tokens["site-0"], *no_code)
    clients = [honest]
    try:
        wait_for(
            lambda: "connected" in log_messages(honest_dir) or honest.poll() is not None,
            60,
            "site-0 to connect with its own credential",
        )
        assert honest.poll() is None, log_tail(honest_dir)
        # site-1's credential is valid, but not for site-0
        impostor = start_client(impostor_dir, addr, "site-0", tokens["site-1"], *no_code)
        clients.append(impostor)
        impostor.wait(60)
        out = log_tail(impostor_dir)
        assert impostor.returncode == 3, out
        assert "PERMISSION_DENIED" in out and "issued to client 'site-1', not 'site-0'" in out
        # the honest stream was not displaced
        assert honest.poll() is None, log_tail(honest_dir)
        assert "connection refused" not in log_messages(honest_dir)
        state = open_state_store(mongo_uri)
        try:
            wait_for(
                lambda: any(e.kind == EventKind.IMPERSONATION for e in state.list_events(key)),
                30,
                "an Impersonation event",
            )
            ev = next(e for e in state.list_events(key) if e.kind == EventKind.IMPERSONATION)
            assert "'site-0'" in ev.message and "'site-1'" in ev.message, ev.message
        finally:
            state.close()
    finally:
        stop_clients(clients)


@pytest.mark.torch
def test_end_to_end_mnist_on_the_cluster(
    k8s, namespace, operator, pod_runner, s3_server, s3_bucket, mongo_uri, tmp_path
):
    pytest.importorskip("torch")
    ns = namespace
    secrets(k8s, ns, s3_server, mongo_uri)
    m = job_for(s3_server, s3_bucket, rounds=3, ttlSecondsAfterFinished=15)
    m["spec"]["clients"].update(perRound=4, minUpdates=4)
    m["spec"]["clients"]["simulation"] = {"clients": 4}
    k8s.apply(m, namespace=ns)
    children = wait_children(k8s, ns, operator)
    assert set(children[("secret", "mnist-tokens")]["data"]) == {"reducer-token"}
    wait_ready_combiners(k8s, ns, 2)
    # one credential per client, in the job's state store where the combiners look
    key = job_key(k8s, ns)
    tokens = {f"site-{i}": issue_token(mongo_uri, key, f"site-{i}") for i in range(4)}
    # the clients read the job file the pods read: its metadata carries the job key
    job_file = tmp_path / "job.yaml"
    job_file.write_text(children[("configmap", "mnist-job")]["data"]["job.yaml"])
    clients = []
    for i in range(4):
        addr = f"mnist-combiner-{i % 2}.mnist-combiner.{ns}.svc:7070"
        clients.append(
            start_client(
                tmp_path / f"client-{i}",
                addr,
                f"site-{i}",
                tokens[f"site-{i}"],
                "--job",
                str(job_file),
                "--job-dir",
                str(REPO / "examples" / "mnist"),
                "--client-index",
                str(i),
                "--num-clients",
                "4",
            )
        )
    try:

        def phase() -> str:
            return (get(k8s, ns, "fedjob", "mnist") or {}).get("status", {}).get("phase", "")

        try:
            wait_for(lambda: phase() in ("Succeeded", "Failed"), 600, "the job to finish")
        except Exception:
            raise AssertionError(
                f"job did not finish; reducer log:\n{pod_runner.logs(_reducer_pod(k8s, ns))}"
                f"\noperator:\n{operator.log()}"
            ) from None
        fj = k8s.kubectl_json("get", "fedjob", "mnist", namespace=ns)
        st = fj["status"]
        assert st["phase"] == "Succeeded", st
        assert st["completedRounds"] == 3 and st["currentRound"] == 3
        assert st["latestModel"] == model_key(key, 3)
        assert st["metrics"]["accuracy"] > 0.5
        assert st["headlineMetric"].startswith("accuracy=")
        assert st["completionTime"] and st["startTime"]
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["Complete"]["status"] == "True"
        # the status comes from the state store the reducer wrote
        state = open_state_store(mongo_uri)
        rec = state.get_job(key)
        assert rec.completed_rounds == 3 and rec.metrics["accuracy"] == pytest.approx(
            st["metrics"]["accuracy"]
        )
        state.close()
        reasons = {
            e["reason"]
            for e in k8s.kubectl_json(
                "get", "events", "--field-selector", "involvedObject.name=mnist", namespace=ns
            )["items"]
        }
        assert {"JobRunning", "RoundCompleted", "JobSucceeded"} <= reasons, reasons
        # ttlSecondsAfterFinished: the finished job (and so its children) goes away.
        wait_for(lambda: get(k8s, ns, "fedjob", "mnist") is None, 90, "the TTL to delete it")
        wait_for(
            lambda: get(k8s, ns, "statefulset", "mnist-combiner") is None,
            60,
            "its children to be collected",
        )
    finally:
        stop_clients(clients)


def _reducer_pod(k8s: K8s, ns: str) -> str:
    pods = k8s.kubectl_json(
        "get", "pods", "-l", "app.kubernetes.io/component=reducer", namespace=ns
    )["items"]
    return pods[0]["metadata"]["name"] if pods else ""
