"""Named network namespaces and a TCP forwarder into one. I/O side (Linux, root).

The real test cluster (fedkube/devenv/cluster.py) runs in a network namespace
of its own, so its bridge, routes, iptables rules and pod traffic never touch
the host's network. What lives here:

- ``create(name)`` / ``delete(name)``: ``ip netns add NAME`` (loopback up) and
  ``ip netns delete NAME``; ``exists(name)``; ``path(name)`` is the handle
  (``/run/netns/NAME``) other processes join it by;
- ``nsenter_argv(name, argv)``: a command line that runs `argv` in the
  namespace (``nsenter --net=PATH -- ARGV``: only the network namespace, the
  mount namespace stays the host's, so the kubelet's and containerd's mounts
  are the same for both);
- ``Dialer``: a thread that joined the namespace (``setns(fd, CLONE_NEWNET)``
  via ctypes; Python 3.11 has no ``os.setns``; a namespace is per thread)
  and opens TCP connections there on request: a socket keeps the namespace
  it was created in, whichever thread then uses it;
- ``Forwarder``: a listener on ``127.0.0.1:<free port>`` in this process's
  (the host's) namespace; each connection it accepts is dialled through a
  Dialer to a fixed address inside the namespace, and bytes are copied both
  ways until either side closes. Traffic stays on loopback and inside the
  namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import socket
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

from fedkube.errors import ServiceUnavailable

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
HINT = "the test cluster needs root and iproute2 (`ip netns`) and util-linux (`nsenter`)"
#: how long a dial inside the namespace may take
DIAL_TIMEOUT = 10.0
_CHUNK = 1 << 16

_libc = ctypes.CDLL(None, use_errno=True)


def path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return path(name).exists()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise ServiceUnavailable(f"ip {' '.join(args)} failed: {proc.stderr.strip()}", HINT)
    return proc


def create(name: str) -> Path:
    """``ip netns add NAME`` and bring its loopback up; returns its path."""
    _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")
    return path(name)


def delete(name: str) -> bool:
    """``ip netns delete NAME`` when it exists; True when it was deleted."""
    if not exists(name):
        return False
    proc = _ip("netns", "delete", name, check=False)
    if proc.returncode != 0 and exists(name):
        # the bind mount may be busy: detach it, then remove the file
        with contextlib.suppress(OSError):
            umount(path(name), lazy=True)
        with contextlib.suppress(OSError):
            path(name).unlink()
    return not exists(name)


def ip(name: str, *args: str) -> None:
    """``ip -n NAME ARGS...`` (ServiceUnavailable when it fails)."""
    _ip("-n", name, *args)


def nsenter_argv(name: str, argv: Sequence[str]) -> list[str]:
    """`argv` run in the namespace NAME (network namespace only)."""
    return ["nsenter", f"--net={path(name)}", "--", *[str(a) for a in argv]]


def umount(target: Path, *, lazy: bool = False) -> None:
    """umount2(target, MNT_DETACH if lazy) (OSError when it fails)."""
    flags = 2 if lazy else 0  # MNT_DETACH
    if _libc.umount2(os.fsencode(str(target)), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def setns(ns_path: Path) -> None:
    """Move the calling thread into the network namespace at `ns_path`."""
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns_path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class Dialer:
    """A daemon thread inside a network namespace that opens TCP connections there."""

    def __init__(self, ns_path: Path) -> None:
        self.ns_path = ns_path
        self._requests: queue.Queue[tuple[str, int, Future[socket.socket]] | None] = queue.Queue()
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"netns-dialer-{ns_path.name}", daemon=True
        )
        self._thread.start()
        exc = ready.exception(timeout=DIAL_TIMEOUT)
        if exc is not None:
            raise ServiceUnavailable(f"cannot enter the network namespace: {exc}", HINT)

    def _run(self, ready: Future[None]) -> None:
        try:
            setns(self.ns_path)
        except OSError as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        while (item := self._requests.get()) is not None:
            host, port, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(socket.create_connection((host, port), timeout=DIAL_TIMEOUT))
            except OSError as exc:
                fut.set_exception(exc)

    def dial(self, host: str, port: int) -> socket.socket:
        """A connected socket to host:port inside the namespace (OSError when it fails)."""
        fut: Future[socket.socket] = Future()
        self._requests.put((host, port, fut))
        sock = fut.result(timeout=DIAL_TIMEOUT + 5)
        sock.settimeout(None)
        return sock

    def close(self) -> None:
        self._requests.put(None)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy src -> dst until EOF or an error; then half-close dst."""
    try:
        while data := src.recv(_CHUNK):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class Forwarder:
    """127.0.0.1:`port` (host namespace) -> `target` (inside the namespace)."""

    def __init__(self, dialer: Dialer, host: str, port: int, *, listen_port: int = 0) -> None:
        self.dialer = dialer
        self.target = (host, port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", listen_port))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._accept, name=f"forward-{self.port}->{host}:{port}", daemon=True
        )
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = self.dialer.dial(*self.target)
        except Exception:  # refused, unreachable, timed out: close the client side
            client.close()
            return
        with self._lock:
            self._conns.update((client, upstream))
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        with self._lock:
            self._conns.difference_update((client, upstream))
        client.close()
        upstream.close()

    def close(self) -> None:
        """Stop listening and cut the open connections."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
