"""A test "kubelet": runs the Pods of one namespace as local processes.

There is no container runtime on the test machines, so end-to-end tests let
the real controllers (kube-controller-manager: Deployment -> ReplicaSet ->
Pod, StatefulSet -> Pod, EndpointSlices, garbage collection) do their work and
let this runner play the node: it binds the namespace's Pods to a Node of its
own, starts each container's command as a process, and reports Pod status
back through the status subresource exactly as a kubelet would. The manifests
the operator writes are therefore the ones that run, and Deployment /
StatefulSet / EndpointSlice status comes from the real controllers.

    runner = PodRunner(kubeconfig, namespace, workdir=tmp_path / "pods")
    runner.start()
    ...  # kubectl apply a Deployment; wait for readyReplicas
    runner.stop()

What the runner does, per Pod of the namespace:

- **Node**: registers a Node ``podrunner-<namespace>`` (Ready, renewed through
  a Lease in ``kube-node-lease`` like a kubelet, so the node lifecycle
  controller never marks it NotReady) and binds every unscheduled Pod of the
  namespace to it (``pods/binding``); it deletes the Node on stop(). (The
  EndpointSlice controller only publishes Pods whose Node exists.)
- **Pod IP**: a distinct address from 10.244.0.0/16, added to the loopback
  interface as a /32 (``ip addr add``; we are root) and removed when the Pod
  ends. Not 127.0.2.x: Linux would route those to ``lo`` without setup, but
  the EndpointSlice API rejects loopback addresses, so Services would never
  get endpoints. Addresses are locked with flock(2) under
  ``$TMPDIR/fedkube-podrunner-ips`` so concurrent runners (other
  namespaces, other test sessions) never share one; addresses left on ``lo``
  by a crashed run are removed at start. The Node gets one too: its
  InternalIP and every Pod's hostIP (``hostNetwork`` Pods use it as their
  IP).
- **Env**: ``env`` (``value`` with ``$(VAR)`` expansion; ``valueFrom``
  ``configMapKeyRef``, ``secretKeyRef`` (``optional`` honoured), ``fieldRef``
  metadata.name/namespace/uid/labels['k']/annotations['k'], spec.nodeName,
  spec.serviceAccountName, status.podIP(s), status.hostIP(s),
  ``resourceFieldRef``) and ``envFrom`` (with ``prefix``), resolved at every
  container start. A missing ConfigMap, Secret or key keeps the container
  waiting with reason ``CreateContainerConfigError`` until it appears.
  Added to every container: ``HOSTNAME`` (the Pod's hostname), ``HOME`` (the
  Pod directory), ``PYTHONUNBUFFERED=1`` (timely logs; a container's own env
  wins), ``GRPC_DNS_RESOLVER=native`` (gRPC's c-ares resolver misreads hosts
  files that give a headless Service several addresses; test processes on
  the host that dial pod names need it too), ``PATH`` (the venv's bin first)
  and ``FEDKUBE_BIND_HOST=<pod IP>``; then ``env_overrides`` on top of everything.
- **Volumes**: materialised once per Pod under ``<workdir>/<pod>-<uid>/volumes/
  <volume>``: ``configMap`` and ``secret`` (keys -> files; ``items``,
  ``defaultMode``, ``optional``), ``emptyDir``, ``downwardAPI``, ``projected``
  (configMap, secret, downwardAPI, serviceAccountToken through the
  TokenRequest API), ``hostPath`` (the host path itself) and
  ``persistentVolumeClaim`` (``<workdir>/pvc/<claim>``, kept across Pods, so
  a StatefulSet's recreated Pod finds its data). Other kinds become an empty
  directory (logged).
- **Command**: ``command`` + ``args`` with Kubernetes ``$(VAR)`` expansion
  (``$$`` escapes; unknown references stay). ``command[0] == "fedkube"``
  runs the ``fedkube`` executable next to this Python (the venv); other names
  resolve on ``PATH`` (venv bin first, so ``python`` is the venv's). Without
  ``command`` the image's entrypoint is unknown: ``image_entrypoints`` maps an
  image name (without tag) to it; images named ``.../fedkube`` default to
  ``["fedkube"]``. Processes run in their own session (killed as a group),
  cwd the Pod directory (or the mapped ``workingDir`` when that lies in a
  mount), stdout+stderr appended to ``<pod dir>/<container>.log``, and die
  with the runner (PR_SET_PDEATHSIG) if it is killed.
- **Probes** (readiness, liveness, startup): ``httpGet`` (HTTP/HTTPS,
  headers; 200-399 passes), ``tcpSocket``, ``exec`` (with the container's
  env) and ``grpc`` (grpc.health.v1), against the Pod IP and named or
  numbered ports, with initialDelaySeconds, timeoutSeconds, success/failure
  thresholds. No readiness probe: ready once started (startup probe passed).
- **Restarts**: per ``restartPolicy``; a container that exits (or fails its
  liveness probe) is restarted with a back-off, ``restartCount`` increments,
  ``lastState.terminated`` records the exit; in back-off the state is
  ``waiting: CrashLoopBackOff``. ``Never``/``OnFailure`` Pods end
  ``Succeeded``/``Failed``. Init containers run to completion, in order,
  before the containers start.
- **Status**: phase, podIP(s), hostIP(s), startTime, conditions
  (PodReadyToStartContainers, Initialized, ContainersReady, Ready,
  PodScheduled) and containerStatuses (ready, started, restartCount, state,
  lastState), JSON-merge-patched through ``pods/status`` (with the Pod's UID,
  so a new Pod of the same name is never touched) when something changed.
- **Deletion**: a Pod with a deletionTimestamp gets SIGTERM (process group),
  then SIGKILL after its grace period, then the runner deletes it with grace
  0, as a kubelet does. A Pod that vanished (force-deleted, namespace gone)
  has its processes killed at once. stop() kills every process and deletes
  the Node but leaves the Pods in the API as they were; the pod GC
  controller deletes Pods of a vanished Node about 40 s later.
- **Service names** (a poll interval after the EndpointSlices change): the
  names below, rebuilt from the namespace's Services and EndpointSlices
  (ready endpoints only, as cluster DNS does), are written (a) for the Pods
  to ``<workdir>/hosts``, which each Pod process sees as ``/etc/hosts`` (a
  private mount namespace with that file bind-mounted over it; the host's
  own lines plus this namespace's names only), and (b) for the host -- the
  test process, local clients -- into ``/etc/hosts`` itself, in a block
  between ``# BEGIN fedkube-podrunner <ns> pid=<pid>`` and ``# END
  fedkube-podrunner <ns>``. The names: for a headless Service ``<svc>``,
  ``<svc>.<ns>``, ``<svc>.<ns>.svc`` and ``<svc>.<ns>.svc.cluster.local``
  -> every ready endpoint, and ``<host>.<svc>`` (+ the same suffixes) -> the
  endpoint with that hostname (StatefulSet Pods: ``<pod>.<svc>``); for
  a ClusterIP/NodePort/LoadBalancer Service the same Service names -> its
  first ready endpoint (by Pod name) instead of the virtual ClusterIP. The
  block is removed on stop(); blocks of the same namespace, and of runners
  whose pid is dead, are removed at start.

Deviations from a real kubelet/cluster (kept as few as the tests allow):

1. **Volume mounts are path substitutions.** A process cannot see a mount
   at ``/etc/fedkube``; instead every occurrence of a container's
   ``mountPath`` (at a path boundary: not preceded by ``[A-Za-z0-9._/-]``,
   followed by ``/``, the end, or a character outside ``[A-Za-z0-9._-]``) in
   its ``command``, ``args`` and env values (before ``$(VAR)`` expansion;
   one pass, longest mount path first) is replaced by the local directory
   (``.../volumes/<volume>[/<subPath>]``). Paths a program hard-codes or
   reads from a file are NOT rewritten. readOnly is not enforced (we are
   root); ConfigMap/Secret updates are not propagated to running Pods.
2. **Listen addresses.** Every Pod shares the host's network namespace, so
   two Pods listening on ``0.0.0.0:PORT`` would collide: ``0.0.0.0:`` in
   command, args and env values is replaced by ``<pod IP>:``, and
   ``FEDKUBE_BIND_HOST=<pod IP>`` is set for servers that bind in code.
   Container ports need no rewriting (each Pod has its own IP). A process
   that binds 0.0.0.0 or 127.0.0.1 by itself still collides with its twins.
3. **Name resolution is a hosts file, not DNS.** Pods see only their own
   namespace's names, as in a cluster. On the host, /etc/hosts is shared by
   everything on the machine: short names (``<svc>``, ``<pod>.<svc>``) of
   two namespaces with equal names (e.g. two test sessions at once) resolve
   to whichever block comes first -- use ``<svc>.<ns>.svc`` from test code.
   A ClusterIP Service resolves to ONE ready Pod (no load spreading; it
   follows readiness changes within a poll interval).
   There is no kube-proxy: names resolve to Pod IPs, so a Service is only
   reachable on its targetPort (keep ``port == targetPort``), and ClusterIPs
   (10.96.x.y) route nowhere. ExternalName Services, Pod A records
   (``1-2-3-4.<ns>.pod``), service links env vars (``<SVC>_SERVICE_HOST``)
   and ``KUBERNETES_SERVICE_HOST`` are not provided (so in-cluster config is
   never used: give processes a kubeconfig through ``env_overrides``). All
   Pods and the host share one network namespace (NetworkPolicies are
   not enforced; any process reaches any Pod).
4. **Timing.** Readiness and startup probes run every
   ``min(periodSeconds, probe_period_cap)`` (1 s) so tests need not wait 10 s
   per probe; liveness probes keep their real timing. The restart back-off
   starts at 0.5 s and doubles to 10 s (kubelet: 10 s to 5 min), reset after
   10 s of running. Termination grace is capped at 10 s.
5. **Not modelled**: images (ignored), resources/limits, nodeSelector,
   affinity, taints and tolerations (every Pod of the namespace lands on the
   runner's Node), securityContext, lifecycle hooks, native sidecars
   (``initContainers`` with ``restartPolicy: Always`` run like ordinary init
   containers), ephemeral containers, readiness gates, activeDeadlineSeconds.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime as dt
import fcntl
import http.client
import ipaddress
import logging
import math
import os
import random
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedkube.process import die_with_parent
from tests.support.k8s import ApiError, KubeAPI, kube_path

HOSTS_FILE = Path("/etc/hosts")
POD_NETWORK = "10.244.0.0/16"
VENV_BIN = Path(sys.executable).parent
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
K8S_VERSION = "v1.34.4"


_libc: Any
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None
CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18


def _pod_preexec(hosts: Path | None, target: Path) -> Any:
    """preexec_fn of a Pod's processes: die with the runner and, with `hosts`, see
    that file as `target` (/etc/hosts) in a private mount namespace."""
    src, dst = (bytes(hosts), bytes(target)) if hosts is not None else (b"", b"")

    def preexec() -> None:
        # a crashed test run leaves no orphans (a worker thread ends only after
        # killing its processes anyway)
        die_with_parent()
        if not src:
            return
        if _libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        if _libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
        if _libc.mount(src, dst, None, MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), f"mount --bind {src!r} {dst!r}")

    return preexec


class ConfigError(Exception):
    """A container cannot be configured yet (a missing ConfigMap, Secret, key)."""


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- Kubernetes string handling


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion (command, args, env values): ``$$`` is a
    literal ``$``; an unknown or unterminated reference stays as written."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "$" and i + 1 < n:
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env.get(name, f"$({name})"))
                    i = end + 1
                    continue
                out.append("$(")
                i += 2
                continue
            out.append("$" + nxt)
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


class Rewriter:
    """Deviations 1 and 2: mount paths -> local directories, ``0.0.0.0:`` -> pod IP."""

    def __init__(self, mounts: Mapping[str, Path], pod_ip: str) -> None:
        self.mounts = {m.rstrip("/") or "/": str(p) for m, p in mounts.items()}
        self.pod_ip = pod_ip
        keys = sorted((m for m in self.mounts if m != "/"), key=len, reverse=True)
        self.pattern = (
            re.compile(
                r"(?<![A-Za-z0-9._/-])("
                + "|".join(re.escape(k) for k in keys)
                + r")(?![A-Za-z0-9._-])"
            )
            if keys
            else None
        )

    def __call__(self, text: str) -> str:
        if self.pod_ip != "0.0.0.0":
            text = text.replace("0.0.0.0:", f"{self.pod_ip}:")
        if self.pattern is not None:
            text = self.pattern.sub(lambda m: self.mounts[m.group(1)], text)
        return text

    def path(self, container_path: str) -> str | None:
        """The local path for a container path inside a mount, else None."""
        best = None
        for m in self.mounts:
            inside = container_path == m or container_path.startswith(m.rstrip("/") + "/")
            if inside and (best is None or len(m) > len(best)):
                best = m
        if best is None:
            return None
        return self.mounts[best] + container_path[len(best.rstrip("/")) :]


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "K": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(text: str) -> float:
    m = _QUANTITY.match(str(text).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"unsupported quantity {text!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


# ---- /etc/hosts


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_BLOCK = re.compile(
    r"^# BEGIN fedkube-podrunner (?P<ns>\S+)(?: pid=(?P<pid>\d+))?\n.*?"
    r"^# END fedkube-podrunner (?P=ns)\n?",
    re.M | re.S,
)


@contextlib.contextmanager
def hosts_lock(hosts_file: Path) -> Iterator[None]:
    lock = Path(tempfile.gettempdir()) / f"fedkube-podrunner-{hosts_file.name}.lock"
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_hosts(hosts_file: Path, text: str) -> None:
    """Rewrite the hosts file in place, from the first changed byte on. Never by
    rename: a rename over /etc/hosts would detach the Pods' bind mounts of their
    own hosts file (Linux drops mounts on a dentry renamed over in another mount
    namespace). The runner's blocks sit at the end, after the host's lines."""
    new = text.encode()
    fd = os.open(hosts_file, os.O_RDWR)
    try:
        old = os.pread(fd, max(len(new), os.fstat(fd).st_size) + 1, 0)
        same = 0
        for a, b in zip(old, new, strict=False):
            if a != b:
                break
            same += 1
        os.pwrite(fd, new[same:], same)
        os.ftruncate(fd, len(new))
    finally:
        os.close(fd)


def set_hosts_block(
    namespace: str,
    lines: list[str] | None,
    *,
    hosts_file: Path = HOSTS_FILE,
    clean_stale: bool = False,
) -> None:
    """Replace this namespace's block in the hosts file with `lines` (None removes
    it). With `clean_stale`, also drop blocks whose runner pid is dead."""
    with hosts_lock(hosts_file):
        text = hosts_file.read_text()

        def keep(m: re.Match[str]) -> str:
            if m.group("ns") == namespace:
                return ""
            pid = m.group("pid")
            if clean_stale and pid and not _pid_alive(int(pid)):
                return ""
            return m.group(0)

        new = _BLOCK.sub(keep, text)
        if lines is not None:
            if new and not new.endswith("\n"):
                new += "\n"
            new += f"# BEGIN fedkube-podrunner {namespace} pid={os.getpid()}\n"
            new += "".join(line + "\n" for line in lines)
            new += f"# END fedkube-podrunner {namespace}\n"
        if new != text:
            write_hosts(hosts_file, new)


# ---- pod IPs


class IPAllocator:
    """Pod (and node) IPs: addresses of `network` added to the loopback interface
    (``ip addr add A/32 dev lo``; needs root or CAP_NET_ADMIN), removed again on
    release. Exclusive across processes through flock(2) on one file per address
    under ``$TMPDIR/fedkube-podrunner-ips``; a file also lists the pids that used
    the address, so an address a crashed run's orphans still hold is skipped. A
    network inside 127.0.0.0/8 needs no interface change (but the EndpointSlice
    API rejects loopback addresses, so Services get no endpoints)."""

    def __init__(self, network: str = POD_NETWORK) -> None:
        self.network = ipaddress.IPv4Network(network)
        self.on_lo = not self.network.subnet_of(ipaddress.IPv4Network("127.0.0.0/8"))
        self.dir = Path(tempfile.gettempdir()) / "fedkube-podrunner-ips"
        self.dir.mkdir(exist_ok=True)
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def _ip_cmd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)

    def _lock_free(self, ip: str) -> int | None:
        """The locked fd of `ip`'s lock file when nobody (no live pid) uses it."""
        fd = os.open(self.dir / ip, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        pids = os.pread(fd, 4096, 0).decode(errors="replace").split()
        if any(p.isdigit() and _pid_alive(int(p)) for p in pids):
            os.close(fd)  # orphans of a crashed run still use it
            return None
        os.ftruncate(fd, 0)
        return fd

    def allocate(self) -> str:
        size = self.network.num_addresses
        base = int(self.network.network_address)
        with self._lock:
            for _ in range(1000):
                ip = str(ipaddress.ip_address(base + random.randrange(1, size - 1)))
                if ip in self._held or ip.endswith((".0", ".255")):
                    continue
                fd = self._lock_free(ip)
                if fd is None:
                    continue
                if self.on_lo:
                    proc = self._ip_cmd("addr", "replace", f"{ip}/32", "dev", "lo")
                    if proc.returncode != 0:
                        os.close(fd)
                        raise RuntimeError(
                            f"cannot add the pod IP {ip} to the loopback interface (the pod "
                            f"runner needs root or CAP_NET_ADMIN): {proc.stderr.strip()}"
                        )
                self._held[ip] = fd
                return ip
        raise RuntimeError(f"no free pod IP found in {self.network}")

    def record_pids(self, ip: str, pids: list[int]) -> None:
        fd = self._held.get(ip)
        if fd is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, " ".join(map(str, pids)).encode(), 0)

    def release(self, ip: str) -> None:
        with self._lock:
            fd = self._held.pop(ip, None)
            if fd is not None:
                if self.on_lo:
                    self._ip_cmd("addr", "del", f"{ip}/32", "dev", "lo")
                os.ftruncate(fd, 0)
                os.close(fd)

    def sweep(self) -> list[str]:
        """Remove addresses of the network from lo that no live runner holds (left
        by a crashed run); returns them."""
        if not self.on_lo:
            return []
        out = self._ip_cmd("-o", "-4", "addr", "show", "dev", "lo").stdout
        removed = []
        for m in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+)/", out):
            ip = m.group(1)
            if ipaddress.ip_address(ip) not in self.network or ip in self._held:
                continue
            with self._lock:
                fd = self._lock_free(ip)
                if fd is None:
                    continue
                try:
                    self._ip_cmd("addr", "del", f"{ip}/32", "dev", "lo")
                    removed.append(ip)
                finally:
                    os.close(fd)
        return removed


# ---- probes


def _grpc_health(host: str, port: int, service: str, timeout: float) -> bool:
    import grpc

    req = b"" if not service else b"\x0a" + bytes([len(service)]) + service.encode()
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        call = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        resp: bytes = call(req, timeout=timeout)
    return resp == b"\x08\x01"  # status: SERVING


@dataclass
class ProbeState:
    kind: str  #: readiness, liveness, startup
    spec: dict[str, Any]
    period: float
    next_at: float
    successes: int = 0
    failures: int = 0
    result: bool = False
    last_error: str = ""

    @property
    def success_threshold(self) -> int:
        return int(self.spec.get("successThreshold") or 1)

    @property
    def failure_threshold(self) -> int:
        return int(self.spec.get("failureThreshold") or 3)

    def record(self, ok: bool, error: str = "") -> None:
        self.last_error = error
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.success_threshold:
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.failure_threshold:
                self.result = False


# ---- containers


@dataclass
class Container:
    """One container of a Pod and the state a kubelet keeps for it."""

    spec: dict[str, Any]
    init: bool = False
    proc: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    started_at: str | None = None
    started_mono: float = 0.0
    restart_count: int = 0
    runs: int = 0
    last_terminated: dict[str, Any] | None = None
    terminated: dict[str, Any] | None = None  #: final state (not restarting)
    waiting: tuple[str, str] = ("ContainerCreating", "")
    next_start: float = 0.0
    backoff: float = 0.0
    probes: dict[str, ProbeState] = field(default_factory=dict)
    startup_done: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def ready(self) -> bool:
        if not self.running or not self.startup_done:
            return False
        probe = self.probes.get("readiness")
        return True if probe is None else probe.result

    def status(self) -> dict[str, Any]:
        image = str(self.spec.get("image", ""))
        st: dict[str, Any] = {
            "name": self.name,
            "image": image,
            "imageID": "",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.running and self.startup_done,
        }
        if self.proc is not None:
            st["containerID"] = f"podrunner://{self.proc.pid}"
        if self.running:
            st["state"] = {"running": {"startedAt": self.started_at}}
        elif self.terminated is not None:
            st["state"] = {"terminated": self.terminated}
        else:
            reason, message = self.waiting
            st["state"] = {
                "waiting": {"reason": reason, **({"message": message} if message else {})}
            }
        st["lastState"] = {"terminated": self.last_terminated} if self.last_terminated else {}
        return st


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def terminate(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM each process group, SIGKILL what is left after `grace` seconds."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        _kill_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in live):
        time.sleep(0.05)
    for p in live:
        _kill_group(p, signal.SIGKILL)  # also stray children of an exited leader
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


# ---- one pod


class PodWorker(threading.Thread):
    """Runs one Pod (by UID) until it is deleted or the runner stops."""

    TICK = 0.1

    def __init__(self, runner: PodRunner, pod: dict[str, Any]) -> None:
        md = pod["metadata"]
        super().__init__(name=f"pod-{md['name']}", daemon=True)
        self.runner = runner
        self.pod = pod
        self.uid: str = md["uid"]
        self.name: str = md["name"]
        self.ns: str = md["namespace"]
        self.dir = runner.workdir / f"{self.name}-{self.uid[:8]}"
        self.ip: str | None = None
        self.start_time = now_rfc3339()
        spec = pod["spec"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.init_containers = [Container(c, init=True) for c in spec.get("initContainers", [])]
        self.containers = [Container(c) for c in spec.get("containers", [])]
        self.volumes: dict[str, Path] | None = None
        self.volume_error = ""
        self.phase = "Pending"
        self.conditions: dict[str, tuple[str, str]] = {}
        self.reasons: dict[str, str] = {}
        self.last_status: dict[str, Any] | None = None
        self.report_error = ""
        self._gone = threading.Event()
        self.done = threading.Event()
        self.log = runner.log

    # -- called by the runner's loop
    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod

    def gone(self) -> None:
        self._gone.set()

    # -- helpers for tests
    def container(self, name: str | None = None) -> Container:
        for c in self.containers + self.init_containers:
            if name is None or c.name == name:
                return c
        raise KeyError(name)

    def log_path(self, container: str | None = None) -> Path:
        return self.dir / f"{self.container(container).name}.log"

    # -- the loop
    def run(self) -> None:
        try:
            self._run()
        except Exception:
            self.log.exception("pod %s: worker failed", self.name)
            self.runner.errors.append(f"pod {self.name}: {traceback.format_exc()}")
        finally:
            terminate([c.proc for c in self.all_containers if c.proc is not None], 2.0)
            for c in self.all_containers:
                self._close_log(c)
            if self.ip is not None and not self.host_network:
                self.runner.ips.release(self.ip)
            self.done.set()

    @property
    def all_containers(self) -> list[Container]:
        return self.init_containers + self.containers

    @property
    def host_network(self) -> bool:
        return bool(self.pod["spec"].get("hostNetwork"))

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ip = self.runner.host_ip if self.host_network else self.runner.ips.allocate()
        self.log.info("pod %s (uid %s): ip %s, dir %s", self.name, self.uid, self.ip, self.dir)
        self._set_condition("PodScheduled", True)
        self._set_condition("PodReadyToStartContainers", True)
        while not self.runner.stopping.is_set():
            if self._gone.is_set():
                self.log.info("pod %s: gone from the API; killing its processes", self.name)
                return
            if self.pod["metadata"].get("deletionTimestamp"):
                self._terminate_for_deletion()
                return
            if self.phase not in ("Succeeded", "Failed"):
                self._step()
            if not self._report():
                return
            self.runner.stopping.wait(self.TICK)

    def _step(self) -> None:
        if self.volumes is None:
            try:
                self.volumes = self.runner.materialize_volumes(self)
                self.volume_error = ""
            except (ConfigError, ApiError, OSError) as exc:  # missing source, API hiccup
                if str(exc) != self.volume_error:
                    self.log.warning("pod %s: volumes: %s", self.name, exc)
                self.volume_error = str(exc)
                for c in self.all_containers:
                    c.waiting = ("ContainerCreating", f"volumes: {exc}")
                return
        # init containers, in order, each to a successful exit
        for c in self.init_containers:
            if c.terminated is not None and c.terminated.get("exitCode") == 0:
                continue
            self._drive(c)
            self._set_condition("Initialized", False, "ContainersNotInitialized")
            return
        self._set_condition("Initialized", True)
        for c in self.containers:
            self._drive(c)
        ran = any(c.runs for c in self.containers)
        finals = [c.terminated for c in self.containers]
        if finals and all(t is not None for t in finals):
            self.phase = (
                "Succeeded" if all(t and t.get("exitCode") == 0 for t in finals) else "Failed"
            )
        elif ran:
            self.phase = "Running"
        ready = bool(self.containers) and all(c.ready for c in self.containers)
        self._set_condition("ContainersReady", ready, "" if ready else "ContainersNotReady")
        self._set_condition("Ready", ready, "" if ready else "ContainersNotReady")

    def _drive(self, c: Container) -> None:
        """Start, watch, probe and restart one container."""
        now = time.monotonic()
        if c.proc is not None and c.proc.poll() is not None:
            self._on_exit(c, now)
        if c.terminated is not None:
            return
        if c.proc is None and now >= c.next_start:
            self._start_container(c)
            return
        if c.running:
            self._probe(c, now)

    def _on_exit(self, c: Container, now: float) -> None:
        assert c.proc is not None
        code = c.proc.returncode
        exit_code = code if code >= 0 else 128 - code
        term = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": c.started_at,
            "finishedAt": now_rfc3339(),
            "containerID": f"podrunner://{c.proc.pid}",
        }
        if code < 0:
            term["signal"] = -code
        self.log.info("pod %s: container %s exited with %s", self.name, c.name, exit_code)
        self._close_log(c)
        c.proc = None
        c.probes = {}
        c.startup_done = False
        policy = self.restart_policy
        restart = policy == "Always" or (policy == "OnFailure" and exit_code != 0)
        if c.init:
            restart = exit_code != 0 and policy != "Never"
        if not restart:
            c.terminated = term
            if c.init and exit_code != 0:
                self.phase = "Failed"
            return
        c.last_terminated = term
        base, cap = self.runner.restart_backoff
        if now - c.started_mono >= 10.0:
            c.backoff = 0.0
        c.backoff = base if c.backoff == 0 else min(cap, c.backoff * 2)
        c.next_start = now + c.backoff
        c.waiting = (
            "CrashLoopBackOff",
            f"back-off {c.backoff:.1f}s restarting failed container={c.name} "
            f"pod={self.name}_{self.ns}({self.uid})",
        )

    def _start_container(self, c: Container) -> None:
        assert self.ip is not None and self.volumes is not None
        try:
            argv, env, cwd = self.runner.container_command(self, c)
        except (ConfigError, ApiError, OSError) as exc:
            if c.waiting != ("CreateContainerConfigError", str(exc)):
                self.log.warning("pod %s: container %s: %s", self.name, c.name, exc)
            c.waiting = ("CreateContainerConfigError", str(exc))
            c.next_start = time.monotonic() + 0.5
            return
        log_path = self.dir / f"{c.name}.log"
        c.log_file = open(log_path, "ab")  # noqa: SIM115 (open while the process runs)
        c.log_file.write(f"==> [podrunner] {shlex.join(argv)}\n".encode())
        c.log_file.flush()
        try:
            c.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=c.log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self.runner.preexec(),
            )
        except OSError as exc:
            self.log.warning("pod %s: container %s cannot start: %s", self.name, c.name, exc)
            c.log_file.write(f"==> [podrunner] cannot start: {exc}\n".encode())
            self._close_log(c)
            c.proc = None
            c.waiting = ("RunContainerError", str(exc))
            c.last_terminated = {
                "exitCode": 128,
                "reason": "StartError",
                "message": str(exc),
                "startedAt": now_rfc3339(),
                "finishedAt": now_rfc3339(),
            }
            base, cap = self.runner.restart_backoff
            c.backoff = base if c.backoff == 0 else min(cap, c.backoff * 2)
            c.next_start = time.monotonic() + c.backoff
            return
        if c.runs:
            c.restart_count += 1
        c.runs += 1
        c.env = env
        c.started_at = now_rfc3339()
        c.started_mono = time.monotonic()
        c.waiting = ("", "")
        if not self.host_network:
            pids = [x.proc.pid for x in self.all_containers if x.proc is not None]
            self.runner.ips.record_pids(self.ip, pids)
        self.log.info(
            "pod %s: started container %s (pid %s, restart %d): %s",
            self.name,
            c.name,
            c.proc.pid,
            c.restart_count,
            shlex.join(argv),
        )
        cap = self.runner.probe_period_cap
        for kind in ("readiness", "liveness", "startup"):
            spec = c.spec.get(f"{kind}Probe")
            if spec and not c.init:
                period = float(spec.get("periodSeconds") or 10)
                if kind != "liveness":
                    period = min(period, cap)
                delay = float(spec.get("initialDelaySeconds") or 0)
                c.probes[kind] = ProbeState(kind, spec, period, c.started_mono + delay)
        c.startup_done = "startup" not in c.probes

    def _probe(self, c: Container, now: float) -> None:
        order = ["startup"] if not c.startup_done else ["readiness", "liveness"]
        for kind in order:
            p = c.probes.get(kind)
            if p is None or now < p.next_at:
                continue
            ok, err = self.runner.run_probe(self, c, p.spec)
            p.record(ok, err)
            p.next_at = time.monotonic() + p.period
            if kind == "startup":
                if p.result:
                    c.startup_done = True
                elif p.failures >= p.failure_threshold:
                    self._kill_for_probe(c, "startup", err)
            elif kind == "liveness" and p.failures >= p.failure_threshold:
                self._kill_for_probe(c, "liveness", err)

    def _kill_for_probe(self, c: Container, kind: str, err: str) -> None:
        self.log.info(
            "pod %s: container %s failed its %s probe (%s); restarting",
            self.name,
            c.name,
            kind,
            err,
        )
        if c.proc is not None:
            grace = self._grace(c.spec.get(f"{kind}Probe", {}).get("terminationGracePeriodSeconds"))
            terminate([c.proc], grace)

    def _grace(self, seconds: Any = None) -> float:
        if seconds is None:
            seconds = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return min(float(seconds), self.runner.termination_grace_cap)

    def _terminate_for_deletion(self) -> None:
        md = self.pod["metadata"]
        grace = self._grace(md.get("deletionGracePeriodSeconds"))
        self.log.info("pod %s: deleted; stopping containers (grace %.0fs)", self.name, grace)
        terminate([c.proc for c in self.all_containers if c.proc is not None], grace)
        try:
            self.runner.api.delete(
                kube_path("pods", self.ns, self.name),
                {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
            )
        except ApiError as exc:
            if exc.status != 409:  # 409: another Pod by that name by now
                raise

    @staticmethod
    def _close_log(c: Container) -> None:
        if c.log_file is not None:
            c.log_file.close()
            c.log_file = None

    def _set_condition(self, type_: str, status: bool, reason: str = "") -> None:
        value = "True" if status else "False"
        old = self.conditions.get(type_)
        if old is None or old[0] != value:
            self.conditions[type_] = (value, now_rfc3339())
        self.reasons[type_] = reason

    def status(self) -> dict[str, Any]:
        assert self.ip is not None
        conds = []
        for type_ in (
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ):
            if type_ not in self.conditions:
                continue
            value, when = self.conditions[type_]
            cond = {
                "type": type_,
                "status": value,
                "lastTransitionTime": when,
                "lastProbeTime": None,
            }
            if reason := self.reasons.get(type_):
                cond["reason"] = reason
            conds.append(cond)
        status: dict[str, Any] = {
            "phase": self.phase,
            "hostIP": self.runner.host_ip,
            "hostIPs": [{"ip": self.runner.host_ip}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "conditions": conds,
            "containerStatuses": [c.status() for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        return status

    def _report(self) -> bool:
        """Patch the status when it changed; False when the Pod is gone.

        A JSON merge patch: the runner owns the whole status, so lists (conditions,
        podIPs, containerStatuses) are replaced, not merged. ``metadata.uid``
        makes it fail on a new Pod of the same name (StatefulSets)."""
        status = self.status()
        if status == self.last_status:
            return True
        body = {"metadata": {"uid": self.uid}, "status": status}
        path = kube_path("pods", self.ns, self.name)
        try:
            self.runner.api.patch(f"{path}/status", body, "merge")
        except ApiError as exc:
            if exc.status in (404, 409, 422):
                current = self.runner.api.get(path)
                if current is None or current["metadata"]["uid"] != self.uid:
                    self.log.info("pod %s: gone (status patch: %s)", self.name, exc)
                    return False
            if str(exc) != self.report_error:
                self.log.warning("pod %s: status patch failed: %s", self.name, exc)
            self.report_error = str(exc)
            return True
        except OSError as exc:
            self.log.warning("pod %s: status patch failed: %s", self.name, exc)
            return True
        self.report_error = ""
        self.last_status = status
        return True


# ---- the runner


class PodRunner:
    """Run the Pods of `namespace` as local processes (see the module docstring)."""

    def __init__(
        self,
        kubeconfig: str | Path,
        namespace: str,
        *,
        workdir: str | Path,
        env_overrides: Mapping[str, str] | None = None,
        node_name: str | None = None,
        hosts_file: str | Path = HOSTS_FILE,
        pod_network: str = POD_NETWORK,
        image_entrypoints: Mapping[str, list[str]] | None = None,
        executables: Mapping[str, str] | None = None,
        poll_interval: float = 0.2,
        probe_period_cap: float = 1.0,
        restart_backoff: tuple[float, float] = (0.5, 10.0),
        termination_grace_cap: float = 10.0,
        private_hosts: bool = True,
        context: str | None = None,
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.namespace = namespace
        self.workdir = Path(workdir).resolve()
        self.env_overrides = dict(env_overrides or {})
        self.node_name = node_name or f"podrunner-{namespace}"
        self.hosts_file = Path(hosts_file)
        self.image_entrypoints = dict(image_entrypoints or {})
        self.executables = {"fedkube": str(VENV_BIN / "fedkube"), **(executables or {})}
        self.poll_interval = poll_interval
        self.probe_period_cap = probe_period_cap
        self.restart_backoff = restart_backoff
        self.termination_grace_cap = termination_grace_cap
        self.api = KubeAPI.from_kubeconfig(self.kubeconfig, context)
        self.ips = IPAllocator(pod_network)
        self.private_hosts = private_hosts
        self.pod_hosts = self.workdir / "hosts"  #: the Pods' /etc/hosts (private_hosts)
        self.host_ip = ""  #: the Node's InternalIP and every Pod's hostIP (from pod_network)
        self.stopping = threading.Event()
        self.workers: dict[str, PodWorker] = {}
        self._finished: set[str] = set()
        self._hosts_lines: list[str] | None = None
        self._thread: threading.Thread | None = None
        self._lease_at = 0.0
        self._lock = threading.Lock()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = logging.getLogger(f"fedkube.podrunner.{namespace}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = True  # into pytest's captured log of a failing test
        self._log_handler = logging.FileHandler(self.workdir / "runner.log")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(self._log_handler)
        self.errors: list[str] = []

    # -- lifecycle
    def start(self) -> PodRunner:
        """Register the Node and start watching; RuntimeError when this machine
        cannot host pods (not root: /etc/hosts or the loopback interface)."""
        if not os.access(self.hosts_file, os.W_OK):
            raise RuntimeError(
                f"the pod runner needs to write {self.hosts_file} (service names): run as root"
            )
        swept = self.ips.sweep()
        if swept:
            self.log.info("removed stale pod IPs from lo: %s", " ".join(swept))
        if self.private_hosts:
            self._write_pod_hosts([])
            try:
                subprocess.run(["true"], preexec_fn=self.preexec(), check=True)
            except (OSError, subprocess.SubprocessError) as exc:
                self.log.warning("no private /etc/hosts for pods (%s): they see the host's", exc)
                self.private_hosts = False
        self.host_ip = self.ips.allocate()
        try:
            self._register_node()
            set_hosts_block(self.namespace, None, hosts_file=self.hosts_file, clean_stale=True)
        except BaseException:
            self.ips.release(self.host_ip)
            raise
        self._thread = threading.Thread(
            target=self._loop, name=f"podrunner-{self.namespace}", daemon=True
        )
        self._thread.start()
        self.log.info("runner started for namespace %s (node %s)", self.namespace, self.node_name)
        return self

    def stop(self) -> None:
        """Kill every process, remove the /etc/hosts block, the pod IPs and the Node."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            w.join(timeout=30)
        set_hosts_block(self.namespace, None, hosts_file=self.hosts_file)
        with contextlib.suppress(Exception):
            self.api.delete(kube_path("leases", "kube-node-lease", self.node_name))
        with contextlib.suppress(Exception):
            self.api.delete(kube_path("nodes", None, self.node_name))
        self.api.close()
        if self.host_ip:
            self.ips.release(self.host_ip)
        self.log.info("runner stopped")
        self.log.removeHandler(self._log_handler)
        self._log_handler.close()

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests
    def worker(self, pod_name: str) -> PodWorker | None:
        """The live worker of the Pod called `pod_name` (the newest), if any."""
        with self._lock:
            found = [w for w in self.workers.values() if w.name == pod_name and not w.done.is_set()]
        return found[-1] if found else None

    def pod_ip(self, pod_name: str) -> str | None:
        w = self.worker(pod_name)
        return w.ip if w else None

    def pid(self, pod_name: str, container: str | None = None) -> int | None:
        w = self.worker(pod_name)
        if w is None:
            return None
        c = w.container(container)
        return c.proc.pid if c.running and c.proc else None

    def logs(self, pod_name: str, container: str | None = None) -> str:
        """The container's log (all runs) of the newest Pod called `pod_name`."""
        w = self.worker(pod_name)
        if w is None:
            dirs = sorted(self.workdir.glob(f"{pod_name}-*"), key=lambda p: p.stat().st_mtime)
            if not dirs:
                return ""
            logs = sorted(dirs[-1].glob(f"{container or '*'}.log"))
            return logs[0].read_text(errors="replace") if logs else ""
        path = w.log_path(container)
        return path.read_text(errors="replace") if path.exists() else ""

    def running_pods(self) -> list[str]:
        with self._lock:
            return sorted(w.name for w in self.workers.values() if not w.done.is_set())

    def hosts_lines(self) -> list[str]:
        return list(self._hosts_lines or [])

    # -- node
    def _node(self) -> dict[str, Any]:
        now = now_rfc3339()
        cond = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "fedkube pod runner is posting ready status",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        resources = {"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "fedkube.dev/pod-runner": "true",
                },
            },
            "spec": {},
            "status": {
                "conditions": [cond],
                "addresses": [
                    {"type": "InternalIP", "address": self.host_ip},
                    {"type": "Hostname", "address": self.node_name},
                ],
                "capacity": resources,
                "allocatable": resources,
                "nodeInfo": {
                    "kubeletVersion": K8S_VERSION,
                    "kubeProxyVersion": "",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "podrunner://0",
                    "osImage": "fedkube pod runner",
                    "kernelVersion": "",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
            },
        }

    def _register_node(self) -> None:
        node = self._node()
        try:
            self.api.create(kube_path("nodes"), node)
        except ApiError as exc:
            if exc.status != 409:
                raise
            self.api.patch(
                kube_path("nodes", None, self.node_name, "status"), {"status": node["status"]}
            )
        # a Node's status is dropped on create by some versions: set it explicitly
        self.api.patch(
            kube_path("nodes", None, self.node_name, "status"), {"status": node["status"]}
        )
        self._renew_lease()

    def _renew_lease(self) -> None:
        path = kube_path("leases", "kube-node-lease", self.node_name)
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": 40,
            "renewTime": now_micro(),
        }
        try:
            self.api.patch(path, {"spec": spec})
        except ApiError as exc:
            if exc.status != 404:
                raise
            node = self.api.get(kube_path("nodes", None, self.node_name)) or {}
            owner = {
                "apiVersion": "v1",
                "kind": "Node",
                "name": self.node_name,
                "uid": node.get("metadata", {}).get("uid", ""),
            }
            self.api.create(
                kube_path("leases", "kube-node-lease"),
                {"metadata": {"name": self.node_name, "ownerReferences": [owner]}, "spec": spec},
            )
        self._lease_at = time.monotonic()

    # -- the loop
    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self._sync()
            except Exception as exc:
                msg = f"{type(exc).__name__}: {exc}"
                if not self.errors or self.errors[-1] != msg:
                    self.log.warning("sync failed: %s", msg)
                    self.errors.append(msg)
            self.stopping.wait(self.poll_interval)

    def _sync(self) -> None:
        if time.monotonic() - self._lease_at > 10:
            self._renew_lease()
        pods = self.api.list(kube_path("pods", self.namespace))
        seen: set[str] = set()
        for pod in pods:
            md, spec = pod["metadata"], pod["spec"]
            uid = md["uid"]
            node = spec.get("nodeName")
            phase = pod.get("status", {}).get("phase")
            if (
                not node
                and not md.get("deletionTimestamp")
                and phase not in ("Succeeded", "Failed")
            ):
                if spec.get("schedulingGates"):
                    continue
                self._bind(pod)
                continue
            if node != self.node_name:
                continue
            seen.add(uid)
            with self._lock:
                w = self.workers.get(uid)
                if w is None and phase in ("Succeeded", "Failed"):
                    # terminal before this runner saw it (a previous run): never rerun;
                    # a deleted one is removed as a kubelet would
                    if md.get("deletionTimestamp"):
                        self.api.delete(
                            kube_path("pods", self.namespace, md["name"]),
                            {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
                        )
                    continue
                if w is None and uid not in self._finished:
                    w = PodWorker(self, pod)
                    self.workers[uid] = w
                    w.start()
                elif w is not None:
                    w.update(pod)
        with self._lock:
            for uid, w in list(self.workers.items()):
                if uid not in seen:
                    w.gone()
                if w.done.is_set():
                    self._finished.add(uid)
                    del self.workers[uid]
        self._sync_hosts()

    def _bind(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "uid": pod["metadata"]["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self.api.create(kube_path("pods", self.namespace, name, "binding"), body)
            self.log.info("bound pod %s to %s", name, self.node_name)
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise

    def preexec(self) -> Any:
        """The preexec_fn of every process of a Pod (see _pod_preexec)."""
        return _pod_preexec(self.pod_hosts if self.private_hosts else None, self.hosts_file)

    def _write_pod_hosts(self, lines: list[str]) -> None:
        """The Pods' /etc/hosts: the host's own lines (without any runner's block)
        and this namespace's names. Rewritten in place: the Pods' bind mounts
        follow the inode."""
        with hosts_lock(self.hosts_file):
            base = _BLOCK.sub("", self.hosts_file.read_text())
        if base and not base.endswith("\n"):
            base += "\n"
        text = base + f"# fedkube-podrunner: namespace {self.namespace}\n"
        text += "".join(line + "\n" for line in lines)
        fd = os.open(self.pod_hosts, os.O_RDWR | os.O_CREAT, 0o644)
        with open(fd, "r+") as f:
            if f.read() != text:
                f.seek(0)
                f.write(text)
                f.truncate()

    def _sync_hosts(self) -> None:
        lines = self._hosts_entries()
        if lines != self._hosts_lines:
            if self.private_hosts:
                self._write_pod_hosts(lines)
            set_hosts_block(self.namespace, lines, hosts_file=self.hosts_file)
            self._hosts_lines = lines
            self.log.info("hosts block: %s", "; ".join(lines) or "(empty)")

    def _hosts_entries(self) -> list[str]:
        ns = self.namespace
        services = self.api.list(kube_path("services", ns))
        slices = self.api.list(kube_path("endpointslices", ns))
        by_svc: dict[str, list[tuple[str, str, str]]] = {}  # svc -> (pod, hostname, ip)
        for sl in slices:
            svc = sl["metadata"].get("labels", {}).get("kubernetes.io/service-name")
            if not svc or sl.get("addressType") != "IPv4":
                continue
            for ep in sl.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready") is False:
                    continue
                pod = (ep.get("targetRef") or {}).get("name", "")
                for ip in ep.get("addresses") or []:
                    by_svc.setdefault(svc, []).append((pod, ep.get("hostname") or "", ip))

        def names(base: str) -> list[str]:
            return [base, f"{base}.{ns}", f"{base}.{ns}.svc", f"{base}.{ns}.svc.cluster.local"]

        lines: list[str] = []
        for svc in sorted(services, key=lambda s: s["metadata"]["name"]):
            name = svc["metadata"]["name"]
            eps = sorted(by_svc.get(name, []))
            if not eps or svc["spec"].get("type") == "ExternalName":
                continue
            if svc["spec"].get("clusterIP") == "None":
                for _pod, _host, ip in eps:
                    lines.append(f"{ip} {' '.join(names(name))}")
                for _pod, host, ip in eps:
                    if host:
                        lines.append(f"{ip} {' '.join(names(f'{host}.{name}'))}")
            else:
                lines.append(f"{eps[0][2]} {' '.join(names(name))}")
        return lines

    # -- what a container needs
    def _get(self, kind: str, name: str) -> dict[str, Any] | None:
        obj = self.api.get(kube_path(kind, self.namespace, name))
        return obj if isinstance(obj, dict) else None

    def _source_data(self, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        """A ConfigMap's or Secret's keys as bytes; None when missing and optional."""
        obj = self._get(kind, name)
        if obj is None:
            if optional:
                return None
            raise ConfigError(f'{kind[:-1]} "{name}" not found')
        data: dict[str, bytes] = {}
        if kind == "secrets":
            for k, v in (obj.get("data") or {}).items():
                data[k] = base64.b64decode(v)
            for k, v in (obj.get("stringData") or {}).items():
                data[k] = v.encode()
        else:
            for k, v in (obj.get("data") or {}).items():
                data[k] = v.encode()
            for k, v in (obj.get("binaryData") or {}).items():
                data[k] = base64.b64decode(v)
        return data

    def _field(self, w: PodWorker, path: str) -> str:
        pod = w.pod
        md = pod["metadata"]
        simple = {
            "metadata.name": md["name"],
            "metadata.namespace": md["namespace"],
            "metadata.uid": md["uid"],
            "spec.nodeName": self.node_name,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.hostIP": self.host_ip,
            "status.hostIPs": self.host_ip,
            "status.podIP": w.ip or "",
            "status.podIPs": w.ip or "",
        }
        if path in simple:
            return str(simple[path])
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return str((md.get(m.group(1)) or {}).get(m.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            items = (md.get(path.split(".")[1]) or {}).items()
            return "".join(f'{k}="{v}"\n' for k, v in sorted(items))
        raise ConfigError(f"unsupported fieldRef {path}")

    def _resource_field(self, c: dict[str, Any], ref: dict[str, Any]) -> str:
        resource = ref["resource"]  # e.g. limits.cpu
        section, _, name = resource.partition(".")
        value = (c.get("resources") or {}).get(section, {}).get(name)
        if value is None:
            value = {"cpu": "8", "memory": "16Gi", "ephemeral-storage": "100Gi"}.get(name, "0")
        divisor = quantity(ref.get("divisor") or "1")
        return str(math.ceil(quantity(value) / divisor))

    def _env(self, w: PodWorker, c: dict[str, Any], rewrite: Rewriter) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            for key in ("configMapRef", "secretRef"):
                if key in src:
                    ref = src[key]
                    kind = "configmaps" if key == "configMapRef" else "secrets"
                    data = self._source_data(kind, ref["name"], bool(ref.get("optional")))
                    for k, v in (data or {}).items():
                        if "=" not in k:
                            env[prefix + k] = rewrite(v.decode(errors="replace"))
        for item in c.get("env") or []:
            name = item["name"]
            if "valueFrom" not in item:
                env[name] = expand(rewrite(str(item.get("value", ""))), env)
                continue
            vf = item["valueFrom"]
            value: str | None
            if "fieldRef" in vf:
                value = self._field(w, vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                value = self._resource_field(c, vf["resourceFieldRef"])
            else:
                key = "configMapKeyRef" if "configMapKeyRef" in vf else "secretKeyRef"
                ref = vf[key]
                kind = "configmaps" if key == "configMapKeyRef" else "secrets"
                optional = bool(ref.get("optional"))
                data = self._source_data(kind, ref["name"], optional)
                if data is None or ref["key"] not in data:
                    if optional:
                        continue
                    raise ConfigError(
                        f"couldn't find key {ref['key']} in {kind[:-1]} {self.namespace}/"
                        f"{ref['name']}"
                    )
                value = data[ref["key"]].decode(errors="replace")
            env[name] = rewrite(value)
        return env

    def _mounts(self, w: PodWorker, c: dict[str, Any], env: Mapping[str, str]) -> dict[str, Path]:
        assert w.volumes is not None
        mounts: dict[str, Path] = {}
        for m in c.get("volumeMounts") or []:
            base = w.volumes.get(m["name"])
            if base is None:
                raise ConfigError(f'volume "{m["name"]}" not found in the pod')
            sub = m.get("subPath") or expand(m.get("subPathExpr") or "", env)
            path = base / sub if sub else base
            if sub and not path.exists():
                path.mkdir(parents=True, exist_ok=True)
            mounts[m["mountPath"]] = path
        return mounts

    def container_command(
        self, w: PodWorker, c: Container
    ) -> tuple[list[str], dict[str, str], Path]:
        """argv, env and cwd of a container start."""
        assert w.ip is not None
        spec = c.spec
        # mounts are needed for the rewrite, and subPathExpr needs the env: resolve the
        # env once without mounts for subPathExpr, then again with the mounts.
        plain = Rewriter({}, w.ip)
        mounts = self._mounts(
            w,
            spec,
            self._env(w, spec, plain)
            if any(m.get("subPathExpr") for m in spec.get("volumeMounts") or [])
            else {},
        )
        rewrite = Rewriter(mounts, w.ip)
        cenv = self._env(w, spec, rewrite)
        pod_spec = w.pod["spec"]
        hostname = pod_spec.get("hostname") or w.name
        env: dict[str, str] = {
            "HOSTNAME": hostname,
            "HOME": str(w.dir),
            "PYTHONUNBUFFERED": "1",
            # gRPC's default (c-ares) resolver mixes up names in a hosts file where
            # one name has several addresses (a headless Service) and others one
            # each (its pods); the system resolver reads it right. Cluster DNS has
            # no such problem, so this only concerns the runner's hosts files.
            "GRPC_DNS_RESOLVER": "native",
        }
        env.update(cenv)
        env["PATH"] = f"{VENV_BIN}:{cenv.get('PATH') or os.environ.get('PATH') or DEFAULT_PATH}"
        env["FEDKUBE_BIND_HOST"] = w.ip
        env.update(self.env_overrides)
        command = [str(x) for x in spec.get("command") or []]
        if not command:
            command = self._entrypoint(str(spec.get("image", "")))
        argv = [expand(rewrite(x), env) for x in command + [str(a) for a in spec.get("args") or []]]
        if not argv:
            raise ConfigError(
                f"container {c.name} has no command and the pod runner does not know the "
                f"entrypoint of image {spec.get('image')!r} (pass image_entrypoints)"
            )
        argv[0] = self.executables.get(argv[0], argv[0])
        cwd = w.dir
        if wd := spec.get("workingDir"):
            mapped = rewrite.path(wd)
            if mapped is not None:
                cwd = Path(mapped)
                cwd.mkdir(parents=True, exist_ok=True)
        return argv, env, cwd

    def _entrypoint(self, image: str) -> list[str]:
        name = image.split("@")[0]
        if ":" in name.rsplit("/", 1)[-1]:
            name = name.rsplit(":", 1)[0]
        if name in self.image_entrypoints:
            return list(self.image_entrypoints[name])
        if name.rsplit("/", 1)[-1] == "fedkube":
            return ["fedkube"]
        return []

    # -- volumes
    def materialize_volumes(self, w: PodWorker) -> dict[str, Path]:
        vols: dict[str, Path] = {}
        root = w.dir / "volumes"
        for vol in w.pod["spec"].get("volumes") or []:
            name = vol["name"]
            path = root / name
            if "hostPath" in vol:
                host = Path(vol["hostPath"]["path"])
                if vol["hostPath"].get("type") == "DirectoryOrCreate":
                    host.mkdir(parents=True, exist_ok=True)
                vols[name] = host
                continue
            if "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                pvc = self.workdir / "pvc" / claim
                pvc.mkdir(parents=True, exist_ok=True)
                vols[name] = pvc
                continue
            path.mkdir(parents=True, exist_ok=True)
            vols[name] = path
            if "configMap" in vol or "secret" in vol:
                self._write_source(w, path, vol)
            elif "downwardAPI" in vol:
                self._write_downward(w, path, vol["downwardAPI"])
            elif "projected" in vol:
                proj = vol["projected"]
                for src in proj.get("sources") or []:
                    src = {**src}
                    if "configMap" in src or "secret" in src:
                        self._write_source(w, path, src, proj.get("defaultMode"))
                    elif "downwardAPI" in src:
                        self._write_downward(w, path, src["downwardAPI"])
                    elif "serviceAccountToken" in src:
                        self._write_token(w, path, src["serviceAccountToken"])
            elif "emptyDir" not in vol:
                self.log.warning(
                    "pod %s: volume %s of an unsupported kind: an empty directory", w.name, name
                )
        return vols

    def _write_source(
        self, w: PodWorker, path: Path, vol: dict[str, Any], default_mode: int | None = None
    ) -> None:
        if "configMap" in vol:
            ref, kind, name_key = vol["configMap"], "configmaps", "name"
        else:
            ref, kind, name_key = vol["secret"], "secrets", "secretName"
            if "secretName" not in ref:
                name_key = "name"  # projected secrets use `name`
        data = self._source_data(kind, ref[name_key], bool(ref.get("optional")))
        if data is None:
            return
        mode = ref.get("defaultMode", default_mode)
        items = ref.get("items")
        files = (
            [(i["key"], i["path"], i.get("mode", mode)) for i in items]
            if items
            else [(k, k, mode) for k in data]
        )
        for key, rel, fmode in files:
            if key not in data:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'key "{key}" not found in {kind[:-1]} "{ref[name_key]}"')
            dst = path / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data[key])
            dst.chmod(int(fmode) if fmode is not None else 0o644)

    def _write_downward(self, w: PodWorker, path: Path, spec: dict[str, Any]) -> None:
        for item in spec.get("items") or []:
            if "fieldRef" in item:
                value = self._field(w, item["fieldRef"]["fieldPath"])
            else:
                container = next(
                    (
                        c
                        for c in w.pod["spec"]["containers"]
                        if c["name"] == item["resourceFieldRef"].get("containerName")
                    ),
                    w.pod["spec"]["containers"][0],
                )
                value = self._resource_field(container, item["resourceFieldRef"])
            dst = path / item["path"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(value)

    def _write_token(self, w: PodWorker, path: Path, spec: dict[str, Any]) -> None:
        sa = w.pod["spec"].get("serviceAccountName") or "default"
        req = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [spec["audience"]] if spec.get("audience") else None,
                "expirationSeconds": int(spec.get("expirationSeconds") or 3607),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": w.name, "uid": w.uid},
            },
        }
        try:
            resp = self.api.create(kube_path("serviceaccounts", self.namespace, sa, "token"), req)
            token = resp["status"]["token"]
        except (ApiError, KeyError) as exc:
            self.log.warning("pod %s: no service-account token: %s", w.name, exc)
            return
        dst = path / spec.get("path", "token")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(token)
        dst.chmod(0o600)

    # -- probes
    def run_probe(self, w: PodWorker, c: Container, spec: dict[str, Any]) -> tuple[bool, str]:
        assert w.ip is not None
        timeout = float(spec.get("timeoutSeconds") or 1)

        def port_of(value: Any) -> int:
            if isinstance(value, int) or str(value).isdigit():
                return int(value)
            for p in c.spec.get("ports") or []:
                if p.get("name") == value:
                    return int(p["containerPort"])
            raise ValueError(f"unknown port name {value!r}")

        try:
            if "httpGet" in spec:
                h = spec["httpGet"]
                host, port = h.get("host") or w.ip, port_of(h["port"])
                conn: http.client.HTTPConnection
                if h.get("scheme", "HTTP").upper() == "HTTPS":
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
                else:
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
                try:
                    headers = {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
                    headers.setdefault("User-Agent", f"kube-probe/{K8S_VERSION[1:5]}")
                    conn.request("GET", h.get("path") or "/", headers=headers)
                    status = conn.getresponse().status
                finally:
                    conn.close()
                return 200 <= status < 400, f"HTTP {status}"
            if "tcpSocket" in spec:
                t = spec["tcpSocket"]
                with socket.create_connection(
                    (t.get("host") or w.ip, port_of(t["port"])), timeout=timeout
                ):
                    return True, ""
            if "exec" in spec:
                argv = [expand(str(x), c.env) for x in spec["exec"]["command"]]
                if argv:
                    argv[0] = self.executables.get(argv[0], argv[0])
                proc = subprocess.run(
                    argv,
                    env=c.env,
                    cwd=w.dir,
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                    preexec_fn=self.preexec(),
                )
                return proc.returncode == 0, f"exit {proc.returncode}"
            if "grpc" in spec:
                g = spec["grpc"]
                ok = _grpc_health(w.ip, int(g["port"]), g.get("service") or "", timeout)
                return ok, "" if ok else "not SERVING"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return False, "unsupported probe"
