"""A real Kubernetes control plane on loopback: etcd, kube-apiserver,
kube-controller-manager (no scheduler, no kubelet, no container runtime). I/O side.

The binaries are built with Go from the module proxy by
``scripts/build_k8s.sh`` and cached in ``~/.cache/fedkube/k8s/<version>/bin``
(the first build takes minutes; ``bin_dir()`` runs the script, about a second
once cached). ``start(dir)`` returns a running K8sEnv; ``K8sEnv.stop()`` stops
it (SIGTERM, then SIGKILL) and removes a temporary directory. What it sets up
in DIR (a fresh temporary directory when None):

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

``python scripts/k8s_env.py up [--dir DIR]`` runs it in the foreground and
prints the exports (``KUBECONFIG``, ``FEDKUBE_TEST_KUBECONFIG``) that make the
test suite (tests/support/k8s.py) reuse it; ``down --dir DIR`` (stop_dir)
stops one started with ``--dir``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedkube.devenv.base import cache_dir, log_stderr
from fedkube.errors import ServiceUnavailable
from fedkube.process import ChildProcess, free_ports, stop_pids

#: the checkout this module belongs to (editable install): where scripts/ is
REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build_k8s.sh"
K8S_VERSION = os.environ.get("K8S_VERSION", "v1.34.4")
BUILD_HINT = "build the Kubernetes test binaries with `bash scripts/build_k8s.sh` (needs Go)"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_ISSUER = "https://kubernetes.default.svc"
ADMIN_USER = "fedkube-admin"
TESTER_USER = "fedkube-tester"
STOP_GRACE = 5.0
START_TIMEOUT = 90.0
TAIL_LINES = 25
ENV_FILE = "env.json"
#: the ports of K8sEnv.ports (and env.json)
PORT_NAMES = ("etcd", "etcd_peer", "apiserver", "controller_manager")
#: what `stop_dir` looks for in a supervisor's command line
UP_SCRIPT = "k8s_env.py"


def cached_bin_dir() -> Path:
    """Where scripts/build_k8s.sh puts the binaries of K8S_VERSION (not checked)."""
    return cache_dir() / "k8s" / K8S_VERSION / "bin"


# ---- binaries


def bin_dir(*, build: bool = True, log: Callable[[str], None] = log_stderr) -> Path:
    """The directory with etcd, kube-apiserver, kube-controller-manager, kubectl.

    Runs scripts/build_k8s.sh (about a second when cached; minutes the first
    time) unless ``build`` is false, in which case only the cache is looked at.
    """
    cached = cached_bin_dir()
    have_all = all(os.access(cached / b, os.X_OK) for b in BINARIES)
    if not build:
        if have_all:
            return cached
        raise ServiceUnavailable(f"Kubernetes test binaries not found in {cached}", BUILD_HINT)
    if not BUILD_SCRIPT.is_file():
        if have_all:
            return cached
        raise ServiceUnavailable(f"{cached} lacks the binaries and {BUILD_SCRIPT} is missing")
    if shutil.which("go") is None and not have_all:
        raise ServiceUnavailable(
            f"Go is not installed and {cached} lacks the Kubernetes binaries", BUILD_HINT
        )
    return _build(log)


def _build(log: Callable[[str], None]) -> Path:
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise ServiceUnavailable(
            f"scripts/build_k8s.sh failed (exit {proc.returncode}):\n{tail}", BUILD_HINT
        )
    for line in proc.stdout.splitlines():
        if line.startswith("==>"):
            log(line)
    out = Path(proc.stdout.strip().splitlines()[-1])
    missing = [b for b in BINARIES if not os.access(out / b, os.X_OK)]
    if missing:
        raise ServiceUnavailable(
            f"scripts/build_k8s.sh did not produce {missing} in {out}", BUILD_HINT
        )
    return out


# ---- certificates, tokens, kubeconfig

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


def openssl(args: str, *, cwd: Path) -> None:
    """Run ``openssl ARGS`` (words separated by spaces) in `cwd`."""
    proc = subprocess.run(["openssl", *args.split()], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServiceUnavailable(
            f"openssl {args.split()[0]} failed: {proc.stderr.strip()}", "install openssl"
        )


def make_pki(pki: Path, extra_ips: Sequence[str] = ()) -> None:
    """ca.pem/ca.key, server.pem/server.key (127.0.0.1, localhost, kubernetes.default.svc,
    and `extra_ips`) and sa.key/sa.pub (the service-account token signing key pair)."""
    if shutil.which("openssl") is None:
        raise ServiceUnavailable("the `openssl` command is missing", "install openssl")
    pki.mkdir(parents=True, exist_ok=True)
    extra = "".join(f"IP.{i} = {ip}\n" for i, ip in enumerate(extra_ips, start=3))
    (pki / "openssl.cnf").write_text(_OPENSSL_CONF + extra)
    ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    openssl(
        f"req -x509 {ec} -keyout ca.key -out ca.pem -days 30 -config openssl.cnf"
        " -extensions ca -subj /CN=fedkube-test-ca",
        cwd=pki,
    )
    openssl(
        f"req -new {ec} -keyout server.key -out server.csr -config openssl.cnf"
        " -subj /CN=kube-apiserver",
        cwd=pki,
    )
    openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem"
        " -days 30 -extfile openssl.cnf -extensions server",
        cwd=pki,
    )
    openssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key", cwd=pki)
    openssl("pkey -in sa.key -pubout -out sa.pub", cwd=pki)
    for p in pki.glob("*.key"):
        p.chmod(0o600)


def write_tokens(path: Path) -> dict[str, str]:
    """tokens.csv (--token-auth-file) with a new token for each user; returns them."""
    tokens = {ADMIN_USER: secrets.token_urlsafe(32), TESTER_USER: secrets.token_urlsafe(32)}
    path.write_text(
        f'{tokens[ADMIN_USER]},{ADMIN_USER},uid-admin,"system:masters"\n'
        f"{tokens[TESTER_USER]},{TESTER_USER},uid-tester\n"
    )
    path.chmod(0o600)
    return tokens


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


# ---- the environment


def api_request(
    url: str,
    token: str | None,
    ctx: ssl.SSLContext,
    method: str = "GET",
    body: Any = None,
    *,
    timeout: float = 10.0,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    """One request to an apiserver with a bearer token; (status, JSON body or its text).
    An HTTP error is a status, not an exception."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


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
    procs: list[ChildProcess] = field(default_factory=list)
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

    def log_tails(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(f"--- {p.name} ({p.log_path}):\n{p.log_tail(lines)}" for p in self.procs)

    def check_alive(self) -> None:
        """ServiceUnavailable (exit status, log tail) when a process has exited."""
        for p in self.procs:
            p.check_running()

    def launch(self, name: str, argv: list[str]) -> ChildProcess:
        """Start one control-plane process, logging to logs/NAME.log. It gets
        SIGKILL when the calling thread ends (PR_SET_PDEATHSIG)."""
        proc = ChildProcess(
            name,
            argv,
            self.dir / "logs" / f"{name}.log",
            cwd=self.dir,
            hint=BUILD_HINT,
            stop_grace=STOP_GRACE,
            tail_lines=TAIL_LINES,
            dies_with_parent=True,
        )
        self.procs.append(proc)
        return proc.start()

    def wait(
        self, proc: ChildProcess, what: str, probe: Callable[[], Any], deadline: float
    ) -> None:
        """Wait until `probe()` is truthy; fail at once when any process exits,
        or at `deadline` with `proc`'s log tail."""

        def alive_and(probe: Callable[[], Any] = probe) -> Any:
            self.check_alive()
            return probe()

        proc.wait_ready(alive_and, max(0.0, deadline - time.monotonic()), what=what)

    def stop(self) -> None:
        """Stop the processes in reverse start order; remove a temporary dir."""
        for p in reversed(self.procs):
            p.stop()
        if self.remove_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- HTTP against the apiserver (admin token)
    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def request(
        self, method: str, path: str, body: Any = None, *, timeout: float = 10.0
    ) -> tuple[int, Any]:
        """One JSON request as the admin user; returns (status, decoded body or text)."""
        return api_request(
            self.server + path, self.admin_token, self.ssl_context(), method, body, timeout=timeout
        )

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
    log: Callable[[str], None] = log_stderr,
    build: bool = True,
) -> K8sEnv:
    """Start etcd, kube-apiserver and kube-controller-manager; return when a
    Deployment gets a ReplicaSet. Raises ServiceUnavailable (with log tails)
    on failure.

    The servers get SIGKILL when the calling thread ends (PR_SET_PDEATHSIG):
    call this from the main thread (or one that lives as long as they should).
    A failed start (a port taken between choosing and binding it) is retried
    once on new ports."""
    t0 = time.monotonic()
    bins = bin_dir(build=build, log=log)
    for attempt in (1, 2):
        try:
            env = _start_once(bins, dir, timeout)
        except ServiceUnavailable as exc:
            if attempt == 2:
                raise
            log(f"k8s_env: start failed, retrying on new ports: {str(exc).splitlines()[0]}")
            continue
        env.start_seconds = time.monotonic() - t0
        env.write_state()
        return env
    raise AssertionError("unreachable")


def _start_once(bins: Path, dir: Path | None, timeout: float) -> K8sEnv:
    env = _new_env(bins, dir)
    deadline = time.monotonic() + timeout
    try:
        _start_etcd(env, deadline)
        _start_apiserver(env, deadline)
        _start_controller_manager(env, deadline)
        _wait_controllers(env, deadline)
    except BaseException:
        env.stop()
        raise
    return env


def _new_env(bins: Path, dir: Path | None) -> K8sEnv:
    """The state directory (fresh etcd data), certificates, tokens, free ports
    and the kubeconfig of a control plane not started yet."""
    root = Path(tempfile.mkdtemp(prefix="fedkube-k8s-")) if dir is None else dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("etcd-data", "logs", "pki", "kcm-certs"):
        path = root / sub
        if sub == "etcd-data" and path.exists():
            shutil.rmtree(path)  # a fresh cluster every time
        path.mkdir(mode=0o700, exist_ok=True)
    pki = root / "pki"
    make_pki(pki)
    tokens = write_tokens(root / "tokens.csv")
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    env = K8sEnv(
        dir=root,
        bin_dir=bins,
        kubeconfig=root / "kubeconfig",
        server=f"https://127.0.0.1:{ports['apiserver']}",
        ca_file=pki / "ca.pem",
        admin_token=tokens[ADMIN_USER],
        tester_token=tokens[TESTER_USER],
        ports=ports,
        remove_dir=dir is None,
    )
    write_kubeconfig(env.kubeconfig, env.server, (pki / "ca.pem").read_bytes(), tokens)
    return env


def _etcd_url(env: K8sEnv) -> str:
    return f"http://127.0.0.1:{env.ports['etcd']}"


def _start_etcd(env: K8sEnv, deadline: float) -> None:
    client = _etcd_url(env)
    peer = f"http://127.0.0.1:{env.ports['etcd_peer']}"
    argv = [
        str(env.bin_dir / "etcd"),
        "--name=fedkube",
        f"--data-dir={env.dir / 'etcd-data'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=fedkube={peer}",
        "--initial-cluster-state=new",
        "--unsafe-no-fsync",
        "--log-level=warn",
        "--logger=zap",
    ]
    etcd = env.launch("etcd", argv)
    env.wait(etcd, "answer /health", lambda: _http_ok(f"{client}/health"), deadline)


def _start_apiserver(env: K8sEnv, deadline: float) -> None:
    pki = env.dir / "pki"
    argv = [
        str(env.bin_dir / "kube-apiserver"),
        f"--etcd-servers={_etcd_url(env)}",
        f"--secure-port={env.ports['apiserver']}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        f"--token-auth-file={env.dir / 'tokens.csv'}",
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
    ]
    apiserver = env.launch("kube-apiserver", argv)
    ctx = env.ssl_context()
    ready = f"{env.server}/readyz"
    env.wait(apiserver, "answer /readyz", lambda: _http_ok(ready, ctx, env.admin_token), deadline)


def _start_controller_manager(env: K8sEnv, deadline: float) -> None:
    pki = env.dir / "pki"
    port = env.ports["controller_manager"]
    argv = [
        str(env.bin_dir / "kube-controller-manager"),
        f"--kubeconfig={env.kubeconfig}",
        f"--authentication-kubeconfig={env.kubeconfig}",
        f"--authorization-kubeconfig={env.kubeconfig}",
        "--authentication-skip-lookup=true",  # no front-proxy CA in this cluster
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={env.dir / 'kcm-certs'}",
        "--leader-elect=false",
        "--use-service-account-credentials=false",
        "--controllers=*",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.pem'}",
        "--cluster-name=fedkube-test",
        "--profiling=false",
        "--v=1",
    ]
    kcm = env.launch("kube-controller-manager", argv)
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    healthz = f"https://127.0.0.1:{port}/healthz"
    env.wait(kcm, "answer /healthz", lambda: _http_ok(healthz, insecure), deadline)


def _wait_controllers(env: K8sEnv, deadline: float) -> None:
    """The controllers work: the `default` ServiceAccount exists (serviceaccount
    controller) and a Deployment gets a ReplicaSet (deployment controller)."""
    kcm = env.procs[-1]
    env.wait(
        kcm,
        "create the `default` ServiceAccount",
        lambda: env.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
        deadline,
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
        raise ServiceUnavailable(f"cannot create the probe Deployment: {status} {body}")

    def has_rs() -> bool:
        _, rs = env.request(
            "GET", f"/apis/apps/v1/namespaces/kube-system/replicasets?labelSelector=app%3D{name}"
        )
        return bool(rs.get("items"))

    env.wait(kcm, "give a Deployment a ReplicaSet (deployment controller)", has_rs, deadline)
    env.request("DELETE", f"{base}/{name}", {"propagationPolicy": "Background"})


# ---- an environment started by `k8s_env.py up --dir DIR`


def load_state(dir: Path) -> dict[str, Any] | None:
    """env.json of an environment started with `up --dir DIR`, or None."""
    try:
        data = json.loads((dir / ENV_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_is(pid: int, name: str) -> bool:
    """`pid` runs the binary `name` (not a reused pid of another program)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return Path(cmd).name == name


def running_in(dir: Path) -> bool:
    """Some process listed in DIR/env.json still runs its binary."""
    state = load_state(dir) or {}
    return any(pid_is(p, n) for n, p in (state.get("pids") or {}).items() if p)


def _pid_is_up(pid: int) -> bool:
    """`pid` is a running `k8s_env.py up`."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    up_script = UP_SCRIPT.encode()
    return state != "Z" and any(a.endswith(up_script) for a in args) and b"up" in args


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
        stopped.append(f"{UP_SCRIPT} up")
    pids: dict[str, int] = {k: v for k, v in (state.get("pids") or {}).items() if v}
    live = [(n, p) for n, p in reversed(list(pids.items())) if pid_is(p, n)]
    for _name, pid in live:  # one at a time, in reverse start order
        stop_pids([pid], grace)
    return stopped + [n for n, _ in live]
