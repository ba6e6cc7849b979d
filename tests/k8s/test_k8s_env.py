"""The Kubernetes test environment itself: a real kube-apiserver (with etcd) and a
real kube-controller-manager, started once per session (tests/support/k8s.py)."""

from __future__ import annotations

import json
import secrets

from tests.support.k8s import K8s, kube_path, wait_for


def test_apiserver_answers_kubectl_version(k8s: K8s) -> None:
    out = json.loads(k8s.kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == "v1.34.4"
    assert out["clientVersion"]["gitVersion"] == "v1.34.4"
    assert k8s.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_namespaces_can_be_created_and_deleted(k8s: K8s) -> None:
    name = f"env-ns-{secrets.token_hex(3)}"
    k8s.kubectl("create", "namespace", name)
    try:
        ns = k8s.kubectl_json("get", "namespace", name)
        assert ns["status"]["phase"] == "Active"
        # the serviceaccount controller gives every namespace its `default` account
        wait_for(lambda: k8s.api.get(kube_path("serviceaccounts", name, "default")), 30)
    finally:
        k8s.kubectl("delete", "namespace", name, "--wait=false")
    phase = k8s.kubectl_json("get", "namespace", name)["status"]["phase"]
    assert phase == "Terminating" or not phase


def test_deployment_gets_replicaset_and_pending_pods(k8s: K8s, namespace: str) -> None:
    labels = {"app": "web"}
    k8s.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "example/web:1"}]},
                },
            },
        },
        namespace,
    )
    deploy = k8s.api.get(kube_path("deployments", namespace, "web"))

    def replicaset() -> dict | None:
        for rs in k8s.api.list(kube_path("replicasets", namespace)):
            owners = rs["metadata"].get("ownerReferences") or []
            if any(o["uid"] == deploy["metadata"]["uid"] for o in owners):
                return rs
        return None

    rs = wait_for(replicaset, 30, "a ReplicaSet owned by the Deployment")
    assert rs["spec"]["replicas"] == 2

    def pods() -> list[dict]:
        found = [
            p
            for p in k8s.api.list(kube_path("pods", namespace))
            if any(o["uid"] == rs["metadata"]["uid"] for o in p["metadata"]["ownerReferences"])
        ]
        return found if len(found) == 2 else []

    created = wait_for(pods, 30, "two Pods owned by the ReplicaSet")
    for pod in created:
        # no scheduler, no node: they stay Pending and unbound
        assert pod["status"]["phase"] == "Pending"
        assert not pod["spec"].get("nodeName")
    status = wait_for(
        lambda: (
            (d := k8s.api.get(kube_path("deployments", namespace, "web")))["status"].get("replicas")
            == 2
            and d["status"]
        ),
        30,
        "the Deployment's status from the controller",
    )
    assert not status.get("readyReplicas")


def test_garbage_collector_deletes_dependents(k8s: K8s, namespace: str) -> None:
    owner = k8s.api.create(
        kube_path("configmaps", namespace),
        {"metadata": {"name": "owner"}, "data": {"k": "v"}},
    )
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    k8s.api.create(
        kube_path("secrets", namespace),
        {"metadata": {"name": "dependent", "ownerReferences": [ref]}, "stringData": {"a": "b"}},
    )
    assert k8s.api.get(kube_path("secrets", namespace, "dependent")) is not None
    k8s.kubectl("delete", "configmap", "owner", namespace=namespace)
    wait_for(
        lambda: k8s.api.get(kube_path("secrets", namespace, "dependent")) is None,
        60,
        "the garbage collector to delete the owned Secret",
    )


def test_custom_resource_definition_is_served(k8s: K8s, namespace: str) -> None:
    group = f"t{secrets.token_hex(4)}.example.com"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    k8s.apply(crd)
    try:
        k8s.kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=60s")
        widget = {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": "w1"},
            "spec": {"size": 3},
        }
        wait_for(lambda: k8s.apply(widget, namespace), 30, "the Widget to be accepted")
        got = k8s.kubectl_json("get", f"widgets.{group}", "w1", namespace=namespace)
        assert got["spec"] == {"size": 3}
        bad = k8s.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({**widget, "spec": {"size": 0}}),
            namespace=namespace,
            check=False,
        )
        assert bad.returncode != 0
        assert "spec.size" in bad.stderr
    finally:
        k8s.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def test_rbac_is_enforced(k8s: K8s, namespace: str) -> None:
    """The second identity has no rights until a RoleBinding grants them."""
    user = "fedkube-tester"

    def can(verb: str, resource: str) -> str:
        out = k8s.kubectl(
            "auth", "can-i", verb, resource, "--as", user, namespace=namespace, check=False
        )
        return out.stdout.strip()

    assert can("list", "pods") == "no"
    k8s.kubectl(
        "create",
        "rolebinding",
        "tester-view",
        "--clusterrole=view",
        f"--user={user}",
        namespace=namespace,
    )
    wait_for(lambda: can("list", "pods") == "yes", 30, "the RoleBinding to take effect")
    assert can("delete", "pods") == "no"
    if k8s.started_here:
        # the tester's own token (context fedkube-tester of the kubeconfig)
        out = k8s.kubectl("--context", "fedkube-tester", "get", "pods", namespace=namespace)
        assert out.returncode == 0
        denied = k8s.kubectl(
            "--context", "fedkube-tester", "get", "secrets", namespace=namespace, check=False
        )
        assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
