"""The test pod runner (tests/support/podrunner.py) against the real control plane:
the real controllers create the Pods, the runner runs them as local processes
and reports their status, the controllers compute Deployment, StatefulSet and
EndpointSlice status from it."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.k8s import K8s, kube_path, wait_for
from tests.support.podrunner import HOSTS_FILE, PodRunner, Rewriter, expand, hosts_lock, write_hosts

# An HTTP server: GET /file serves ROOT/index.html, /env the environment, /hosts
# its /etc/hosts, /healthz ok.
HTTP_SERVER = r"""
import http.server, json, os, sys
host, port, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            body = b"ok"
        elif self.path == "/file":
            body = open(os.path.join(root, "index.html"), "rb").read()
        elif self.path == "/hosts":
            body = open("/etc/hosts", "rb").read()
        elif self.path == "/env":
            body = json.dumps({"env": dict(os.environ), "argv": sys.argv}).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
print("serving", host, port, root, flush=True)
http.server.HTTPServer((host, port), H).serve_forever()
"""

# A StatefulSet member: serves its name and address on --listen, then connects to
# its peer by <peer>.<service> and prints what the peer said.
PEER = r"""
import os, socket, sys, threading, time
host, port = sys.argv[2].rsplit(":", 1)
me, svc = os.environ["HOSTNAME"], os.environ["SVC"]
server = socket.create_server((host, int(port)))
def serve():
    while True:
        conn, _ = server.accept()
        conn.sendall(f"{me} {host}".encode())
        conn.close()
threading.Thread(target=serve, daemon=True).start()
print("listening", host, port, flush=True)
peer = "db-1" if me == "db-0" else "db-0"
while True:
    try:
        with socket.create_connection((f"{peer}.{svc}", int(port)), timeout=1) as conn:
            print("PEER-OK", peer, conn.recv(100).decode(), flush=True)
            break
    except OSError:
        time.sleep(0.2)
while True:
    time.sleep(1)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _get(k8s: K8s, kind: str, ns: str, name: str) -> Any:
    return k8s.api.get(kube_path(kind, ns, name))


def _pods(k8s: K8s, ns: str, selector: str) -> list[dict[str, Any]]:
    return k8s.api.list(kube_path("pods", ns), labelSelector=selector)


def _http(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bytes(resp.read())


# ---- pure helpers


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$$(A)", env) == "$(A)"  # escaped
    assert expand("$(MISSING)", env) == "$(MISSING)"  # unknown stays
    assert expand("$(A", env) == "$(A"  # unterminated stays
    assert expand("cost $5 $", env) == "cost $5 $"


def test_rewriter_substitutes_mount_paths_and_listen_addresses() -> None:
    rw = Rewriter(
        {"/etc/fedkube": Path("/w/v/spec"), "/etc/fedkube/tokens": Path("/w/v/tok")}, "10.244.1.2"
    )
    assert rw("/etc/fedkube/spec.yaml") == "/w/v/spec/spec.yaml"
    assert rw("--token=/etc/fedkube/tokens/t") == "--token=/w/v/tok/t"
    assert rw("/etc/fedkubes/x") == "/etc/fedkubes/x"  # not at a path boundary
    assert rw("/x/etc/fedkube") == "/x/etc/fedkube"
    assert rw("--listen=0.0.0.0:7070") == "--listen=10.244.1.2:7070"
    assert rw.path("/etc/fedkube/tokens") == "/w/v/tok"
    assert rw.path("/srv") is None


# ---- with the control plane


def test_deployment_runs_and_becomes_ready(k8s: K8s, namespace: str, pod_runner: PodRunner) -> None:
    content = f"hello from the configmap {secrets.token_hex(4)}"
    greeting = f"hi-{secrets.token_hex(3)}"
    labels = {"app": "web"}
    k8s.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "web-content"},
                "data": {"index.html": content, "greeting": greeting},
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web"},
                "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": 8080}]},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [
                                {
                                    "name": "web",
                                    "image": "python:3.11",
                                    "command": ["python", "-c", HTTP_SERVER],
                                    "args": ["$(POD_IP)", "8080", "/srv/www"],
                                    "env": [
                                        {
                                            "name": "POD_IP",
                                            "valueFrom": {
                                                "fieldRef": {"fieldPath": "status.podIP"}
                                            },
                                        },
                                        {
                                            "name": "POD_NAME",
                                            "valueFrom": {
                                                "fieldRef": {"fieldPath": "metadata.name"}
                                            },
                                        },
                                        {
                                            "name": "GREETING",
                                            "valueFrom": {
                                                "configMapKeyRef": {
                                                    "name": "web-content",
                                                    "key": "greeting",
                                                }
                                            },
                                        },
                                        {"name": "MESSAGE", "value": "$(GREETING) world"},
                                    ],
                                    "ports": [{"name": "http", "containerPort": 8080}],
                                    "readinessProbe": {
                                        "httpGet": {"path": "/healthz", "port": "http"},
                                        "periodSeconds": 10,
                                    },
                                    "volumeMounts": [{"name": "www", "mountPath": "/srv/www"}],
                                }
                            ],
                            "volumes": [{"name": "www", "configMap": {"name": "web-content"}}],
                        },
                    },
                },
            },
        ],
        namespace,
    )
    # readiness through the real controllers: Pod Ready -> ReplicaSet -> Deployment
    wait_for(
        lambda: _get(k8s, "deployments", namespace, "web")["status"].get("readyReplicas") == 1,
        60,
        "the Deployment to report 1 ready replica",
    )
    (pod,) = _pods(k8s, namespace, "app=web")
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    assert pod["spec"]["nodeName"] == pod_runner.node_name
    assert pod["status"]["phase"] == "Running"
    assert ip == pod_runner.pod_ip(name)
    assert ip.startswith("10.244.")
    conds = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conds["Ready"] == conds["ContainersReady"] == "True"
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["ready"] and cs["started"] and cs["restartCount"] == 0
    assert "running" in cs["state"]

    # the served file is the ConfigMap's key, the process saw the resolved env
    assert _http(f"http://{ip}:8080/file").decode() == content
    seen = json.loads(_http(f"http://{ip}:8080/env"))
    env = seen["env"]
    assert env["POD_IP"] == ip and env["POD_NAME"] == name
    assert env["GREETING"] == greeting and env["MESSAGE"] == f"{greeting} world"
    assert env["FEDKUBE_BIND_HOST"] == ip
    assert seen["argv"][1:3] == [ip, "8080"]
    assert seen["argv"][3] != "/srv/www" and Path(seen["argv"][3], "index.html").is_file()

    # the EndpointSlice controller publishes the Pod; its name resolves to it
    def endpoint_ips() -> list[str]:
        slices = k8s.api.list(
            kube_path("endpointslices", namespace), labelSelector="kubernetes.io/service-name=web"
        )
        return [a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]]

    assert wait_for(endpoint_ips, 30, "the Service's EndpointSlice") == [ip]
    wait_for(lambda: socket.gethostbyname(f"web.{namespace}.svc") == ip, 30, "web.<ns>.svc")
    assert _http(f"http://web.{namespace}.svc:8080/file").decode() == content
    # the pod's own /etc/hosts: this namespace's names, no runner's block
    pod_hosts = _http(f"http://{ip}:8080/hosts").decode()
    assert f"{ip} web web.{namespace} web.{namespace}.svc" in pod_hosts
    assert "# BEGIN fedkube-podrunner" not in pod_hosts

    # deleting the Deployment: the garbage collector removes ReplicaSet and Pod, the
    # runner stops the process (graceful deletion: SIGTERM, then the Pod is removed)
    pid = pod_runner.pid(name)
    assert pid is not None and _alive(pid)
    k8s.kubectl("delete", "deployment", "web", "--wait=false", namespace=namespace)
    wait_for(lambda: not _alive(pid), 60, "the process to be killed")
    wait_for(lambda: not _pods(k8s, namespace, "app=web"), 60, "the Pod to be deleted")
    wait_for(
        lambda: not k8s.api.list(kube_path("replicasets", namespace), labelSelector="app=web"),
        60,
        "the ReplicaSet to be garbage-collected",
    )
    wait_for(lambda: not endpoint_ips(), 30, "the endpoint to go")
    wait_for(
        lambda: f"web.{namespace}.svc" not in HOSTS_FILE.read_text(), 30, "the hosts entry to go"
    )


def test_statefulset_members_resolve_each_other(
    k8s: K8s, namespace: str, pod_runner: PodRunner
) -> None:
    labels = {"app": "db"}
    k8s.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "dbsvc"},
                "spec": {
                    "clusterIP": "None",
                    "selector": labels,
                    "ports": [{"port": 9000, "targetPort": 9000}],
                },
            },
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {"name": "db"},
                "spec": {
                    "serviceName": "dbsvc",
                    "replicas": 2,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [
                                {
                                    "name": "db",
                                    "image": "python:3.11",
                                    "command": ["python", "-c", PEER],
                                    "args": ["--listen", "0.0.0.0:9000"],
                                    "env": [{"name": "SVC", "value": "dbsvc"}],
                                    "ports": [{"containerPort": 9000}],
                                    "readinessProbe": {"tcpSocket": {"port": 9000}},
                                }
                            ],
                        },
                    },
                },
            },
        ],
        namespace,
    )
    wait_for(
        lambda: _get(k8s, "statefulsets", namespace, "db")["status"].get("readyReplicas") == 2,
        90,
        "the StatefulSet to report 2 ready replicas",
    )
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in _pods(k8s, namespace, "app=db")}
    assert sorted(ips) == ["db-0", "db-1"] and ips["db-0"] != ips["db-1"]
    for me, peer in (("db-0", "db-1"), ("db-1", "db-0")):
        # the pod's own /etc/hosts: its namespace's names only, whatever else runs
        expected = f"PEER-OK {peer} {peer} {ips[peer]}"
        wait_for(lambda: expected in pod_runner.logs(me), 60, f"{me} to reach {peer}.dbsvc")  # noqa: B023
        # 0.0.0.0:9000 was rewritten to the pod's own address
        assert f"listening {ips[me]} 9000" in pod_runner.logs(me)
    for pod, ip in ips.items():  # the host's view (qualified names are unique)
        assert socket.gethostbyname(f"{pod}.dbsvc.{namespace}.svc") == ip
        assert socket.gethostbyname(f"{pod}.dbsvc.{namespace}.svc.cluster.local") == ip
    assert sorted(
        {a[4][0] for a in socket.getaddrinfo(f"dbsvc.{namespace}.svc", 9000, socket.AF_INET)}
    ) == sorted(ips.values())


def test_crashing_container_is_restarted(k8s: K8s, namespace: str, pod_runner: PodRunner) -> None:
    labels = {"app": "crash"}
    k8s.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "crash"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "crash",
                                "image": "python:3.11",
                                "command": ["python", "-c", "print('boom'); raise SystemExit(3)"],
                            }
                        ]
                    },
                },
            },
        },
        namespace,
    )

    def restarted() -> dict[str, Any] | None:
        pods = _pods(k8s, namespace, "app=crash")
        statuses = pods[0]["status"].get("containerStatuses") if pods else None
        return statuses[0] if statuses and statuses[0]["restartCount"] >= 2 else None

    cs = wait_for(restarted, 60, "restartCount >= 2")
    assert cs["lastState"]["terminated"]["exitCode"] == 3
    assert cs["lastState"]["terminated"]["reason"] == "Error"

    def backing_off() -> dict[str, Any] | None:
        state = (restarted() or {}).get("state", {})
        return state if "waiting" in state else None

    state = wait_for(backing_off, 60, "the CrashLoopBackOff state")
    assert state["waiting"]["reason"] == "CrashLoopBackOff"
    (pod,) = _pods(k8s, namespace, "app=crash")
    assert pod["status"]["phase"] == "Running"  # restartPolicy Always
    assert pod_runner.logs(pod["metadata"]["name"]).count("boom") >= 2
    deploy = _get(k8s, "deployments", namespace, "crash")
    assert not deploy["status"].get("readyReplicas")


# Reads what an init container left in an emptyDir, a Secret key mounted with
# subPath and Secret keys from envFrom; then flags itself ready (exec probe).
FEATURES = r"""
import os, pathlib
init = open("/work/ready.txt").read()
token = open("/etc/creds/token").read()
print("MAIN", init, os.environ["CREDS_user"], token, os.environ["HOSTNAME"], flush=True)
pathlib.Path("ready-flag").write_text("1")
import time
time.sleep(600)
"""


def test_init_containers_secrets_probes_and_jobs(
    k8s: K8s, namespace: str, pod_runner: PodRunner
) -> None:
    py = "python:3.11"
    k8s.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "creds"},
                "stringData": {"user": "alice", "token": "s3cret"},
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "features"},
                "spec": {
                    "initContainers": [
                        {
                            "name": "init",
                            "image": py,
                            "command": ["python", "-c", "open('/work/ready.txt', 'w').write('ok')"],
                            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                        }
                    ],
                    "containers": [
                        {
                            "name": "main",
                            "image": py,
                            "command": ["python", "-c", FEATURES],
                            "envFrom": [{"secretRef": {"name": "creds"}, "prefix": "CREDS_"}],
                            "volumeMounts": [
                                {"name": "work", "mountPath": "/work"},
                                {
                                    "name": "secret",
                                    "mountPath": "/etc/creds/token",
                                    "subPath": "token",
                                },
                            ],
                            "readinessProbe": {
                                "exec": {"command": ["test", "-f", "ready-flag"]},
                            },
                        }
                    ],
                    "volumes": [
                        {"name": "work", "emptyDir": {}},
                        {"name": "secret", "secret": {"secretName": "creds"}},
                    ],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "unhealthy"},
                "spec": {
                    "containers": [
                        {
                            "name": "sleeper",
                            "image": py,
                            "command": ["python", "-c", "import time; time.sleep(600)"],
                            "livenessProbe": {
                                "tcpSocket": {"port": 9},
                                "periodSeconds": 1,
                                "failureThreshold": 1,
                            },
                        }
                    ],
                    "terminationGracePeriodSeconds": 1,
                },
            },
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "once"},
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "cli", "image": "fedkube", "args": ["--help"]}],
                        }
                    },
                },
            },
        ],
        namespace,
    )

    def ready(name: str) -> dict[str, Any] | None:
        pod = _get(k8s, "pods", namespace, name)
        conds = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
        return pod if conds.get("Ready") == "True" else None

    pod = wait_for(lambda: ready("features"), 60, "the features Pod to be ready")
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert "MAIN ok alice s3cret features" in pod_runner.logs("features", "main")

    # a failing liveness probe restarts the container (SIGTERM: exit 143)
    def restarted() -> dict[str, Any] | None:
        pod = _get(k8s, "pods", namespace, "unhealthy")
        cs = (pod["status"].get("containerStatuses") or [{}])[0]
        return cs if cs.get("restartCount", 0) >= 1 else None

    cs = wait_for(restarted, 60, "the liveness probe to restart the container")
    assert cs["lastState"]["terminated"]["exitCode"] == 143

    # a Job (restartPolicy Never) completes through the real job controller; the
    # image named fedkube runs the venv's fedkube executable
    wait_for(
        lambda: _get(k8s, "jobs", namespace, "once")["status"].get("succeeded") == 1,
        60,
        "the Job to succeed",
    )
    (job_pod,) = _pods(k8s, namespace, "job-name=once")
    assert job_pod["status"]["phase"] == "Succeeded"
    assert "Usage: fedkube" in pod_runner.logs(job_pod["metadata"]["name"])


def test_stop_removes_hosts_block_and_node(k8s: K8s, namespace: str, tmp_path: Path) -> None:
    labels = {"app": "tiny"}
    k8s.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "tiny"},
                "spec": {"selector": labels, "ports": [{"port": 8000}]},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "tiny"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [
                                {
                                    "name": "tiny",
                                    "image": "python:3.11",
                                    "command": ["python", "-m", "http.server"],
                                    "args": ["--bind", "$(FEDKUBE_BIND_HOST)", "8000"],
                                    "readinessProbe": {"tcpSocket": {"port": 8000}},
                                }
                            ]
                        },
                    },
                },
            },
        ],
        namespace,
    )
    marker = f"# BEGIN fedkube-podrunner {namespace} "
    # a stale block of this namespace (a crashed run) is replaced at start
    with hosts_lock(HOSTS_FILE):
        stale = f"{marker}pid=999999\n10.0.0.1 stale\n# END fedkube-podrunner {namespace}\n"
        write_hosts(HOSTS_FILE, HOSTS_FILE.read_text() + stale)
    runner = PodRunner(k8s.kubeconfig, namespace, workdir=tmp_path / "pods")
    runner.start()
    try:
        assert "stale" not in HOSTS_FILE.read_text()
        wait_for(lambda: f"tiny.{namespace}.svc" in HOSTS_FILE.read_text(), 60, "the hosts entry")
        (pod,) = _pods(k8s, namespace, "app=tiny")
        pid = runner.pid(pod["metadata"]["name"])
        ip = pod["status"]["podIP"]
        assert pid is not None
        assert _http(f"http://tiny.{namespace}.svc:8000/").startswith(b"<!DOCTYPE")
        assert k8s.api.get(kube_path("nodes", None, runner.node_name)) is not None
    finally:
        runner.stop()
    assert marker not in HOSTS_FILE.read_text()
    assert not _alive(pid)
    assert k8s.api.get(kube_path("nodes", None, runner.node_name)) is None
    # the pod's address is gone from the loopback interface
    lo = subprocess.run(
        ["ip", "-o", "-4", "addr", "show", "dev", "lo"], capture_output=True, text=True, check=True
    ).stdout
    assert f"inet {ip}/" not in lo and f"inet {runner.host_ip}/" not in lo
