"""A real single-node Kubernetes cluster for tests, in a network namespace of its
own: real containers (containerd + runc), pod networking (CNI bridge), Services
(kube-proxy) and cluster DNS (CoreDNS). I/O side (Linux, root).

DESIGN.md ("A real single-node cluster") says why each setting below is there.

**Build** (``build(log)``, idempotent, seconds when cached): the Kubernetes
binaries (``scripts/build_k8s.sh --node``: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl), the
node's (``scripts/build_node.sh``: containerd, containerd-shim-runc-v2, ctr,
CoreDNS, pause, and the Debian packages runc, containernetworking-plugins,
iptables, podman, mmdebstrap, ...), then the images, built with podman (vfs
storage and runc, under the cache directory) and each saved as a
docker-archive keyed by a hash of its build inputs (rebuilt only when they
change): the Debian base (mmdebstrap), the server, client and linear example
images from the repository's Dockerfiles, and the test-only images of
``scripts/cluster_images/`` (dev S3, dev MongoDB, pause, CoreDNS).

**Start** (``start(dir)``): a named network namespace ``fedkube-<id>`` with
the bridge ``cni0`` (10.244.0.1/24, the node's address) and a route for the
Service range; etcd, kube-apiserver (on 10.244.0.1:6443), kube-controller-
manager, kube-scheduler, containerd, kubelet and kube-proxy in it (``nsenter
--net``: the mount namespace stays the host's); the cached images imported
with ``ctr images import``; CoreDNS deployed (Service 10.96.0.10). Returns once
the node and CoreDNS are Ready. The host reaches the apiserver through a
forwarder (127.0.0.1:<free port> in the host namespace, dialled from inside
the cluster's namespace): ``Cluster.kubeconfig`` points at it;
``Cluster.forward(host, port)`` makes more (a NodePort, a ClusterIP);
``Cluster.popen_in_netns(argv)`` runs a process on the node's network.

**Stop** (``Cluster.stop()``, or ``stop_dir(dir)`` from DIR/env.json, also
after a crash): the pods' processes (every process in the cluster's cgroups,
then the shims), kubelet, containerd and the control plane (SIGTERM, then
SIGKILL), every mount under DIR (deepest first), the cgroups, the namespace,
the kubelet's CNI leftovers; the global sysctls the kubelet changes
(vm.overcommit_memory, kernel.panic, ...) are restored from DIR/sysctls.json.

What DIR holds: ``env.json`` (pids, ports, paths, netns, kubeconfig),
``kubeconfig`` (host side, contexts ``fedkube-admin`` and ``fedkube-tester``),
``kubeconfig-netns`` (the same users, server https://10.244.0.1:6443, for
processes in the namespace), ``pki/``, ``logs/``, ``etcd-data/``,
``containerd/``, ``kubelet/``, ``pod-logs/``, ``cni/``, ``sysctls.json``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedkube.devenv import k8s, netns
from fedkube.devenv.base import cache_dir, log_stderr
from fedkube.devenv.images import (
    BASE_IMAGE,
    CLIENT_IMAGE,
    COREDNS_IMAGE,
    EXAMPLE_LINEAR_IMAGE,
    HINT,
    MONGODB_IMAGE,
    PAUSE_IMAGE,
    RUNC,
    S3_IMAGE,
    SERVER_IMAGE,
    ImageBuilder,
    Log,
    Timer,
)
from fedkube.errors import ServiceUnavailable
from fedkube.process import (
    ChildProcess,
    is_zombie,
    kill_pids,
    stop_all,
    stop_pids,
    wait_gone,
    write_atomic,
)

__all__ = [
    "BASE_IMAGE",
    "CLIENT_IMAGE",
    "COREDNS_IMAGE",
    "EXAMPLE_LINEAR_IMAGE",
    "MONGODB_IMAGE",
    "PAUSE_IMAGE",
    "S3_IMAGE",
    "SERVER_IMAGE",
    "Cluster",
    "Paths",
    "attach",
    "build",
    "start",
    "stop_dir",
]

REPO = k8s.REPO
BUILD_K8S = REPO / "scripts" / "build_k8s.sh"
BUILD_NODE = REPO / "scripts" / "build_node.sh"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

K8S_VERSION = k8s.K8S_VERSION
K8S_BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
)
NODE_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr", "coredns", "pause")
NODE_NAME = "fedkube-node"
NODE_IP = "10.244.0.1"
POD_SUBNET = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = k8s.SERVICE_CIDR
DNS_IP = "10.96.0.10"
APISERVER_PORT = 6443
BRIDGE = "cni0"
CNI_BIN = "/usr/lib/cni"
#: global sysctls the kubelet (or kube-proxy) may change: saved, restored on stop
GLOBAL_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.netfilter.nf_conntrack_max",
)
#: host directories the kubelet creates whatever its --root-dir (removed on stop
#: when they did not exist before)
HOST_DIRS = ("/var/lib/kubelet", "/var/log/containers", "/var/log/pods")
#: how many `ctr images import` run at once (they are I/O bound)
IMPORT_WORKERS = int(os.environ.get("FEDKUBE_CLUSTER_IMPORT_WORKERS", "2"))
ENV_FILE = k8s.ENV_FILE
load_state = k8s.load_state
pid_is = k8s.pid_is
running_in = k8s.running_in
SYSCTL_FILE = "sysctls.json"
STOP_GRACE = 3.0
START_TIMEOUT = 240.0
TAIL_LINES = 30
UP_SCRIPT = "cluster.py"
#: a unix socket directory the shim accepts is at most this long (containerd)
MAX_SOCKET_DIR = 42


# =====================================================================
# build


@dataclass
class Paths:
    """Where `build` put everything."""

    k8s_bin: Path
    node_bin: Path
    images: dict[str, Path] = field(default_factory=dict)  # image name -> docker-archive
    missing: dict[str, str] = field(default_factory=dict)  # image name -> why not built
    seconds: dict[str, float] = field(default_factory=dict)  # step -> seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "k8s_bin": str(self.k8s_bin),
            "node_bin": str(self.node_bin),
            "images": {k: str(v) for k, v in self.images.items()},
            "missing": self.missing,
        }


def cluster_cache() -> Path:
    return cache_dir() / "cluster"


def _run_script(what: str, argv: list[str], log: Log) -> Path:
    """Run a build script, relaying its ``==>`` lines; its last line is a directory."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        if line.startswith("==>"):
            log(f"cluster: {what}: {line[4:]}")
    rc = proc.wait()
    if rc != 0:
        tail = "\n".join(lines[-30:])
        raise ServiceUnavailable(f"{' '.join(argv)} failed (exit {rc}):\n{tail}", HINT)
    return Path(lines[-1].strip())


def _need_binaries(directory: Path, names: Sequence[str]) -> None:
    missing = [n for n in names if not os.access(directory / n, os.X_OK)]
    if missing:
        raise ServiceUnavailable(f"{directory} lacks {', '.join(missing)}", HINT)


def cached_paths() -> Paths:
    """The binaries' directories (not checked), without building anything."""
    return Paths(
        k8s_bin=k8s.cached_bin_dir(),
        node_bin=cache_dir() / "node" / "bin",
    )


def build(
    log: Log = log_stderr,
    *,
    images: bool = True,
    strict: bool | None = None,
    rebuild: bool | None = None,
) -> Paths:
    """Build or install every part (cached): binaries, Debian packages, images.

    `strict` (default: under CI=true) makes an image that cannot be built (a
    missing Dockerfile) an error; otherwise it is listed in `Paths.missing`.
    `rebuild` false (default: true unless FEDKUBE_CLUSTER_NO_REBUILD=1) keeps an
    image archived earlier even when its inputs changed since (a quicker `up`
    while editing the code the images contain). Raises ServiceUnavailable when a
    part cannot be built."""
    strict = CI if strict is None else strict
    if rebuild is None:
        rebuild = os.environ.get("FEDKUBE_CLUSTER_NO_REBUILD", "") not in ("1", "true", "yes")
    total = Timer(log, "build done")
    if os.geteuid() != 0:
        raise ServiceUnavailable("the test cluster needs root (network namespaces, mounts)", HINT)
    if shutil.which("go") is None:
        paths = cached_paths()
        _need_binaries(paths.k8s_bin, K8S_BINARIES)
        _need_binaries(paths.node_bin, NODE_BINARIES)
    else:
        t = Timer(log, "kubernetes binaries ready")
        k8s_bin = _run_script("kubernetes", ["bash", str(BUILD_K8S), "--node"], log)
        t.done()
        t2 = Timer(log, "node binaries and packages ready")
        node_bin = _run_script("node", ["bash", str(BUILD_NODE)], log)
        t2.done()
        paths = Paths(k8s_bin=k8s_bin, node_bin=node_bin)
        paths.seconds["kubernetes"] = t.seconds
        paths.seconds["node"] = t2.seconds
    _need_binaries(paths.k8s_bin, K8S_BINARIES)
    _need_binaries(paths.node_bin, NODE_BINARIES)
    for tool in ("runc", "nsenter", "ip", "iptables", "podman", "mmdebstrap"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise ServiceUnavailable(f"`{tool}` is missing", HINT)
    if images:
        built = ImageBuilder(paths.node_bin, log, strict=strict, rebuild=rebuild).build_all()
        paths.images, paths.missing = built.archives, built.missing
        paths.seconds.update(built.seconds)
    total.done()
    return paths


# =====================================================================
# the running cluster


def _http_via(
    dial: Callable[[str, int], socket.socket],
    url_host: str,
    port: int,
    path: str,
    *,
    tls: ssl.SSLContext | None = None,
    token: str | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """GET `path` from host:port through `dial` (a socket made in the namespace)."""
    sock = dial(url_host, port)
    sock.settimeout(timeout)
    try:
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=url_host)
        conn = http.client.HTTPConnection(url_host, port, timeout=timeout)
        conn.sock = sock
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        sock.close()


def _insecure_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass
class Cluster:
    """A running cluster: started here (`owned`) or attached to (`attach(dir)`)."""

    dir: Path
    netns_name: str
    paths: Paths
    kubeconfig: Path
    kubeconfig_netns: Path
    server: str
    ca_file: Path
    admin_token: str
    tester_token: str
    node_ip: str = NODE_IP
    node_name: str = NODE_NAME
    images: list[str] = field(default_factory=list)
    owned: bool = False
    remove_dir: bool = False
    procs: list[ChildProcess] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    start_seconds: float = 0.0
    _dialer: netns.Dialer | None = None
    _forwarders: list[netns.Forwarder] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- reaching it
    @property
    def netns_path(self) -> Path:
        return netns.path(self.netns_name)

    @property
    def kubectl(self) -> Path:
        return self.paths.k8s_bin / "kubectl"

    def kubectl_argv(self, *args: str) -> list[str]:
        """kubectl (host side, through the apiserver forwarder) as the admin."""
        return [str(self.kubectl), "--kubeconfig", str(self.kubeconfig), *args]

    def dialer(self) -> netns.Dialer:
        with self._lock:
            if self._dialer is None:
                self._dialer = netns.Dialer(self.netns_path)
            return self._dialer

    def dial(self, host: str, port: int) -> socket.socket:
        """A TCP connection to host:port made inside the cluster's namespace."""
        return self.dialer().dial(host, port)

    def forward(self, host: str, port: int) -> int:
        """A port on 127.0.0.1 (host namespace) whose connections go to host:port
        inside the cluster's namespace (a NodePort on node_ip, a ClusterIP, a pod IP).
        Closed by stop() (or close_forwarders())."""
        fwd = netns.Forwarder(self.dialer(), host, port)
        with self._lock:
            self._forwarders.append(fwd)
        return fwd.port

    def close_forwarders(self) -> None:
        with self._lock:
            fwds, self._forwarders = self._forwarders, []
        for f in fwds:
            f.close()

    def netns_env(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a process on the node's network: KUBECONFIG (in-namespace
        server), kubectl on PATH."""
        out = dict(os.environ if env is None else env)
        out["KUBECONFIG"] = str(self.kubeconfig_netns)
        out["PATH"] = f"{self.paths.k8s_bin}:{out.get('PATH', '/usr/bin:/bin')}"
        return out

    def netns_argv(self, argv: Sequence[str]) -> list[str]:
        return netns.nsenter_argv(self.netns_name, argv)

    def popen_in_netns(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start `argv` on the node's network (its namespace), KUBECONFIG set to the
        in-namespace kubeconfig (`env` is the base environment)."""
        return subprocess.Popen(self.netns_argv(argv), env=self.netns_env(env), **kwargs)

    def run_in_netns(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """subprocess.run of `argv` on the node's network (see popen_in_netns)."""
        return subprocess.run(self.netns_argv(argv), env=self.netns_env(env), **kwargs)

    # -- API (admin) through the host-side forwarder
    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(self, method: str, path: str, body: Any = None, *, timeout: float = 10.0) -> Any:
        """One JSON request as the admin; returns (status, decoded body)."""
        return k8s.api_request(
            self.server + path, self.admin_token, self.ssl_context(), method, body, timeout=timeout
        )

    def node_ready(self) -> bool:
        status, node = self.request("GET", f"/api/v1/nodes/{self.node_name}")
        if status != 200:
            return False
        conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
        return conds.get("Ready") == "True"

    # -- lifecycle
    def check_alive(self) -> None:
        for p in self.procs:
            p.check_running()

    def stop(self, log: Log = log_stderr) -> None:
        """Stop a cluster started here and undo what it did to the host; for an
        attached one, only close this object's forwarders."""
        self.close_forwarders()
        if self._dialer is not None:
            self._dialer.close()
            self._dialer = None
        if not self.owned:
            return
        t = Timer(log, "stopped")
        by_name = {p.name: p for p in self.procs}
        if "kubelet" in by_name:
            by_name["kubelet"].stop(STOP_GRACE)
        _kill_pods(self.state, log)
        stop_all(reversed([p for p in self.procs if p.name != "kubelet"]), STOP_GRACE)
        _cleanup_host(self.state, log)
        if not self.state.get("remove_dir") and (self.dir / ENV_FILE).exists():
            self.state.update(pids={}, ready=False, netns=None, stopped=True)
            _write_json(self.dir / ENV_FILE, self.state)
        self.owned = False
        t.done()

    def write_state(self, **extra: Any) -> None:
        self.state.update(
            pids={p.name: p.pid for p in self.procs},
            logs={p.name: str(p.log_path) for p in self.procs},
            images=self.images,
            start_seconds=round(self.start_seconds, 2),
            **extra,
        )
        _write_json(self.dir / ENV_FILE, self.state)


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


# ---- configuration files


def _containerd_config(dir: Path, sock_dir: Path, pause: str) -> str:
    c = dir / "containerd"
    return f"""\
version = 3
root = "{c / "root"}"
state = "{c / "state"}"
disabled_plugins = [
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.differ.v1.erofs",
  "io.containerd.mount-handler.v1.erofs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{sock_dir / "containerd.sock"}"

[ttrpc]
  address = "{sock_dir / "containerd.sock.ttrpc"}"

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{pause}"

  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    enable_unprivileged_ports = true
    enable_unprivileged_icmp = true
    cdi_spec_dirs = []
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "{RUNC}"
          Root = "{dir / "runc"}"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["{CNI_BIN}"]
      conf_dir = "{dir / "cni" / "net.d"}"

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"

  [plugins.'io.containerd.internal.v1.opt']
    path = "{c / "opt"}"

  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = "{c / "image-verifier"}"

  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = "{sock_dir / "s"}"
"""


def _cni_config(dir: Path, network: str) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(dir / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _kubelet_config(dir: Path, sock: Path, cgroup_root: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{sock}",
        "resolvConf": str(dir / "resolv.conf"),
        "clusterDNS": [DNS_IP],
        "clusterDomain": "cluster.local",
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(dir / "pki" / "ca.pem")},
        },
        "authorization": {"mode": "Webhook"},
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "podLogsDir": str(dir / "pod-logs"),
        "serializeImagePulls": False,
        "hairpinMode": "hairpin-veth",
        "protectKernelDefaults": False,
        "makeIPTablesUtilChains": False,
        "registerNode": True,
        "maxPods": 110,
    }


def _kube_proxy_config(kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "clusterCIDR": CLUSTER_CIDR,
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # 0: leave the (global) conntrack table size and timeouts alone
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


# ---- host state: sysctls, cgroups, mounts


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def save_sysctls(dir: Path) -> dict[str, str]:
    """DIR/sysctls.json: the global sysctls' values now (kept when it exists:
    after a crash it has the values from before the first start)."""
    path = dir / SYSCTL_FILE
    if path.exists():
        return dict(json.loads(path.read_text()))
    values = {}
    for name in GLOBAL_SYSCTLS:
        with contextlib.suppress(OSError):
            values[name] = _sysctl_path(name).read_text().strip()
    _write_json(path, values)
    return values


def restore_sysctls(dir: Path, log: Log) -> list[str]:
    """Write back the values of DIR/sysctls.json; returns those that had changed."""
    path = dir / SYSCTL_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    changed = []
    for name, value in saved.items():
        p = _sysctl_path(name)
        try:
            if p.read_text().strip() != value:
                p.write_text(value + "\n")
                changed.append(name)
        except OSError as exc:
            log(f"cluster: cannot restore {name}={value}: {exc}")
    if changed:
        log(f"cluster: restored sysctls {', '.join(changed)}")
    return changed


def _cgroup_mounts() -> list[tuple[Path, str]]:
    """(mount point, fstype) of every cgroup / cgroup2 hierarchy."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fstype = post.split()[0] if post else ""
        if fstype in ("cgroup", "cgroup2"):
            out.append((Path(_unescape(pre.split()[4])), fstype))
    return out


def _unescape(s: str) -> str:
    return s.encode().decode("unicode_escape") if "\\" in s else s


def _make_cgroup_root(name: str) -> None:
    """/NAME in each cgroup v1 hierarchy (the kubelet's cgroupRoot must exist); a
    cpuset one gets its parent's cpus and mems."""
    for mnt, fstype in _cgroup_mounts():
        if fstype != "cgroup":
            continue
        d = mnt / name.strip("/")
        d.mkdir(exist_ok=True)
        if (d / "cpuset.cpus").exists():
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (d / f).read_text().strip():
                    (d / f).write_text((mnt / f).read_text())


def _cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for mnt, _ in _cgroup_mounts():
        root = mnt / name.strip("/")
        if not root.is_dir():
            continue
        for d, _dirs, files in os.walk(root):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(x) for x in Path(d, "cgroup.procs").read_text().split())
    return pids


def _remove_cgroups(name: str, log: Log) -> int:
    """rmdir every cgroup under /NAME (deepest first) in every hierarchy."""
    removed = 0
    for mnt, _ in _cgroup_mounts():
        root = mnt / name.strip("/")
        if not root.is_dir():
            continue
        dirs = [Path(d) for d, _, _ in os.walk(root)]
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            for _ in range(50):
                try:
                    d.rmdir()
                    removed += 1
                    break
                except FileNotFoundError:
                    break
                except OSError:  # processes leaving: try again shortly
                    time.sleep(0.1)
            else:
                log(f"cluster: cannot remove cgroup {d}")
    return removed


def mounts_under(*roots: Path) -> list[Path]:
    """Mount points at or under `roots` (from /proc/self/mountinfo), deepest first."""
    resolved = [str(r.resolve()) for r in roots]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = _unescape(line.split()[4])
        if any(mp == r or mp.startswith(r + "/") for r in resolved):
            found.append(Path(mp))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _unmount_all(roots: Sequence[Path], log: Log) -> int:
    n = 0
    for _ in range(5):
        mps = mounts_under(*roots)
        if not mps:
            return n
        for mp in mps:
            try:
                netns.umount(mp)
            except OSError:
                with contextlib.suppress(OSError):
                    netns.umount(mp, lazy=True)
            n += 1
    left = mounts_under(*roots)
    if left:
        log(f"cluster: mounts left: {', '.join(map(str, left))}")
    return n


def _pid_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _shims(sock: str) -> list[int]:
    """The containerd-shim-runc-v2 processes of the containerd at `sock`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = _pid_cmdline(int(entry.name))
        if args and Path(args[0]).name.startswith("containerd-shim") and sock in args:
            out.append(int(entry.name))
    return out


def _kill_pods(state: Mapping[str, Any], log: Log) -> None:
    """SIGKILL every process in the cluster's cgroups (the pods' containers and
    pause processes), then the shims of its containerd."""
    cg = state.get("cgroup_root")
    killed = 0
    if cg:
        for _ in range(10):
            pids = sorted(_cgroup_pids(cg) - {os.getpid()})
            if not pids:
                break
            kill_pids(pids)
            killed += len(pids)
            wait_gone(pids, 2.0)
    sock = state.get("containerd_sock")
    shims = _shims(sock) if sock else []
    kill_pids(shims)
    wait_gone(shims, 5.0)
    if killed or shims:
        log(f"cluster: killed {killed} pod processes and {len(shims)} shims")


def _cleanup_host(state: Mapping[str, Any], log: Log) -> None:
    """Undo, from the state, what a start did to the host (processes already gone)."""
    dir = Path(state["dir"])
    roots = [dir]
    if state.get("sock_dir") and not Path(state["sock_dir"]).is_relative_to(dir):
        roots.append(Path(state["sock_dir"]))
    _unmount_all(roots, log)
    if state.get("cgroup_root"):
        _remove_cgroups(state["cgroup_root"], log)
    if state.get("netns"):
        netns.delete(state["netns"])
    restore_sysctls(dir, log)
    # the kubelet's symlinks in /var/log/containers and libcni's result cache
    with contextlib.suppress(OSError):
        for link in Path("/var/log/containers").iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(str(dir) + "/"):
                    link.unlink()
    network = state.get("cni_network")
    if network:
        # libcni's result cache: NETWORK-<container>-eth0 and cni-loopback-<container>-lo
        results = Path("/var/lib/cni/results")
        with contextlib.suppress(OSError):
            for f in results.glob(f"{network}-*"):
                cid = f.name[len(network) + 1 :].rsplit("-", 1)[0]
                (results / f"cni-loopback-{cid}-lo").unlink(missing_ok=True)
                f.unlink(missing_ok=True)
    # host directories the kubelet insists on (device-plugins socket, container log
    # links), when this cluster created them and no other kubelet runs
    if not any(pid_is(int(e.name), "kubelet") for e in Path("/proc").iterdir() if e.name.isdigit()):
        for created in state.get("host_dirs_created", []):
            p = Path(created)
            if p == Path("/var/lib/kubelet"):
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.rmdir()  # only when empty
    if len(roots) > 1:
        shutil.rmtree(roots[1], ignore_errors=True)
    if state.get("remove_dir"):
        shutil.rmtree(dir, ignore_errors=True)


# ---- start


def _node_pki(pki: Path) -> None:
    """kubelet-client.pem/.key: the apiserver's client certificate for the kubelet
    (logs, exec), group system:masters."""
    ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    k8s.openssl(
        f"req -new {ec} -keyout kubelet-client.key -out kubelet-client.csr -config openssl.cnf"
        " -subj /O=system:masters/CN=kube-apiserver-kubelet-client",
        cwd=pki,
    )
    k8s.openssl(
        "x509 -req -in kubelet-client.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
        " -out kubelet-client.pem -days 30 -extfile openssl.cnf -extensions server",
        cwd=pki,
    )
    (pki / "kubelet-client.key").chmod(0o600)


def _sock_dir(dir: Path, short_id: str) -> Path:
    """Where containerd's and the shims' sockets go: DIR/run when short enough."""
    d = dir / "run"
    if len(str(d / "s")) <= MAX_SOCKET_DIR:
        return d
    return Path("/run") / f"fedkube-{short_id}"


def attach(dir: Path) -> Cluster:
    """The cluster `up --dir DIR` runs (ServiceUnavailable when none runs there)."""
    dir = dir.resolve()
    state = load_state(dir)
    if not state or not state.get("ready"):
        raise ServiceUnavailable(f"no running cluster in {dir} (no ready {ENV_FILE})", HINT)
    sup = state.get("supervisor_pid")
    if not sup or not _pid_is_up(sup):
        raise ServiceUnavailable(f"the cluster in {dir} is not running (its `up` is gone)", HINT)
    tokens = state["tokens"]
    return Cluster(
        dir=dir,
        netns_name=state["netns"],
        paths=Paths(
            k8s_bin=Path(state["k8s_bin"]),
            node_bin=Path(state["node_bin"]),
            images={k: Path(v) for k, v in state.get("image_archives", {}).items()},
        ),
        kubeconfig=Path(state["kubeconfig"]),
        kubeconfig_netns=Path(state["kubeconfig_netns"]),
        server=state["server"],
        ca_file=Path(state["ca_file"]),
        admin_token=tokens[k8s.ADMIN_USER],
        tester_token=tokens[k8s.TESTER_USER],
        images=list(state.get("images", [])),
        owned=False,
        state=state,
        start_seconds=float(state.get("start_seconds", 0.0)),
    )


def start(
    dir: Path | None = None,
    *,
    paths: Paths | None = None,
    log: Log = log_stderr,
    timeout: float = START_TIMEOUT,
    supervisor_pid: int | None = None,
) -> Cluster:
    """Bring a cluster up in DIR (a new temporary directory when None, removed by
    stop()); `paths` from build() (default: build(), cached). Returns once the node
    and CoreDNS are Ready; ServiceUnavailable with the log tails when it cannot.

    The processes get SIGKILL when the calling thread ends (PR_SET_PDEATHSIG):
    call it from the main thread; stop() it (also after an error here: the
    partial cluster is stopped before the error is raised)."""
    if os.geteuid() != 0:
        raise ServiceUnavailable("the test cluster needs root (network namespaces, mounts)", HINT)
    paths = paths or build(log)
    t0 = time.monotonic()
    cluster = _prepare(dir, paths, log, supervisor_pid)
    try:
        _bring_up(cluster, log, t0 + timeout)
    except BaseException:
        cluster.stop(log)
        raise
    cluster.start_seconds = time.monotonic() - t0
    cluster.write_state(ready=True)
    log(f"cluster: up after {cluster.start_seconds:.1f} s (netns {cluster.netns_name})")
    return cluster


def _prepare(dir: Path | None, paths: Paths, log: Log, supervisor_pid: int | None) -> Cluster:
    """The state directory, certificates, tokens, kubeconfigs, configs, env.json."""
    temporary = dir is None
    root = Path(tempfile.mkdtemp(prefix="fedkube-cl-")) if dir is None else dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    old = load_state(root)
    if old and (old.get("pids") or old.get("netns")):
        # a crashed start left processes or host state: clean it up first
        stop_dir(root, log=log, keep_dir=True)
    for sub in ("etcd-data", "containerd", "kubelet", "pod-logs", "cni", "runc", "run"):
        path = root / sub
        if path.exists():
            _unmount_all([path], log)
            shutil.rmtree(path)
    for sub in ("logs", "pki", "kcm-certs", "sched-certs", "etcd-data", "cni/net.d", "cni/ipam"):
        (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    short_id = secrets.token_hex(4)
    name = f"fedkube-{short_id}"
    sock_dir = _sock_dir(root, short_id)
    sock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    pki = root / "pki"
    for old_file in pki.iterdir():
        old_file.unlink()
    k8s.make_pki(pki, extra_ips=[NODE_IP])
    _node_pki(pki)
    tokens = k8s.write_tokens(root / "tokens.csv")
    extra = {
        "node": (f"system:node:{NODE_NAME}", "system:nodes"),
        "proxy": ("system:kube-proxy", ""),
        "scheduler": ("system:kube-scheduler", ""),
        "controller-manager": ("system:kube-controller-manager", ""),
    }
    extra_tokens = {}
    with open(root / "tokens.csv", "a") as f:
        for key, (user, group) in extra.items():
            tok = secrets.token_urlsafe(32)
            extra_tokens[key] = tok
            groups = f',"{group}"' if group else ""
            f.write(f"{tok},{user},uid-{key}{groups}\n")
    ca = (pki / "ca.pem").read_bytes()
    in_ns = f"https://{NODE_IP}:{APISERVER_PORT}"
    k8s.write_kubeconfig(root / "kubeconfig-netns", in_ns, ca, tokens)
    for key, (user, _) in extra.items():
        k8s.write_kubeconfig(root / f"{key}.kubeconfig", in_ns, ca, {user: extra_tokens[key]})
    (root / "resolv.conf").write_text("")
    host_dirs = [d for d in HOST_DIRS if not Path(d).exists()]
    if old and old.get("host_dirs_created"):
        host_dirs = sorted(set(host_dirs) | set(old["host_dirs_created"]))
    state: dict[str, Any] = {
        "dir": str(root),
        "host_dirs_created": host_dirs,
        "remove_dir": temporary,
        "netns": name,
        "node_ip": NODE_IP,
        "node_name": NODE_NAME,
        "cgroup_root": f"/{name}",
        "sock_dir": str(sock_dir),
        "containerd_sock": str(sock_dir / "containerd.sock"),
        "cni_network": name,
        "k8s_bin": str(paths.k8s_bin),
        "node_bin": str(paths.node_bin),
        "image_archives": {k: str(v) for k, v in paths.images.items()},
        "kubeconfig": str(root / "kubeconfig"),
        "kubeconfig_netns": str(root / "kubeconfig-netns"),
        "ca_file": str(pki / "ca.pem"),
        "tokens": tokens,
        "k8s_version": K8S_VERSION,
        "supervisor_pid": supervisor_pid,
        "ready": False,
    }
    _write_json(root / ENV_FILE, state)  # from here on, stop_dir can undo everything
    cluster = Cluster(
        dir=root,
        netns_name=name,
        paths=paths,
        kubeconfig=root / "kubeconfig",
        kubeconfig_netns=root / "kubeconfig-netns",
        server="",
        ca_file=pki / "ca.pem",
        admin_token=tokens[k8s.ADMIN_USER],
        tester_token=tokens[k8s.TESTER_USER],
        owned=True,
        remove_dir=temporary,
        state=state,
    )
    return cluster


def _bring_up(c: Cluster, log: Log, deadline: float) -> None:
    root, state = c.dir, c.state
    name = c.netns_name
    t = Timer(log, f"network namespace {name} ready")
    netns.create(name)
    netns.ip(name, "link", "add", BRIDGE, "type", "bridge")
    netns.ip(name, "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
    netns.ip(name, "link", "set", BRIDGE, "up")
    # the node itself reaches ClusterIPs (kube-proxy's OUTPUT DNAT needs a route)
    netns.ip(name, "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP)
    _netns_sysctls(c)
    save_sysctls(root)
    _make_cgroup_root(state["cgroup_root"])
    t.done()

    # the host-side forwarder to the apiserver (dials lazily)
    c.server = f"https://127.0.0.1:{c.forward(NODE_IP, APISERVER_PORT)}"
    state["server"] = c.server
    state["apiserver_forward_port"] = int(c.server.rsplit(":", 1)[1])
    tokens = state["tokens"]
    k8s.write_kubeconfig(c.kubeconfig, c.server, c.ca_file.read_bytes(), tokens)
    env = {
        "PATH": f"{c.paths.node_bin}:{c.paths.k8s_bin}:/usr/local/sbin:/usr/local/bin:"
        "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(root),
        "LANG": "C.UTF-8",
    }

    def launch(binary: str, args: list[str], directory: Path) -> ChildProcess:
        proc = ChildProcess(
            binary,
            netns.nsenter_argv(name, [str(directory / binary), *args]),
            root / "logs" / f"{binary}.log",
            cwd=root,
            env=env,
            hint=HINT,
            stop_grace=STOP_GRACE,
            tail_lines=TAIL_LINES,
            dies_with_parent=True,
        )
        c.procs.append(proc)
        proc.start()
        c.write_state()
        return proc

    def wait(proc: ChildProcess, what: str, probe: Callable[[], Any]) -> None:
        def alive_and() -> Any:
            c.check_alive()
            return probe()

        proc.wait_ready(alive_and, max(0.0, deadline - time.monotonic()), what=what, interval=0.2)

    def local_ok(port: int, path: str, tls: bool = False) -> bool:
        status, _ = _http_via(c.dial, "127.0.0.1", port, path, tls=_insecure_tls() if tls else None)
        return status == 200

    k8s_bin, node_bin = c.paths.k8s_bin, c.paths.node_bin
    pki = root / "pki"

    # etcd and containerd first (independent), images imported meanwhile
    t = Timer(log, "etcd and containerd ready")
    etcd = launch(
        "etcd",
        [
            "--name=fedkube",
            f"--data-dir={root / 'etcd-data'}",
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=fedkube=http://127.0.0.1:2380",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync",
            "--log-level=warn",
            "--logger=zap",
        ],
        k8s_bin,
    )
    (root / "containerd" / "config.toml").parent.mkdir(parents=True, exist_ok=True)
    (root / "containerd" / "config.toml").write_text(
        _containerd_config(root, Path(state["sock_dir"]), PAUSE_IMAGE)
    )
    _write_json(root / "cni" / "net.d" / "10-fedkube.conflist", _cni_config(root, name))
    containerd = launch(
        "containerd", ["--config", str(root / "containerd" / "config.toml")], node_bin
    )
    sock = state["containerd_sock"]
    ctr = [str(node_bin / "ctr"), "--address", sock, "--namespace", "k8s.io"]
    wait(
        containerd,
        "serve its socket",
        lambda: subprocess.run([*ctr, "version"], capture_output=True, timeout=5).returncode == 0,
    )
    imported: dict[str, Any] = {}
    importer = threading.Thread(
        target=_import_images, args=(c, ctr, imported, log), name="image-import", daemon=True
    )
    importer.start()
    wait(etcd, "answer /health", lambda: local_ok(2379, "/health"))
    t.done()

    t = Timer(log, "control plane ready")
    apiserver = launch(
        "kube-apiserver",
        [
            "--etcd-servers=http://127.0.0.1:2379",
            f"--secure-port={APISERVER_PORT}",
            f"--bind-address={NODE_IP}",
            f"--advertise-address={NODE_IP}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--token-auth-file={root / 'tokens.csv'}",
            f"--client-ca-file={pki / 'ca.pem'}",
            f"--service-account-issuer={k8s.SERVICE_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--tls-cert-file={pki / 'server.pem'}",
            f"--tls-private-key-file={pki / 'server.key'}",
            f"--kubelet-client-certificate={pki / 'kubelet-client.pem'}",
            f"--kubelet-client-key={pki / 'kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--cert-dir={pki}",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ],
        k8s_bin,
    )
    wait(apiserver, "answer /readyz", lambda: c.request("GET", "/readyz", timeout=3)[0] == 200)
    kcm = launch(
        "kube-controller-manager",
        [
            f"--kubeconfig={root / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={root / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={root / 'controller-manager.kubeconfig'}",
            "--authentication-skip-lookup=true",
            "--bind-address=127.0.0.1",
            "--secure-port=10257",
            f"--cert-dir={root / 'kcm-certs'}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            "--controllers=*",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.pem'}",
            f"--cluster-cidr={CLUSTER_CIDR}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--cluster-name=fedkube-test",
            "--profiling=false",
            "--v=1",
        ],
        k8s_bin,
    )
    scheduler = launch(
        "kube-scheduler",
        [
            f"--kubeconfig={root / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={root / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={root / 'scheduler.kubeconfig'}",
            "--authentication-skip-lookup=true",
            "--bind-address=127.0.0.1",
            "--secure-port=10259",
            f"--cert-dir={root / 'sched-certs'}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ],
        k8s_bin,
    )
    wait(kcm, "answer /healthz", lambda: local_ok(10257, "/healthz", tls=True))
    wait(scheduler, "answer /healthz", lambda: local_ok(10259, "/healthz", tls=True))
    t.done()

    t = Timer(log, "node Ready")
    (root / "kubelet").mkdir(exist_ok=True)
    _write_json(
        root / "kubelet" / "config.json",
        _kubelet_config(root, Path(sock), state["cgroup_root"]),
    )
    kubelet = launch(
        "kubelet",
        [
            f"--config={root / 'kubelet' / 'config.json'}",
            f"--kubeconfig={root / 'node.kubeconfig'}",
            f"--root-dir={root / 'kubelet'}",
            f"--cert-dir={root / 'kubelet' / 'pki'}",
            f"--node-ip={NODE_IP}",
            f"--hostname-override={NODE_NAME}",
            "--v=1",
        ],
        k8s_bin,
    )
    _write_json(root / "kube-proxy.json", _kube_proxy_config(root / "proxy.kubeconfig"))
    proxy = launch("kube-proxy", [f"--config={root / 'kube-proxy.json'}", "--v=1"], k8s_bin)
    wait(kubelet, "register a Ready node", c.node_ready)
    t.done()
    wait(proxy, "answer /healthz", lambda: local_ok(10256, "/healthz"))

    t = Timer(log, "CoreDNS Ready")

    def essential_in() -> bool:
        if "error" in imported:
            raise imported["error"]
        return bool(imported.get("essential"))

    wait(containerd, "import the pause and CoreDNS images", essential_in)
    _deploy_coredns(c)

    def coredns_ready() -> bool:
        status, d = c.request("GET", "/apis/apps/v1/namespaces/kube-system/deployments/coredns")
        return status == 200 and d.get("status", {}).get("availableReplicas", 0) >= 1

    wait(kubelet, "run CoreDNS (Deployment kube-system/coredns available)", coredns_ready)
    t.done()
    t = Timer(log, "all images imported (waited)")
    importer.join(max(0.0, deadline - time.monotonic()))
    if importer.is_alive():
        raise ServiceUnavailable("importing the images took too long", HINT)
    if "error" in imported:
        raise imported["error"]
    t.done()


def _netns_sysctls(c: Cluster) -> None:
    """ip_forward and bridge-nf-call-iptables, inside the namespace only."""
    script = (
        "echo 1 > /proc/sys/net/ipv4/ip_forward && "
        "{ [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter; } && "
        "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables"
    )
    proc = subprocess.run(
        netns.nsenter_argv(c.netns_name, ["sh", "-c", script]), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise ServiceUnavailable(f"cannot set the namespace's sysctls: {proc.stderr}", HINT)


def _import_images(c: Cluster, ctr: list[str], out: dict[str, Any], log: Log) -> None:
    """ctr images import of every cached image but the base: pause and CoreDNS first
    (`out["essential"]` is set once they are in), then the others, largest first,
    IMPORT_WORKERS at a time. An error goes into `out["error"]`."""
    essential = [i for i in (PAUSE_IMAGE, COREDNS_IMAGE) if i in c.paths.images]
    rest = sorted(
        (i for i in c.paths.images if i not in essential and i != BASE_IMAGE),
        key=lambda i: -c.paths.images[i].stat().st_size,
    )
    t = Timer(log, "images imported")
    lock = threading.Lock()

    def one(image: str) -> None:
        tar = c.paths.images[image]
        t1 = time.monotonic()
        proc = subprocess.run([*ctr, "images", "import", str(tar)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ServiceUnavailable(f"ctr images import {tar} failed: {proc.stderr.strip()}", HINT)
        with lock:
            c.images.append(image)
        size = tar.stat().st_size >> 20
        log(f"cluster: imported {image} ({size} MiB) in {time.monotonic() - t1:.1f} s")

    def worker(queue: list[str]) -> None:
        try:
            while True:
                with lock:
                    if not queue or "error" in out:
                        return
                    image = queue.pop(0)
                one(image)
        except BaseException as exc:
            out["error"] = exc

    try:
        for image in essential:
            one(image)
        out["essential"] = True
        queue = list(rest)
        workers = [
            threading.Thread(target=worker, args=(queue,), daemon=True)
            for _ in range(IMPORT_WORKERS)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if "error" not in out:
            t.done(f" ({len(c.images)})")
    except BaseException as exc:
        out["error"] = exc


def _apply(c: Cluster, objects: Sequence[dict[str, Any]]) -> None:
    """Server-side apply of each object (admin)."""
    for obj in objects:
        kind, meta = obj["kind"], obj["metadata"]
        api = obj["apiVersion"]
        base = f"/api/{api}" if "/" not in api else f"/apis/{api}"
        plural = {
            "ServiceAccount": "serviceaccounts",
            "ClusterRole": "clusterroles",
            "ClusterRoleBinding": "clusterrolebindings",
            "ConfigMap": "configmaps",
            "Deployment": "deployments",
            "Service": "services",
        }[kind]
        ns = f"/namespaces/{meta['namespace']}" if "namespace" in meta else ""
        path = f"{base}{ns}/{plural}/{meta['name']}?fieldManager=fedkube-cluster&force=true"
        status, answer = k8s.api_request(
            c.server + path,
            c.admin_token,
            c.ssl_context(),
            "PATCH",
            obj,
            content_type="application/apply-patch+yaml",
        )
        if status >= 300:
            raise ServiceUnavailable(
                f"cannot apply {kind} {meta['name']}: {status} {str(answer)[:500]}", HINT
            )


COREFILE = """\
.:53 {
    errors
    health {
        lameduck 1s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    cache 30
    loadbalance
    reload
}
"""


def coredns_objects() -> list[dict[str, Any]]:
    ns = "kube-system"
    labels = {"k8s-app": "kube-dns"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "coredns", "namespace": ns},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": ns}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": ns},
            "data": {"Corefile": COREFILE},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": ns, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "containers": [
                            {
                                "name": "coredns",
                                "image": COREDNS_IMAGE,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": 8181},
                                    "periodSeconds": 1,
                                },
                                "livenessProbe": {
                                    "httpGet": {"path": "/health", "port": 8080},
                                    "periodSeconds": 10,
                                    "failureThreshold": 5,
                                },
                                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                                "securityContext": {
                                    "runAsNonRoot": True,
                                    "runAsUser": 65532,
                                    "readOnlyRootFilesystem": True,
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": ns, "labels": labels},
            "spec": {
                "selector": labels,
                "clusterIP": DNS_IP,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ],
            },
        },
    ]


def _deploy_coredns(c: Cluster) -> None:
    _apply(c, coredns_objects())


# ---- stopping a cluster by its directory


def _pid_is_up(pid: int) -> bool:
    """`pid` is a running `cluster.py up` (the supervisor)."""
    args = _pid_cmdline(pid)
    return not is_zombie(pid) and any(a.endswith(UP_SCRIPT) for a in args) and "up" in args


def stop_dir(dir: Path, *, log: Log = log_stderr, keep_dir: bool = False) -> list[str]:
    """Stop the cluster of DIR/env.json and undo its host state (idempotent; works
    after a crash of `up`). Returns what was stopped."""
    dir = dir.resolve()
    state = load_state(dir)
    if state is None:
        return []
    t = Timer(log, "down")
    stopped: list[str] = []
    sup = state.get("supervisor_pid")
    if sup and sup != os.getpid() and _pid_is_up(sup):
        os.kill(sup, signal.SIGTERM)
        end = time.monotonic() + 12 * STOP_GRACE
        while time.monotonic() < end and _pid_is_up(sup):
            time.sleep(0.1)
        if _pid_is_up(sup):
            os.kill(sup, signal.SIGKILL)
        stopped.append(f"{UP_SCRIPT} up")
        state = load_state(dir) or state
    pids: dict[str, int] = {k: v for k, v in (state.get("pids") or {}).items() if v}
    if pids.get("kubelet") and pid_is(pids["kubelet"], "kubelet"):
        stop_pids([pids["kubelet"]], STOP_GRACE)
        stopped.append("kubelet")
    _kill_pods(state, log)
    live = [(n, p) for n, p in reversed(list(pids.items())) if n != "kubelet" and pid_is(p, n)]
    stop_pids([p for _, p in live], STOP_GRACE)
    stopped += [n for n, _ in live]
    if keep_dir:
        state = {**state, "remove_dir": False}
    _cleanup_host(state, log)
    if not state.get("remove_dir") and (dir / ENV_FILE).exists():
        state = load_state(dir) or state
        state.update(pids={}, ready=False, netns=None, stopped=True)
        _write_json(dir / ENV_FILE, state)
    t.done()
    return stopped


# ---- resources


def rss_mib(state: Mapping[str, Any]) -> dict[str, float]:
    """Resident memory of each process of the cluster (and the shims), in MiB."""
    out: dict[str, float] = {}
    for name, pid in (state.get("pids") or {}).items():
        out[name] = _rss(pid)
    sock = state.get("containerd_sock")
    if sock:
        out["shims"] = sum(_rss(p) for p in _shims(sock))
    return out


def _rss(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
