"""The real single-node cluster itself (fedkube/devenv/cluster.py): a Ready node,
real containers from the locally built images, Services, cluster DNS, NodePorts
reachable from the node's network and through a forwarder, and a `down` that
leaves the host as it found it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from fedkube.devenv import cluster as devcluster
from fedkube.devenv import netns
from fedkube.errors import ServiceUnavailable
from tests.support.cluster import TestCluster, unavailable
from tests.support.k8s import kube_path, wait_for

CLIENT = devcluster.CLIENT_IMAGE
RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def _pod_phase(cluster: TestCluster, ns: str, name: str) -> str:
    pod = cluster.k8s.api.get(kube_path("pods", ns, name))
    return str(pod.get("status", {}).get("phase", ""))


def _finished(cluster: TestCluster, ns: str, name: str) -> str | None:
    phase = _pod_phase(cluster, ns, name)
    return phase if phase in ("Succeeded", "Failed") else None


def test_node_is_ready_with_its_address(cluster: TestCluster) -> None:
    node = cluster.k8s.api.get(kube_path("nodes", name=devcluster.NODE_NAME))
    conds = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conds["Ready"] == "True"
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == cluster.node_ip
    assert node["status"]["nodeInfo"]["kubeletVersion"] == devcluster.K8S_VERSION
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    dns = cluster.k8s.api.get(kube_path("services", "kube-system", "kube-dns"))
    assert dns["spec"]["clusterIP"] == devcluster.DNS_IP


def test_client_image_runs_fedkube_client_help(
    cluster: TestCluster, cluster_namespace: str
) -> None:
    cluster.require_image(CLIENT)
    ns = cluster_namespace
    cluster.k8s.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "client-help"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "client",
                        "image": CLIENT,
                        "imagePullPolicy": "Never",
                        "args": ["--help"],  # the image's entrypoint is `fedkube client`
                        "securityContext": RESTRICTED,
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }
                ],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        },
        ns,
    )
    phase = wait_for(lambda: _finished(cluster, ns, "client-help"), 120, "the pod to finish")
    logs = cluster.k8s.kubectl("logs", "client-help", namespace=ns).stdout
    assert phase == "Succeeded", logs
    assert "Usage" in logs and "fedkube client" in logs
    pod = cluster.k8s.api.get(kube_path("pods", ns, "client-help"))
    state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert state["exitCode"] == 0


def _web(cluster: TestCluster, ns: str, service_type: str = "ClusterIP") -> dict[str, Any]:
    """A Deployment of 2 tiny HTTP servers (each serves its own pod name at /name)
    and a Service for it; returns the Service once both replicas are ready."""
    cluster.require_image(CLIENT)
    labels = {"app": "web"}
    script = "hostname > /srv/name && exec python3 -m http.server 8080 --directory /srv"
    cluster.k8s.apply(
        [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [
                                {
                                    "name": "web",
                                    "image": CLIENT,
                                    "imagePullPolicy": "Never",
                                    "command": ["sh", "-c", script],
                                    "ports": [{"containerPort": 8080}],
                                    "readinessProbe": {
                                        "httpGet": {"path": "/name", "port": 8080},
                                        "periodSeconds": 1,
                                    },
                                    "securityContext": RESTRICTED,
                                    "volumeMounts": [{"name": "srv", "mountPath": "/srv"}],
                                }
                            ],
                            "volumes": [{"name": "srv", "emptyDir": {}}],
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web"},
                "spec": {
                    "type": service_type,
                    "selector": labels,
                    "ports": [{"port": 80, "targetPort": 8080}],
                },
            },
        ],
        ns,
    )

    def ready() -> bool:
        d = cluster.k8s.api.get(kube_path("deployments", ns, "web"))
        return d.get("status", {}).get("readyReplicas", 0) == 2

    wait_for(ready, 120, "2 ready web replicas")
    pods = cluster.k8s.api.list(kube_path("pods", ns), labelSelector="app=web")
    assert len({p["status"]["podIP"] for p in pods}) == 2
    svc: dict[str, Any] = cluster.k8s.api.get(kube_path("services", ns, "web"))
    return svc


def test_service_dns_name_resolves_and_answers_from_another_pod(
    cluster: TestCluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    svc = _web(cluster, ns)
    # (retried for a while: kube-proxy programs the Service a moment after its endpoints)
    probe = (
        "import socket, time, urllib.request\n"
        f"print('ip', socket.gethostbyname('web.{ns}.svc.cluster.local'))\n"
        "for attempt in range(60):\n"
        "    try:\n"
        "        body = urllib.request.urlopen('http://web/name', timeout=10).read().decode()\n"
        "        break\n"
        "    except OSError:\n"
        "        time.sleep(0.5)\n"
        "else:\n"
        "    raise SystemExit('the Service did not answer')\n"
        "print('name', body)\n"
    )
    cluster.k8s.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "probe"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "probe",
                        "image": CLIENT,
                        "imagePullPolicy": "Never",
                        "command": ["python3", "-c", probe],
                        "securityContext": RESTRICTED,
                    }
                ],
            },
        },
        ns,
    )
    phase = wait_for(lambda: _finished(cluster, ns, "probe"), 120, "the probe pod to finish")
    logs = cluster.k8s.kubectl("logs", "probe", namespace=ns).stdout
    assert phase == "Succeeded", logs
    assert f"ip {svc['spec']['clusterIP']}" in logs
    web_pods = {p["metadata"]["name"] for p in cluster.k8s.api.list(kube_path("pods", ns))}
    answered = logs.split("name ", 1)[1].strip()
    assert answered in web_pods and answered.startswith("web-")


def test_nodeport_answers_on_the_node_network_and_through_a_forward(
    cluster: TestCluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    svc = _web(cluster, ns, service_type="NodePort")
    node_port = svc["spec"]["ports"][0]["nodePort"]
    web_pods = {
        p["metadata"]["name"]
        for p in cluster.k8s.api.list(kube_path("pods", ns), labelSelector="app=web")
    }
    url = f"http://{cluster.node_ip}:{node_port}/name"
    fetch = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=10).read().decode())"

    # a process on the node's network (the lead runs an external `fedkube client` so);
    # kube-proxy programs the NodePort a moment after the endpoints are ready
    def from_node_network() -> str | None:
        proc = cluster.popen_in_netns(
            [sys.executable, "-c", fetch],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = proc.communicate(timeout=60)
        last["err"] = err
        return out.strip() if proc.returncode == 0 else None

    last: dict[str, str] = {}
    answered = wait_for(from_node_network, 30, "the NodePort to answer on the node's network")
    assert answered in web_pods, last
    # the same NodePort from this (host-namespace) process, through a forwarder
    port = cluster.forward(cluster.node_ip, node_port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/name", timeout=10) as r:
        assert r.read().decode().strip() in web_pods
    # and the Service's cluster IP, forwarded too
    cport = cluster.forward(svc["spec"]["clusterIP"], 80)
    with urllib.request.urlopen(f"http://127.0.0.1:{cport}/name", timeout=10) as r:
        assert r.read().decode().strip() in web_pods


def test_host_network_has_none_of_the_cluster(cluster: TestCluster) -> None:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f" {devcluster.BRIDGE}:" not in links
    addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert cluster.node_ip not in addrs
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "KUBE-" not in rules
    # ... while inside the namespace, kube-proxy's rules and the bridge exist
    inside = cluster.run_in_netns(["iptables-save"], capture_output=True, text=True).stdout
    assert "KUBE-SERVICES" in inside
    inside_links = cluster.run_in_netns(["ip", "-o", "link"], capture_output=True, text=True)
    assert f" {devcluster.BRIDGE}:" in inside_links.stdout


def test_down_restores_sysctls_and_leaves_no_mount_cgroup_or_netns(
    cluster: TestCluster, tmp_path: Path
) -> None:
    """A second, throwaway cluster (only the pause and CoreDNS images: cheap) in a
    directory of the test's, brought down with stop_dir as `down` does."""
    attached = "FEDKUBE_CLUSTER_DIR" in os.environ
    paths = devcluster.cached_paths() if attached else cluster.env.paths
    images = {
        k: v
        for k, v in cluster.env.paths.images.items()
        if k in (devcluster.PAUSE_IMAGE, devcluster.COREDNS_IMAGE)
    }
    if len(images) < 2:
        unavailable("the pause and CoreDNS image archives are not known to this session")
    paths = devcluster.Paths(k8s_bin=paths.k8s_bin, node_bin=paths.node_bin, images=images)
    d = tmp_path / "c2"
    try:
        second = devcluster.start(d, paths=paths, log=lambda m: None)
    except ServiceUnavailable as exc:
        devcluster.stop_dir(d, log=lambda m: None)
        raise AssertionError(f"the second cluster did not start: {exc}") from exc
    state = json.loads((d / devcluster.ENV_FILE).read_text())
    saved = json.loads((d / devcluster.SYSCTL_FILE).read_text())
    assert "kernel.panic" in saved and "vm.overcommit_memory" in saved
    panic = Path("/proc/sys/kernel/panic")
    try:
        assert netns.exists(state["netns"])
        assert devcluster.mounts_under(d), "a running cluster has mounts (pod volumes, netns)"
        # a change made while the cluster runs is undone by down
        panic.write_text(f"{int(saved['kernel.panic']) + 7}\n")
        pids = dict(state["pids"])
        second.owned = False  # stop it the way `down` does: from the directory only
        second.close_forwarders()
        stopped = devcluster.stop_dir(d, log=lambda m: None)
    finally:
        devcluster.stop_dir(d, log=lambda m: None)
        second.procs.clear()
    assert {"kubelet", "containerd", "kube-apiserver", "etcd"} <= set(stopped)
    assert panic.read_text().strip() == saved["kernel.panic"]
    for name, value in saved.items():
        assert Path("/proc/sys", *name.split(".")).read_text().strip() == value, name
    assert devcluster.mounts_under(d) == []
    assert not netns.exists(state["netns"])
    cg = state["cgroup_root"].strip("/")
    assert not any((mnt / cg).exists() for mnt, _ in devcluster._cgroup_mounts())
    assert not any(devcluster.pid_is(pid, name) for name, pid in pids.items())
    assert devcluster._shims(state["containerd_sock"]) == []
    # idempotent
    assert devcluster.stop_dir(d, log=lambda m: None) == []
