"""The Helm chart on a real kubelet: `helm install` (the README's "Install the
chart") brings the operator, the dashboard and the dev S3 and MongoDB to Ready,
running from the images built from the project's Dockerfiles, hardened as the
chart says; and the operator's ServiceAccount can do what the operator does and
no more (real requests with its own token, not `can-i` guesses)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from fedkube.devenv import images, k8s
from tests.support.k8s import kube_path
from tests.support.release import JOB_NAMESPACES, RELEASE, Release

pytestmark = pytest.mark.slow

EXPECTED_IMAGES = {
    "operator": images.SERVER_IMAGE,
    "dashboard": images.SERVER_IMAGE,
    "s3": images.S3_IMAGE,
    "mongodb": images.MONGODB_IMAGE,
}


@pytest.mark.parametrize("component", sorted(EXPECTED_IMAGES))
def test_every_pod_of_the_release_is_ready_from_the_projects_images(
    release: Release, component: str
) -> None:
    pods = release.pods(component)
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    pod = pods[0]
    conds = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert pod["status"]["phase"] == "Running" and conds["Ready"] == "True", pod["status"]
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] and status["restartCount"] == 0, status
    # the image the kubelet ran is the one the test environment built and imported
    assert status["image"].removeprefix("docker.io/") == EXPECTED_IMAGES[component]
    assert status["imageID"].startswith("sha256:") or "@sha256:" in status["imageID"]
    (container,) = pod["spec"]["containers"]
    sc = {**pod["spec"].get("securityContext", {}), **container.get("securityContext", {})}
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"


def test_the_operator_runs_as_the_charts_service_account_and_serves_only_its_namespaces(
    release: Release,
) -> None:
    (pod,) = release.pods("operator")
    assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-operator"
    args = pod["spec"]["containers"][0]["args"]
    served = [args[i + 1] for i, a in enumerate(args) if a == "--namespace"]
    assert sorted(served) == sorted(JOB_NAMESPACES)
    assert "--all-namespaces" not in args
    log = release.logs("operator", tail=400)
    # namespaced mode starts serving at once: no minute of retried forbidden lists
    assert "cannot list resource" not in log, log


def _as(release: Release, token: str, path: str) -> int:
    """The HTTP status of GET `path` with `token` (the apiserver, through the forwarder)."""
    env = release.cluster.env
    return k8s.api_request(env.server + path, token, env.ssl_context())[0]


def _service_account_token(release: Release, name: str) -> str:
    """A short-lived token of the ServiceAccount (TokenRequest, as the kubelet mounts)."""
    out = release.k8s.kubectl(
        "create", "token", name, "--duration=10m", namespace=release.namespace
    )
    return out.stdout.strip()


def test_the_operators_service_account_can_do_its_work_and_no_more(release: Release) -> None:
    token = _service_account_token(release, f"{RELEASE}-operator")
    ns = JOB_NAMESPACES[0]
    allowed = {
        # its work: FederatedJobs in the namespaces it serves, children read back, the
        # default storage's two Secrets by name
        kube_path("fedkube.dev/v1alpha1/federatedjobs", ns): 200,
        kube_path("statefulsets", ns, "nothing-here"): 404,  # get allowed (the object is absent)
        kube_path("secrets", release.namespace, f"{RELEASE}-s3-credentials"): 200,
        kube_path("secrets", release.namespace, f"{RELEASE}-mongodb"): 200,
    }
    denied = {
        # Secrets of another namespace, or any other Secret of its own
        kube_path("secrets", "kube-system"): 403,
        kube_path("secrets", "kube-system", "anything"): 403,
        kube_path("secrets", "default", "anything"): 403,
        kube_path("secrets", release.namespace): 403,  # no list
        kube_path("secrets", ns): 403,  # no list, even where it serves
        # nodes, pods, namespaces, cluster-wide objects
        kube_path("nodes"): 403,
        kube_path("pods", ns): 403,
        kube_path("namespaces"): 403,
        kube_path("fedkube.dev/v1alpha1/federatedjobs", "kube-system"): 403,
        kube_path("customresourcedefinitions"): 403,
    }
    got = {path: _as(release, token, path) for path in {**allowed, **denied}}
    assert got == {**allowed, **denied}, json.dumps(got, indent=1)


def test_the_dashboards_service_account_only_reads_jobs_and_events(release: Release) -> None:
    token = _service_account_token(release, f"{RELEASE}-dashboard")
    ns = JOB_NAMESPACES[0]
    assert _as(release, token, kube_path("fedkube.dev/v1alpha1/federatedjobs", ns)) == 200
    assert _as(release, token, kube_path("events", ns)) == 200
    for path in (
        kube_path("secrets", ns),
        kube_path("secrets", release.namespace, f"{RELEASE}-mongodb"),
        kube_path("pods", ns),
        kube_path("nodes"),
    ):
        assert _as(release, token, path) == 403, path


def test_the_dashboard_serves_through_its_service(release: Release) -> None:
    """The chart's dashboard pod answers on its Service (what `kubectl port-forward
    service/fedkube-dashboard 8501` reaches): Streamlit's health check and its page."""
    svc = release.k8s.api.get(kube_path("services", release.namespace, f"{RELEASE}-dashboard"))
    port = release.cluster.forward(svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10) as r:
        assert r.status == 200 and r.read().strip() == b"ok"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        assert r.status == 200 and b"<title>" in r.read()
