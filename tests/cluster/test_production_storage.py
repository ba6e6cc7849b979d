"""The README's "Production storage": a second release of the chart whose storage is
external to it, by Secret reference (here the first release's S3 and MongoDB, as
the pods reach them), serving its own namespace; a job there succeeds on it, its
pods got the credentials from the Secrets, not from the job, and
ttlSecondsAfterFinished deletes it (and so its pods) once it finished."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fedjobs import (
    committed,
    diagnostics,
    fedjob,
    linear_job,
    wait_finished,
    wait_job_key,
    without_jobs,
)
from tests.support.k8s import kube_path, wait_for
from tests.support.release import RELEASE_NAMESPACE, Release, Shell, helm, readme_block

pytestmark = pytest.mark.slow

HEADING = "### Production storage"
PROD = "fedkube-prod"
NS = "team-c"


@pytest.fixture
def prod(release: Release, shell: Shell) -> Iterator[Shell]:
    shell.extra_env.update(
        S3_ENDPOINT=release.s3_endpoint_in_cluster,
        S3_ACCESS_KEY=release.access_key,
        S3_SECRET_KEY=release.secret_key,
        MONGODB_URI=release.mongo_uri_in_cluster,
    )
    for _ in without_jobs(release, NS):
        yield shell
    helm(release.cluster, "uninstall", PROD, "-n", RELEASE_NAMESPACE, check=False)
    for secret in ("s3-credentials", "mongodb"):
        release.k8s.kubectl(
            "delete", "secret", secret, "--ignore-not-found", namespace=RELEASE_NAMESPACE
        )


def test_readme_production_storage(release: Release, prod: Shell) -> None:
    k = release.k8s
    for line in readme_block(HEADING):
        proc = prod.run(line, check=False, timeout=300)
        assert proc.returncode == 0 or "AlreadyExists" in proc.stderr, (line, proc.stderr)

    def operator_ready() -> bool:
        d = k.api.get(kube_path("deployments", RELEASE_NAMESPACE, f"{PROD}-operator"))
        return d.get("status", {}).get("readyReplicas", 0) == 1

    wait_for(operator_ready, 180, f"{PROD}-operator to be ready")
    # no dev storage and no dashboard in this release
    names = {d["metadata"]["name"] for d in k.api.list(kube_path("deployments", RELEASE_NAMESPACE))}
    assert f"{PROD}-s3" not in names and f"{PROD}-dashboard" not in names, names

    # a TTL of 0: the final phase is still published (for one status sync) before the
    # job goes, or this wait could never see it
    k.apply(linear_job(rounds=2, ttlSecondsAfterFinished=0), NS)
    key = wait_job_key(release, NS, "linear")
    st = wait_finished(release, NS, "linear", operator=PROD)
    assert st["phase"] == "Succeeded", f"{st}{diagnostics(release, NS, PROD)}"
    # the job named no storage: the pods got the release's, copied into linear-storage
    storage = k.api.get(kube_path("secrets", NS, "linear-storage"))
    assert set(storage["data"]) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    state = release.state()
    try:
        assert sorted(committed(state, key)) == [1, 2]
    finally:
        state.close()
    assert len(release.objects().list(f"jobs/{key}/models/")) == 3
    # ttlSecondsAfterFinished: the finished job goes, and its pods with it (its models stay)
    wait_for(lambda: fedjob(release, NS, "linear") is None, 90, "the TTL to delete the job")
    wait_for(
        lambda: not k.api.list(kube_path("pods", NS), labelSelector="fedkube.dev/job=linear"),
        90,
        "its pods to be collected",
    )
    assert len(release.objects().list(f"jobs/{key}/models/")) == 3
