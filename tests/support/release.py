"""The fedkube Helm release on the real test cluster (tests/support/cluster.py):
the chart installed as the README's "Install on Kubernetes" says, with the
project's own images, and what the tests need to look at it from outside.

Fixtures (enabled where a conftest imports them, e.g. tests/cluster/conftest.py)::

    shell      function  Shell: runs README command lines as written (bash, kubectl,
                         helm and fedkube on PATH, KUBECONFIG and NODE_IP set)
    release    package   Release: helm install of charts/fedkube with the dev S3 and
                         MongoDB, the operator serving JOB_NAMESPACES; .state() and
                         .objects() open the shared state and object stores from the
                         test process (through forwarders into the cluster's network)

The install runs the README's "Install the chart" commands (`readme_block` reads
them from the README itself; `Shell` runs them as written), adding to its helm
install only `TEST_CLUSTER_VALUES`: the dev S3 and MongoDB images are local
builds (fedkube/devenv/images.py: SeaweedFS's and FerretDB's binaries) because
the upstream images cannot be pulled here. The fedkube images need no override:
the test cluster imported them under the names the chart defaults to.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedkube.devenv import images
from fedkube.state import StateStore, open_state_store
from fedkube.store.s3 import S3ObjectStore
from tests.support.cluster import TestCluster
from tests.support.k8s import K8s, kube_path, wait_for

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
RELEASE = "fedkube"
RELEASE_NAMESPACE = "fedkube-system"
#: the namespaces the operator serves (namespaced RBAC: a Role in each)
JOB_NAMESPACES = ("team-a", "team-b")
#: what the test cluster adds to the README's helm install: its local dev-storage images
TEST_CLUSTER_VALUES = (
    f"dev.s3.image.repository={images.S3_IMAGE.rsplit(':', 1)[0]}",
    f"dev.s3.image.tag={images.S3_IMAGE.rsplit(':', 1)[1]}",
    f"dev.mongodb.image.repository={images.MONGODB_IMAGE.rsplit(':', 1)[0]}",
    f"dev.mongodb.image.tag={images.MONGODB_IMAGE.rsplit(':', 1)[1]}",
)
INSTALL_TIMEOUT = 300.0
INSTALL_HEADING = "### Install the chart"


def readme_block(heading: str) -> list[str]:
    """The shell commands of the first ```bash block under the README heading
    `heading` (continuation lines joined, comments and blank lines dropped)."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    body = text[start:]
    m = re.search(r"```bash\n(.*?)```", body, re.S)
    assert m, f"no bash block under {heading!r} in README.md"
    joined = re.sub(r"\\\n\s*", " ", m.group(1))
    out = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


@dataclass
class Release:
    """The installed chart and the shared storage behind it."""

    __test__ = False

    cluster: TestCluster
    namespace: str
    s3_port: int
    mongo_port: int
    access_key: str
    secret_key: str
    bucket: str
    database: str
    #: the same storage as the pods reach it
    mongo_uri_in_cluster: str
    s3_endpoint_in_cluster: str

    @property
    def k8s(self) -> K8s:
        return self.cluster.k8s

    @property
    def mongo_uri(self) -> str:
        """The dev MongoDB as the test process reaches it."""
        return f"mongodb://127.0.0.1:{self.mongo_port}/{self.database}?directConnection=true"

    def state(self) -> StateStore:
        return open_state_store(self.mongo_uri)

    def objects(self) -> S3ObjectStore:
        return S3ObjectStore(
            f"127.0.0.1:{self.s3_port}",
            self.bucket,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            create_bucket=False,
        )

    def pods(
        self, component: str, namespace: str | None = None, instance: str | None = None
    ) -> list[dict[str, Any]]:
        """The pods of a component that are not being deleted: of this release (or of
        release `instance` beside it), or of the jobs in `namespace` (of job `instance`
        only, when given)."""
        selector = f"app.kubernetes.io/component={component}"
        if instance is None and namespace in (None, self.namespace):
            instance = RELEASE
        if instance is not None:
            selector += f",app.kubernetes.io/instance={instance}"
        pods = self.k8s.api.list(
            kube_path("pods", namespace or self.namespace), labelSelector=selector
        )
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def pod(self, component: str, namespace: str | None = None, instance: str | None = None) -> str:
        """The name of the (first) running pod of a component (as `pods` selects)."""
        live = self.pods(component, namespace, instance)
        assert live, f"no {component} pod"
        return str(live[0]["metadata"]["name"])

    def logs(
        self,
        component: str,
        namespace: str | None = None,
        tail: int = 80,
        instance: str | None = None,
    ) -> str:
        ns = namespace or self.namespace
        with contextlib.suppress(Exception):
            name = self.pod(component, ns, instance)
            return self.k8s.kubectl(
                "logs", name, f"--tail={tail}", namespace=ns, check=False
            ).stdout
        return f"(no {component} pod in {ns})"


def helm(
    cluster: TestCluster, *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """The built helm with the cluster's admin kubeconfig, run from the repository root
    (the README's paths are relative to it)."""
    argv = [str(cluster.env.paths.k8s_bin / "helm"), "--kubeconfig", str(cluster.kubeconfig)]
    proc = subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def secret_data(k: K8s, ns: str, name: str) -> dict[str, str]:
    """The decoded data of a Secret."""
    data = k.api.get(kube_path("secrets", ns, name)).get("data") or {}
    return {key: base64.b64decode(v).decode() for key, v in data.items()}


def install(cluster: TestCluster, workdir: Path) -> Release:
    """Run the README's "Install the chart" block (the helm install with the test
    cluster's TEST_CLUSTER_VALUES and --wait added); a release left by an earlier
    session on a kept cluster is reused. Returns once every Deployment is ready."""
    for image in (images.SERVER_IMAGE, images.CLIENT_IMAGE, images.S3_IMAGE, images.MONGODB_IMAGE):
        cluster.require_image(image)
    k = cluster.k8s
    sh = Shell(cluster, workdir)
    reuse = helm(cluster, "status", RELEASE, "-n", RELEASE_NAMESPACE, check=False).returncode == 0
    for line in readme_block(INSTALL_HEADING):
        if line.startswith("kubectl create namespace"):
            proc = sh.run(line, check=False)
            assert proc.returncode == 0 or "AlreadyExists" in proc.stderr, proc.stderr
        elif line.startswith("helm install"):
            if reuse:
                continue
            extra = " ".join(f"--set {v}" for v in TEST_CLUSTER_VALUES)
            cmd = f"{line} {extra} --wait --timeout {int(INSTALL_TIMEOUT)}s"
            proc = sh.run(cmd, check=False, timeout=INSTALL_TIMEOUT + 60)
            if proc.returncode != 0:
                pods = sh.run(f"kubectl -n {RELEASE_NAMESPACE} get pods -o wide", check=False)
                events = sh.run(f"kubectl -n {RELEASE_NAMESPACE} get events", check=False)
                raise AssertionError(
                    f"{cmd}\nexited {proc.returncode}:\n{proc.stderr}\n{pods.stdout}\n"
                    f"{events.stdout[-4000:]}"
                )
        else:
            sh.run(line)
    for ns in JOB_NAMESPACES:
        wait_for(
            lambda ns=ns: k.api.get(kube_path("serviceaccounts", ns, "default")),
            30,
            f"the default ServiceAccount in {ns}",
        )
    ns = RELEASE_NAMESPACE
    s3 = secret_data(k, ns, f"{RELEASE}-s3-credentials")
    mongo_uri = secret_data(k, ns, f"{RELEASE}-mongodb")["uri"]
    s3_svc = k.api.get(kube_path("services", ns, f"{RELEASE}-s3"))
    mongo_svc = k.api.get(kube_path("services", ns, f"{RELEASE}-mongodb"))
    return Release(
        cluster=cluster,
        namespace=ns,
        s3_port=cluster.forward(s3_svc["spec"]["clusterIP"], 8333),
        mongo_port=cluster.forward(mongo_svc["spec"]["clusterIP"], 27017),
        access_key=s3["AWS_ACCESS_KEY_ID"],
        secret_key=s3["AWS_SECRET_ACCESS_KEY"],
        bucket="fedkube",
        database=mongo_uri.rsplit("/", 1)[1].split("?", 1)[0] or "fedkube",
        mongo_uri_in_cluster=mongo_uri,
        s3_endpoint_in_cluster=f"{RELEASE}-s3.{ns}.svc:8333",
    )


@pytest.fixture
def shell(release: Release, tmp_path: Path) -> Iterator[Shell]:
    """A `Shell` for README commands in a fresh work directory; what it started in the
    background is stopped afterwards."""
    sh = Shell(release.cluster, tmp_path / "work")
    yield sh
    sh.stop()


@pytest.fixture(scope="package")
def release(cluster: TestCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """The chart, installed once on the package's cluster (see the module doc)."""
    yield install(cluster, tmp_path_factory.mktemp("install"))


class Shell:
    """Runs README command lines as a user would: ``bash -c LINE`` in a work directory
    that holds the repository's charts/ and examples/ (symlinks) and the files the
    commands write, with kubectl, helm and fedkube on PATH and KUBECONFIG and
    NODE_IP set. ``in_netns=True`` runs a line on the node's network (a machine
    outside the cluster that reaches the node's address), with the in-namespace
    kubeconfig."""

    def __init__(self, cluster: TestCluster, workdir: Path) -> None:
        self.cluster = cluster
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        for name in ("charts", "examples"):
            link = workdir / name
            if not link.exists():
                link.symlink_to(REPO / name)
        self.procs: list[subprocess.Popen[str]] = []
        #: more environment for the lines (values a README line takes from $VARS)
        self.extra_env: dict[str, str] = {}

    def env(self, in_netns: bool = False) -> dict[str, str]:
        path = os.pathsep.join(
            [
                str(self.cluster.env.paths.k8s_bin),
                str(Path(sys.executable).parent),
                os.environ["PATH"],
            ]
        )
        env = dict(
            os.environ,
            PATH=path,
            NODE_IP=self.cluster.node_ip,
            PYTHONSAFEPATH="1",
            **self.extra_env,
        )
        env["KUBECONFIG"] = str(
            self.cluster.env.kubeconfig_netns if in_netns else self.cluster.kubeconfig
        )
        return env

    def _argv(self, line: str, in_netns: bool) -> list[str]:
        argv = ["bash", "-c", line]
        return self.cluster.env.netns_argv(argv) if in_netns else argv

    def run(
        self, line: str, *, in_netns: bool = False, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self._argv(line, in_netns),
            cwd=self.dir,
            env=self.env(in_netns),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"`{line}` exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def start(
        self, line: str, *, in_netns: bool = False, log: str = "bg.log"
    ) -> subprocess.Popen[str]:
        """Start a long-running line (a trailing `&` is dropped) in its own process
        group, its output into DIR/`log`; stopped by stop()."""
        line = line.rstrip().removesuffix("&").rstrip()
        out = open(self.dir / log, "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            self._argv(line, in_netns),
            cwd=self.dir,
            env=self.env(in_netns),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        out.close()
        self.procs.append(proc)
        return proc

    def watch(
        self, line: str, done: Callable[[list[str]], bool], *, timeout: float = 300
    ) -> list[str]:
        """Run a watching line (`kubectl get -w`) until `done(lines so far)`; its lines."""
        proc = subprocess.Popen(
            self._argv(line, False),
            cwd=self.dir,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        lines: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if done(list(lines)):
                    return list(lines)
                if proc.poll() is not None and not reader.is_alive():
                    break
                time.sleep(0.2)
            shown = "\n".join(lines)
            raise AssertionError(f"`{line}` did not show what was awaited; it showed:\n{shown}")
        finally:
            _kill_group(proc)

    def stop(self) -> None:
        for proc in self.procs:
            _kill_group(proc)
        self.procs.clear()


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
