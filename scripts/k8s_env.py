#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback for tests: etcd, kube-apiserver,
kube-controller-manager (no scheduler, no kubelet, no container runtime).

    python scripts/k8s_env.py up [--dir DIR]   # foreground; Ctrl-C stops it
    python scripts/k8s_env.py down --dir DIR   # stop one started with `up --dir DIR`

`up` builds the binaries first when missing (scripts/build_k8s.sh, cached in
~/.cache/fedkube/k8s/<version>/bin; the first build takes minutes), then
prints the kubeconfig path and the exports that make the test suite reuse this
environment instead of starting its own:

    export KUBECONFIG=DIR/kubeconfig
    export FEDKUBE_TEST_KUBECONFIG=DIR/kubeconfig

What it sets up in DIR (a fresh temporary directory without --dir):

- ``pki/``: a CA and a serving certificate for 127.0.0.1 / localhost /
  kubernetes.default.svc (EC P-256, made with the ``openssl`` CLI), and an RSA
  key that signs service-account tokens;
- ``tokens.csv``: static bearer tokens for two users: ``fedkube-admin`` (group
  ``system:masters``) and ``fedkube-tester`` (no groups: a low-privilege
  identity for RBAC tests, context ``fedkube-tester`` in the kubeconfig);
- etcd (free loopback client and peer ports, ``etcd-data/``), kube-apiserver
  (RBAC + Node authorization, default admission plugins, privileged pods
  allowed, service range 10.96.0.0/16 for allocation only), then
  kube-controller-manager with every default controller (garbage collector,
  deployment, replicaset, statefulset, endpointslice, serviceaccount,
  namespace, node lifecycle, pod GC, job, ...);
- ``kubeconfig`` (contexts ``fedkube-admin``, the default, and
  ``fedkube-tester``), ``env.json`` (ports, pids, paths) and ``logs/``.

Used as a library by tests/support/k8s.py (stdlib only, so it runs with any
Python 3.11): ``start(dir)`` returns a running ``K8sEnv``; ``K8sEnv.stop()``
stops it (SIGTERM, then SIGKILL) and removes a temporary directory.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "scripts" / "build_k8s.sh"
K8S_VERSION = os.environ.get("K8S_VERSION", "v1.34.4")
BUILD_HINT = "build the Kubernetes test binaries with `bash scripts/build_k8s.sh` (needs Go)"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_ISSUER = "https://kubernetes.default.svc"
ADMIN_USER = "fedkube-admin"
TESTER_USER = "fedkube-tester"
STOP_GRACE = 5.0
START_TIMEOUT = 90.0
ENV_FILE = "env.json"


class EnvError(RuntimeError):
    """The environment could not be built or started; the message has log tails."""

    def __init__(self, message: str, hint: str = BUILD_HINT) -> None:
        super().__init__(message)
        self.hint = hint


_prctl: Any
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the server when the thread that started it ends (a killed
    test run leaves no control plane behind). Start the environment from a thread
    that lives as long as it should (the main thread)."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _log_default(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- binaries


def bin_dir(*, build: bool = True, log: Callable[[str], None] = _log_default) -> Path:
    """The directory with etcd, kube-apiserver, kube-controller-manager, kubectl.

    Runs scripts/build_k8s.sh (about a second when cached; minutes the first
    time) unless ``build`` is false, in which case only the cache is looked at.
    """
    cache = Path(os.environ.get("FEDKUBE_CACHE") or Path.home() / ".cache" / "fedkube")
    cached = cache / "k8s" / K8S_VERSION / "bin"
    needed = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
    if not build:
        if all(os.access(cached / b, os.X_OK) for b in needed):
            return cached
        raise EnvError(f"Kubernetes test binaries not found in {cached}")
    if shutil.which("go") is None and not all(os.access(cached / b, os.X_OK) for b in needed):
        raise EnvError(f"Go is not installed and {cached} lacks the Kubernetes binaries")
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise EnvError(f"scripts/build_k8s.sh failed (exit {proc.returncode}):\n{tail}")
    for line in proc.stdout.splitlines():
        if line.startswith("==>"):
            log(line)
    out = Path(proc.stdout.strip().splitlines()[-1])
    missing = [b for b in needed if not os.access(out / b, os.X_OK)]
    if missing:
        raise EnvError(f"scripts/build_k8s.sh did not produce {missing} in {out}")
    return out


# ---- small helpers


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports that were free a moment ago."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_OPENSSL_CONF = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = fedkube-test-ca

[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash

[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = @alt
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[alt]
DNS.1 = localhost
DNS.2 = kubernetes
DNS.3 = kubernetes.default
DNS.4 = kubernetes.default.svc
DNS.5 = kubernetes.default.svc.cluster.local
IP.1 = 127.0.0.1
IP.2 = 10.96.0.1
"""


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EnvError(f"openssl {args[0]} failed: {proc.stderr.strip()}", "install openssl")


def make_pki(pki: Path) -> None:
    """ca.pem/ca.key, server.pem/server.key (127.0.0.1, localhost, kubernetes.default.svc)
    and sa.key/sa.pub (the service-account token signing key pair)."""
    if shutil.which("openssl") is None:
        raise EnvError("the `openssl` command is missing", "install openssl")
    pki.mkdir(parents=True, exist_ok=True)
    (pki / "openssl.cnf").write_text(_OPENSSL_CONF)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "30",
        "-config",
        "openssl.cnf",
        "-extensions",
        "ca",
        "-subj",
        "/CN=fedkube-test-ca",
        cwd=pki,
    )
    _openssl(
        "req",
        "-new",
        *ec,
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-config",
        "openssl.cnf",
        "-subj",
        "/CN=kube-apiserver",
        cwd=pki,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "30",
        "-extfile",
        "openssl.cnf",
        "-extensions",
        "server",
        cwd=pki,
    )
    _openssl(
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "sa.key",
        cwd=pki,
    )
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for p in pki.glob("*.key"):
        p.chmod(0o600)


def write_kubeconfig(path: Path, server: str, ca_pem: bytes, tokens: dict[str, str]) -> None:
    """A kubeconfig (JSON, which is YAML too) with one context per token user; the
    first user's context is current."""
    users = list(tokens)
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "fedkube-test",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": u, "user": {"token": t}} for u, t in tokens.items()],
        "contexts": [
            {"name": u, "context": {"cluster": "fedkube-test", "user": u, "namespace": "default"}}
            for u in users
        ],
        "current-context": users[0],
        "preferences": {},
    }
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    path.chmod(0o600)


# ---- processes


@dataclass
class Proc:
    """One control-plane process with its log file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self, cwd: Path) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (open while the process runs)
        self._log.write(f"==> {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            self.argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not it
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; reap; close the log."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:])


# ---- the environment


@dataclass
class K8sEnv:
    """A control plane: started here (`procs` non-empty) or attached to (`procs` empty)."""

    dir: Path
    bin_dir: Path
    kubeconfig: Path
    server: str
    ca_file: Path | None
    admin_token: str | None = None
    tester_token: str | None = None
    procs: list[Proc] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    start_seconds: float = 0.0
    remove_dir: bool = False

    @property
    def owned(self) -> bool:
        return bool(self.procs)

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    def kubectl_argv(self, *args: str) -> list[str]:
        return [str(self.kubectl), "--kubeconfig", str(self.kubeconfig), *args]

    def log_tails(self, lines: int = 25) -> str:
        return "\n".join(f"--- {p.name} ({p.log_path}):\n{p.log_tail(lines)}" for p in self.procs)

    def check_alive(self) -> None:
        for p in self.procs:
            if not p.running:
                code = p.popen.returncode if p.popen else None
                raise EnvError(
                    f"{p.name} exited with code {code}; log {p.log_path}:\n{p.log_tail()}"
                )

    def stop(self) -> None:
        """Stop the processes in reverse start order; remove a temporary dir."""
        for p in reversed(self.procs):
            p.stop()
        if self.remove_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- HTTP against the apiserver (admin token)
    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        return ctx

    def request(
        self, method: str, path: str, body: Any = None, *, timeout: float = 10.0
    ) -> tuple[int, Any]:
        """One JSON request as the admin user; returns (status, decoded body or text)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if self.admin_token:
            req.add_header("Authorization", f"Bearer {self.admin_token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def write_state(self, supervisor: int | None = None) -> None:
        """DIR/env.json: what reusing or stopping this environment needs
        (`supervisor`: the pid of a foreground `up` that owns the processes)."""
        state = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "bin_dir": str(self.bin_dir),
            "ca_file": str(self.ca_file) if self.ca_file else None,
            "ports": self.ports,
            "pids": {p.name: p.pid for p in self.procs},
            "logs": {p.name: str(p.log_path) for p in self.procs},
            "k8s_version": K8S_VERSION,
            "start_seconds": round(self.start_seconds, 2),
            "supervisor_pid": supervisor,
        }
        (self.dir / ENV_FILE).write_text(json.dumps(state, indent=2) + "\n")


def _wait(
    what: str, probe: Callable[[], bool], env: K8sEnv, deadline: float, proc: Proc | None = None
) -> None:
    last: BaseException | None = None
    while True:
        env.check_alive()
        try:
            if probe():
                return
        except Exception as exc:  # a probe error is "not yet"
            last = exc
        if time.monotonic() > deadline:
            tail = env.log_tails() if proc is None else f"--- {proc.name}:\n{proc.log_tail()}"
            raise EnvError(f"{what} not ready in time (last error: {last!r}):\n{tail}")
        time.sleep(0.1)


def _http_ok(url: str, ctx: ssl.SSLContext | None = None, token: str | None = None) -> bool:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, context=ctx, timeout=3) as r:
        return bool(r.status == 200)


def start(
    dir: Path | None = None,
    *,
    timeout: float = START_TIMEOUT,
    log: Callable[[str], None] = _log_default,
    build: bool = True,
) -> K8sEnv:
    """Start etcd, kube-apiserver and kube-controller-manager; return when a
    Deployment gets a ReplicaSet. Raises EnvError (with log tails) on failure.

    The servers get SIGKILL when the calling thread ends (PR_SET_PDEATHSIG):
    call this from the main thread (or one that lives as long as they should).
    A failed start (a port taken between choosing and binding it) is retried
    once on new ports."""
    t0 = time.monotonic()
    bins = bin_dir(build=build, log=log)
    for attempt in (1, 2):
        try:
            env = _start_once(bins, dir, timeout)
        except EnvError as exc:
            if attempt == 2:
                raise
            log(f"k8s_env: start failed, retrying on new ports: {str(exc).splitlines()[0]}")
            continue
        env.start_seconds = time.monotonic() - t0
        env.write_state()
        return env
    raise AssertionError("unreachable")


def _start_once(bins: Path, dir: Path | None, timeout: float) -> K8sEnv:
    remove = dir is None
    root = Path(tempfile.mkdtemp(prefix="fedkube-k8s-")) if dir is None else dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("etcd-data", "logs", "pki", "kcm-certs"):
        path = root / sub
        if sub == "etcd-data" and path.exists():
            shutil.rmtree(path)  # a fresh cluster every time
        path.mkdir(mode=0o700, exist_ok=True)
    pki = root / "pki"
    make_pki(pki)
    tokens = {ADMIN_USER: secrets.token_urlsafe(32), TESTER_USER: secrets.token_urlsafe(32)}
    (root / "tokens.csv").write_text(
        f'{tokens[ADMIN_USER]},{ADMIN_USER},uid-admin,"system:masters"\n'
        f"{tokens[TESTER_USER]},{TESTER_USER},uid-tester\n"
    )
    (root / "tokens.csv").chmod(0o600)
    etcd_client, etcd_peer, api_port, kcm_port = free_ports(4)
    server = f"https://127.0.0.1:{api_port}"
    env = K8sEnv(
        dir=root,
        bin_dir=bins,
        kubeconfig=root / "kubeconfig",
        server=server,
        ca_file=pki / "ca.pem",
        admin_token=tokens[ADMIN_USER],
        tester_token=tokens[TESTER_USER],
        ports={
            "etcd": etcd_client,
            "etcd_peer": etcd_peer,
            "apiserver": api_port,
            "controller_manager": kcm_port,
        },
        remove_dir=remove,
    )
    write_kubeconfig(env.kubeconfig, server, (pki / "ca.pem").read_bytes(), tokens)
    logs = root / "logs"
    deadline = time.monotonic() + timeout
    try:
        etcd_url = f"http://127.0.0.1:{etcd_client}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        etcd = Proc(
            "etcd",
            [
                str(bins / "etcd"),
                "--name",
                "fedkube",
                "--data-dir",
                str(root / "etcd-data"),
                "--listen-client-urls",
                etcd_url,
                "--advertise-client-urls",
                etcd_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                f"fedkube={peer_url}",
                "--initial-cluster-state",
                "new",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
                "--logger",
                "zap",
            ],
            logs / "etcd.log",
        )
        env.procs.append(etcd)
        etcd.start(root)
        _wait("etcd", lambda: _http_ok(f"{etcd_url}/health"), env, deadline, etcd)

        apiserver = Proc(
            "kube-apiserver",
            [
                str(bins / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                f"--secure-port={api_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                f"--token-auth-file={root / 'tokens.csv'}",
                f"--client-ca-file={pki / 'ca.pem'}",
                f"--service-account-issuer={SERVICE_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--tls-cert-file={pki / 'server.pem'}",
                f"--tls-private-key-file={pki / 'server.key'}",
                f"--cert-dir={pki}",
                "--allow-privileged=true",
                # the `kubernetes` Service gets no Endpoints: 127.0.0.1 is not a
                # valid endpoint address, and nothing could route to it anyway
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
            ],
            logs / "kube-apiserver.log",
        )
        env.procs.append(apiserver)
        apiserver.start(root)
        ctx = env.ssl_context()
        _wait(
            "kube-apiserver /readyz",
            lambda: _http_ok(f"{server}/readyz", ctx, env.admin_token),
            env,
            deadline,
            apiserver,
        )

        kcm = Proc(
            "kube-controller-manager",
            [
                str(bins / "kube-controller-manager"),
                f"--kubeconfig={env.kubeconfig}",
                f"--authentication-kubeconfig={env.kubeconfig}",
                f"--authorization-kubeconfig={env.kubeconfig}",
                "--authentication-skip-lookup=true",  # no front-proxy CA in this cluster
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={root / 'kcm-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                "--controllers=*",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.pem'}",
                "--cluster-name=fedkube-test",
                "--profiling=false",
                "--v=1",
            ],
            logs / "kube-controller-manager.log",
        )
        env.procs.append(kcm)
        kcm.start(root)
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        _wait(
            "kube-controller-manager /healthz",
            lambda: _http_ok(f"https://127.0.0.1:{kcm_port}/healthz", insecure),
            env,
            deadline,
            kcm,
        )
        _wait_controllers(env, deadline)
    except BaseException:
        env.stop()
        raise
    return env


def _wait_controllers(env: K8sEnv, deadline: float) -> None:
    """The controllers work: the `default` ServiceAccount exists (serviceaccount
    controller) and a Deployment gets a ReplicaSet (deployment controller)."""
    kcm = env.procs[-1]
    _wait(
        "the `default` ServiceAccount",
        lambda: env.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
        env,
        deadline,
        kcm,
    )
    name = "fedkube-env-probe"
    base = "/apis/apps/v1/namespaces/kube-system/deployments"
    labels = {"app": name}
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "none"}]},
            },
        },
    }
    status, body = env.request("POST", base, deploy)
    if status not in (201, 409):
        raise EnvError(f"cannot create the probe Deployment: {status} {body}")

    def has_rs() -> bool:
        _, rs = env.request(
            "GET", f"/apis/apps/v1/namespaces/kube-system/replicasets?labelSelector=app%3D{name}"
        )
        return bool(rs.get("items"))

    _wait("the deployment controller (a ReplicaSet for a Deployment)", has_rs, env, deadline, kcm)
    env.request("DELETE", f"{base}/{name}", {"propagationPolicy": "Background"})


def load_state(dir: Path) -> dict[str, Any] | None:
    """env.json of an environment started with `up --dir DIR`, or None."""
    try:
        data = json.loads((dir / ENV_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pid_is(pid: int, name: str) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return Path(cmd).name == name


def stop_dir(dir: Path, grace: float = STOP_GRACE) -> list[str]:
    """Stop the processes listed in DIR/env.json (checking each pid still runs
    that binary); return the names stopped."""
    state = load_state(dir) or {}
    stopped = []
    sup = state.get("supervisor_pid")
    if sup and _pid_is_up(sup):
        # a foreground `up`: it stops its processes itself on SIGTERM
        os.kill(sup, signal.SIGTERM)
        end = time.monotonic() + 4 * grace
        while time.monotonic() < end and _pid_is_up(sup):
            time.sleep(0.1)
        stopped.append("k8s_env.py up")
    pids: dict[str, int] = {k: v for k, v in (state.get("pids") or {}).items() if v}
    live = [(n, p) for n, p in reversed(list(pids.items())) if _pid_is(p, n)]
    for _name, pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + grace
        while time.monotonic() < end and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return stopped + [n for n, _ in live]


def _pid_is_up(pid: int) -> bool:
    """`pid` is a running `k8s_env.py up`."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and any(a.endswith(b"k8s_env.py") for a in args) and b"up" in args


# ---- command line


def _up(dir: Path | None) -> int:
    if dir is not None:
        state = load_state(dir)
        if state and any(_pid_is(p, n) for n, p in (state.get("pids") or {}).items() if p):
            print(f"an environment is already running in {dir} (stop it: down --dir {dir})")
            return 1
    try:
        env = start(dir, log=lambda m: print(m, flush=True))
    except EnvError as exc:
        print(f"error: {exc}\nhint: {exc.hint}", file=sys.stderr)
        return 1
    env.write_state(supervisor=os.getpid())
    stop_now = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop_now
        stop_now = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"Kubernetes {K8S_VERSION} control plane up in {env.start_seconds:.1f}s "
        f"(apiserver {env.server}; state {env.dir / ENV_FILE}; logs {env.dir / 'logs'})\n"
        f"    export KUBECONFIG={env.kubeconfig}\n"
        f"    export FEDKUBE_TEST_KUBECONFIG={env.kubeconfig}\n"
        f"    export PATH={env.bin_dir}:$PATH    # kubectl {K8S_VERSION}\n"
        "Ctrl-C stops it.",
        flush=True,
    )
    try:
        while not stop_now:
            time.sleep(0.5)
            env.check_alive()
    except EnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        env.stop()
        return 1
    print("stopping ...", flush=True)
    env.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the control plane in the foreground (Ctrl-C stops)")
    up.add_argument("--dir", type=Path, help="state directory (default: a temporary one)")
    down = sub.add_parser("down", help="stop the environment started with `up --dir DIR`")
    down.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "up":
        return _up(args.dir)
    stopped = stop_dir(args.dir)
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
