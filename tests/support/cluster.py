"""The real single-node Kubernetes cluster for tests (fedkube/devenv/cluster.py):
real containers from locally built images, pod networking, Services, cluster
DNS, all in a network namespace of its own.

Fixtures (enabled where a conftest imports them, e.g. tests/cluster/conftest.py)::

    cluster            package   TestCluster: .env (fedkube.devenv.cluster.Cluster),
                                 .k8s (tests.support.k8s.K8s: kubectl, apply, api),
                                 node_ip, forward(host, port), popen_in_netns(argv)
    cluster_namespace  function  a fresh namespace on it; deleted afterwards

The tests reuse a running cluster when ``FEDKUBE_CLUSTER_DIR`` names one
(``python scripts/cluster.py up --detach`` prints the export); otherwise it
builds the parts (cached: ``python scripts/cluster.py build`` once, minutes the
first time) and starts a cluster of its own (~40 s), stopped after the package's
last test. When a part is missing or the cluster cannot start, the tests are
skipped with the reason -- under ``CI=true`` they fail instead.

Pods use the imported images with ``imagePullPolicy: Never``; a test that needs
an image the build could not make (a missing Dockerfile) calls
``cluster.require_image(name)`` first.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from fedkube.devenv import cluster as devcluster
from fedkube.errors import ServiceUnavailable
from tests.support.fixtures import report as fixture_report
from tests.support.fixtures import scoped
from tests.support.fixtures import unavailable as fixture_unavailable
from tests.support.k8s import ApiError, K8s, KubeAPI, kube_path


def unavailable(message: str) -> NoReturn:
    """Skip (fail under CI=true): the test cluster lacks something (`message`)."""
    fixture_unavailable(ServiceUnavailable(message, devcluster.HINT), "the test cluster")


@dataclass
class TestCluster:
    """The package's cluster: the devenv object and a K8s client for it."""

    __test__ = False  # not a test class for pytest

    env: devcluster.Cluster
    k8s: K8s
    missing: dict[str, str]

    @property
    def node_ip(self) -> str:
        return self.env.node_ip

    @property
    def images(self) -> list[str]:
        return self.env.images

    @property
    def kubeconfig(self) -> Path:
        return self.env.kubeconfig

    def forward(self, host: str, port: int) -> int:
        """A 127.0.0.1 port (host namespace) that reaches host:port in the cluster."""
        return self.env.forward(host, port)

    def popen_in_netns(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return self.env.popen_in_netns(argv, **kwargs)

    def run_in_netns(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return self.env.run_in_netns(argv, **kwargs)

    def require_image(self, image: str) -> None:
        """Skip (fail under CI=true) unless `image` was imported into the node."""
        if image not in self.env.images:
            why = self.missing.get(image, "not imported")
            unavailable(f"image {image} is not available: {why}")

    def stop(self) -> None:
        self.k8s.api.close()
        self.env.stop(lambda m: None)


def _k8s_for(env: devcluster.Cluster) -> K8s:
    api = KubeAPI.from_kubeconfig(env.kubeconfig)
    return K8s(
        kubeconfig=env.kubeconfig,
        bin_dir=env.paths.k8s_bin,
        api=api,
        server=env.server,
        start_seconds=env.start_seconds,
    )


def open_cluster(log: Any = None) -> TestCluster:
    """Attach to FEDKUBE_CLUSTER_DIR's cluster, else build (cached) and start one
    (raises ServiceUnavailable)."""
    log = log or (lambda m: None)
    if d := os.environ.get("FEDKUBE_CLUSTER_DIR"):
        env = devcluster.attach(Path(d))
        return TestCluster(env=env, k8s=_k8s_for(env), missing={})
    paths = devcluster.build(log)
    env = devcluster.start(paths=paths, log=log)
    try:
        return TestCluster(env=env, k8s=_k8s_for(env), missing=dict(paths.missing))
    except BaseException:
        env.stop(log)
        raise


@pytest.fixture(scope="package")
def cluster(pytestconfig: pytest.Config) -> Iterator[TestCluster]:
    """The real cluster of the tests/cluster package (see the module doc): started once
    for the package and stopped after its last test, so the rest of the suite does
    not share the machine with it."""
    report = functools.partial(fixture_report, pytestconfig)

    try:
        c = open_cluster(report)
    except ServiceUnavailable as exc:
        fixture_unavailable(exc, "the test cluster")
    report(
        f"\ntest cluster: netns {c.env.netns_name}, node {c.node_ip}, "
        f"apiserver {c.env.server} ({c.env.start_seconds:.1f}s), images {len(c.images)}"
    )
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster_namespace(cluster: TestCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on the package's cluster; deleted afterwards (not waited for)."""
    k = cluster.k8s

    def delete(name: str) -> None:
        with contextlib.suppress(ApiError):
            k.api.delete(kube_path("namespaces", name=name), {"propagationPolicy": "Background"})

    yield from scoped(k.create_namespace(request.node.name), delete)
