"""A real Kubernetes control plane for tests (etcd + kube-apiserver +
kube-controller-manager on loopback; see fedkube/devenv/k8s.py) and a small
synchronous REST client for it.

Fixtures (enabled where a conftest imports them, e.g. tests/k8s/conftest.py)::

    k8s          session   K8s: kubeconfig, kubectl(...), api (KubeAPI)
    namespace    function  a fresh namespace (its `default` ServiceAccount
                           exists); deleted afterwards (without waiting)

This control plane runs no pods (no kubelet): tests that need pods use the real
single-node cluster of tests/support/cluster.py (tests/cluster/).

The control plane starts once per session, in about 3-5 seconds (binaries from
``bash scripts/build_k8s.sh``, cached). With ``FEDKUBE_TEST_KUBECONFIG`` set
to a reachable cluster's kubeconfig (``python scripts/k8s_env.py up`` prints
it) the session uses that cluster instead. When the environment cannot start,
the tests that need it are skipped with how to build it -- except under
``CI=true``, where they fail with the reason and the processes' log tails.

Helpers: ``wait_for(check, timeout, what)`` polls until `check()` is truthy
(no timed assertions), ``kube_path("deployments", ns, name)`` builds API
paths, ``KubeAPI`` (``k8s.api``) does get/list/create/patch/delete.

Example::

    def test_something(k8s, namespace):
        k8s.apply(statefulset_manifest, namespace)      # kubectl apply -f -
        wait_for(lambda: k8s.api.get(kube_path("statefulsets", namespace, "web"))
                 ["spec"]["replicas"] == 2, 60, "2 replicas")
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import json
import os
import re
import secrets
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import pytest
import yaml

from fedkube.devenv import k8s as control_plane
from fedkube.devenv.k8s import K8sEnv
from fedkube.errors import ServiceUnavailable
from tests.support.fixtures import report as fixture_report
from tests.support.fixtures import scoped
from tests.support.fixtures import unavailable as fixture_unavailable

HINT = (
    "the Kubernetes tests need etcd, kube-apiserver, kube-controller-manager and kubectl: "
    "build them with `bash scripts/build_k8s.sh` (needs Go; cached in ~/.cache/fedkube), "
    "or point FEDKUBE_TEST_KUBECONFIG at a running environment (`python scripts/k8s_env.py up`)"
)

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None], timeout: float = 30.0, what: str = "", interval: float = 0.1
) -> T:
    """Call `check` until it returns something truthy (returned); exceptions count as
    "not yet". AssertionError after `timeout` with the last value or error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what or check!r} (last: {last!r})"
            )
        time.sleep(interval)


# ---- a tiny synchronous Kubernetes REST client


class ApiError(RuntimeError):
    """A non-2xx answer from the apiserver."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        msg = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: {status} {msg}")
        self.status = status
        self.body = body

    @property
    def reason(self) -> str:
        return str(self.body.get("reason", "")) if isinstance(self.body, dict) else ""


PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}


class KubeAPI:
    """JSON over HTTPS with keep-alive (one connection per thread): enough for
    tests without a client library. Paths are API paths
    (``/api/v1/namespaces/NS/pods``)."""

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
    ) -> None:
        parts = urlsplit(server)
        self.server = server.rstrip("/")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.https = parts.scheme == "https"
        self.token = token
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.timeout = timeout
        self._local = threading.local()

    @classmethod
    def from_kubeconfig(cls, path: str | Path, context: str | None = None) -> KubeAPI:
        """Token, tokenFile or client-certificate users; CA from file or data."""
        cfg = yaml.safe_load(Path(path).read_text())
        ctx_name = context or cfg.get("current-context")
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg.get("users", []) if u["name"] == ctx.get("user"))
        base = Path(path).resolve().parent
        ctx_ssl = ssl.create_default_context()
        if cluster.get("insecure-skip-tls-verify"):
            ctx_ssl.check_hostname = False
            ctx_ssl.verify_mode = ssl.CERT_NONE
        elif "certificate-authority-data" in cluster:
            ctx_ssl.load_verify_locations(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
            )
        elif "certificate-authority" in cluster:
            ctx_ssl.load_verify_locations(cafile=str(base / cluster["certificate-authority"]))
        if "client-certificate-data" in user or "client-certificate" in user:
            with tempfile.TemporaryDirectory() as tmp:
                cert, key = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
                for dst, name in ((cert, "client-certificate"), (key, "client-key")):
                    if f"{name}-data" in user:
                        dst.write_bytes(base64.b64decode(user[f"{name}-data"]))
                    else:
                        dst.write_bytes((base / user[name]).read_bytes())
                ctx_ssl.load_cert_chain(str(cert), str(key))
        token = user.get("token")
        if token is None and user.get("tokenFile"):
            token = (base / user["tokenFile"]).read_text().strip()
        return cls(cluster["server"], token=token, ssl_context=ctx_ssl)

    def _conn(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            if self.https:
                conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self.ssl_context
                )
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One request; the decoded JSON answer (text if not JSON). ApiError on >= 300."""
        if query:
            path = f"{path}?{urlencode({k: v for k, v in query.items() if v is not None})}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Accept": "application/json", "User-Agent": "fedkube-tests"}
        if data is not None:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(2):
            conn = self._conn(fresh=attempt > 0)
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (
                http.client.RemoteDisconnected,
                ConnectionError,
                http.client.BadStatusLine,
                ssl.SSLEOFError,
            ):
                # a keep-alive connection the server closed (on TLS, possibly mid-
                # handshake: SSLEOFError); retry once on a new one
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
            except BaseException:
                conn.close()
                self._local.conn = None
                raise
        try:
            decoded: Any = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode(errors="replace")
        if resp.status >= 300:
            raise ApiError(method, path, resp.status, decoded)
        return decoded

    # -- conveniences
    def get(self, path: str, **query: Any) -> Any:
        """GET; None when 404."""
        try:
            return self.request("GET", path, query=query or None)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, path: str, **query: Any) -> list[dict[str, Any]]:
        items = self.request("GET", path, query=query or None).get("items") or []
        return list(items)

    def create(self, path: str, obj: dict[str, Any]) -> Any:
        return self.request("POST", path, obj)

    def patch(self, path: str, body: Any, patch_type: str = "merge", **query: Any) -> Any:
        return self.request(
            "PATCH", path, body, query=query or None, content_type=PATCH_TYPES[patch_type]
        )

    def delete(self, path: str, body: dict[str, Any] | None = None, **query: Any) -> bool:
        """DELETE; False when it was already gone."""
        try:
            self.request("DELETE", path, body, query=query or None)
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise


def kube_path(
    kind: str, namespace: str | None = None, name: str | None = None, sub: str | None = None
) -> str:
    """API path of a core/apps/... resource by plural kind, e.g. ``kube_path("pods", ns, n)``.
    `kind` may be ``group/version/plural`` (``apps/v1/deployments``)."""
    core = {
        "pods",
        "services",
        "configmaps",
        "secrets",
        "namespaces",
        "nodes",
        "events",
        "serviceaccounts",
        "endpoints",
        "persistentvolumeclaims",
    }
    groups = {
        "deployments": "apps/v1",
        "replicasets": "apps/v1",
        "statefulsets": "apps/v1",
        "daemonsets": "apps/v1",
        "endpointslices": "discovery.k8s.io/v1",
        "leases": "coordination.k8s.io/v1",
        "jobs": "batch/v1",
        "customresourcedefinitions": "apiextensions.k8s.io/v1",
    }
    if "/" in kind:
        group_version, plural = kind.rsplit("/", 1)
        prefix = f"/apis/{group_version}"
    elif kind in core:
        prefix, plural = "/api/v1", kind
    else:
        prefix, plural = f"/apis/{groups[kind]}", kind
    path = prefix
    if namespace is not None:
        path += f"/namespaces/{quote(namespace)}"
    path += f"/{plural}"
    if name is not None:
        path += f"/{quote(name)}"
    if sub is not None:
        path += f"/{sub}"
    return path


# ---- the session's cluster


@dataclass
class K8s:
    """A cluster for tests: the kubeconfig, kubectl and a REST client (admin)."""

    kubeconfig: Path
    bin_dir: Path
    api: KubeAPI
    server: str
    env: K8sEnv | None = None  #: the control plane, when this session started it
    start_seconds: float = 0.0
    namespaces: list[str] = field(default_factory=list)

    @property
    def started_here(self) -> bool:
        return self.env is not None

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        namespace: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl with this cluster's kubeconfig. With `check`, a
        non-zero exit raises AssertionError with the command and its output."""
        argv = [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig)]
        if namespace:
            argv += ["--namespace", namespace]
        argv += list(args)
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited with {proc.returncode}:\n"
                f"{proc.stdout}{proc.stderr}"
            )
        return proc

    def kubectl_json(self, *args: str, namespace: str | None = None) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json", namespace=namespace).stdout)

    def apply(
        self, manifest: dict[str, Any] | list[dict[str, Any]] | str, namespace: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl apply -f -` of a dict, a list of dicts, or YAML text."""
        if isinstance(manifest, dict):
            text = json.dumps(manifest)
        elif isinstance(manifest, list):
            text = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifest})
        else:
            text = manifest
        return self.kubectl("apply", "-f", "-", input=text, namespace=namespace)

    def create_namespace(self, hint: str = "t") -> str:
        """A new namespace named after `hint`, with its `default` ServiceAccount."""
        stem = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:40].strip("-") or "t"
        name = f"{stem}-{secrets.token_hex(3)}"
        self.api.create(kube_path("namespaces"), {"metadata": {"name": name}})
        self.namespaces.append(name)
        wait_for(
            lambda: self.api.get(kube_path("serviceaccounts", name, "default")),
            30,
            f"the default ServiceAccount in {name}",
        )
        return name

    def delete_namespace(self, name: str) -> None:
        with contextlib.suppress(ApiError):
            self.api.delete(kube_path("namespaces", name), {"propagationPolicy": "Background"})
        with contextlib.suppress(ValueError):
            self.namespaces.remove(name)

    def log_tails(self) -> str:
        return self.env.log_tails() if self.env is not None else "(external cluster)"

    def stop(self) -> None:
        self.api.close()
        if self.env is not None:
            self.env.stop()


def _unavailable(message: str) -> NoReturn:
    fixture_unavailable(ServiceUnavailable(message, HINT), "Kubernetes test environment")


def connect_existing(kubeconfig: Path) -> K8s | None:
    """A K8s for a running cluster (FEDKUBE_TEST_KUBECONFIG), or None when unreachable."""
    try:
        api = KubeAPI.from_kubeconfig(kubeconfig)
        api.request("GET", "/readyz")
    except Exception:
        return None
    state = control_plane.load_state(kubeconfig.parent) or {}
    bins = Path(state["bin_dir"]) if state.get("bin_dir") else control_plane.bin_dir()
    return K8s(kubeconfig=kubeconfig, bin_dir=bins, api=api, server=api.server)


def start_cluster(log: Callable[[str], None] | None = None) -> K8s:
    """Start a control plane of this session's own (raises ServiceUnavailable)."""
    env = control_plane.start(log=log or (lambda m: None))
    api = KubeAPI.from_kubeconfig(env.kubeconfig)
    return K8s(
        kubeconfig=env.kubeconfig,
        bin_dir=env.bin_dir,
        api=api,
        server=env.server,
        env=env,
        start_seconds=env.start_seconds,
    )


@pytest.fixture(scope="session")
def k8s(pytestconfig: pytest.Config) -> Iterator[K8s]:
    """The session's cluster: FEDKUBE_TEST_KUBECONFIG if set and reachable, else one
    started here (stopped at the end of the session)."""
    report = functools.partial(fixture_report, pytestconfig)

    cluster: K8s | None = None
    if env_kc := os.environ.get("FEDKUBE_TEST_KUBECONFIG"):
        cluster = connect_existing(Path(env_kc))
        if cluster is None:
            report(f"\nFEDKUBE_TEST_KUBECONFIG={env_kc} is not reachable; starting a cluster")
    if cluster is None:
        try:
            cluster = start_cluster(log=report)
        except ServiceUnavailable as exc:
            _unavailable(str(exc))
        report(
            f"\nKubernetes control plane on {cluster.server} ({cluster.start_seconds:.1f}s, "
            f"kubeconfig {cluster.kubeconfig})"
        )
    try:
        yield cluster
    finally:
        cluster.stop()


#: the generated CRD and the example job the Kubernetes tests apply
REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "charts" / "fedkube" / "crds" / "federatedjobs.fedkube.dev.yaml"
EXAMPLE_JOB = REPO / "examples" / "mnist" / "federatedjob.yaml"


def example_job(name: str = "mnist", **spec: Any) -> dict[str, Any]:
    """The example FederatedJob named `name`, with `spec` fields replaced."""
    m: dict[str, Any] = yaml.safe_load(EXAMPLE_JOB.read_text())
    m["metadata"] = {"name": name}
    m["spec"].update(spec)
    return m


@pytest.fixture(scope="session")
def crd(k8s: K8s) -> None:
    """The FederatedJob CRD applied to the session's cluster and served."""
    k8s.kubectl("apply", "-f", str(CRD_FILE))
    wait_for(
        lambda: k8s.kubectl("get", "fedjobs", "-A", check=False).returncode == 0,
        30,
        "the FederatedJob CRD to be served",
    )


@pytest.fixture
def namespace(k8s: K8s, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted afterwards (not waited for)."""
    yield from scoped(k8s.create_namespace(request.node.name), k8s.delete_namespace)
