"""What the S3 and MongoDB test servers share: a process of their own with its
data in a temporary directory, started on free loopback ports (again on new
ports when one was taken meanwhile), stopped with its data removed. I/O side.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import TypeVar

from fedkube.errors import ServiceUnavailable
from fedkube.process import ChildProcess

#: how long a server may take to serve, in seconds
START_TIMEOUT = 60.0


def log_stderr(msg: str) -> None:
    """The default `log` of the environments: a progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Where the built binaries live: $FEDKUBE_CACHE, default ~/.cache/fedkube."""
    return Path(os.environ.get("FEDKUBE_CACHE") or Path.home() / ".cache" / "fedkube")


def find_binary(env_var: str, *candidates: Path) -> Path | None:
    """A binary named by `env_var`, else the first executable of `candidates`,
    else `candidates[0].name` on PATH."""
    if env := os.environ.get(env_var):
        return Path(env)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which(candidates[0].name) if candidates else None
    return Path(found) if found else None


@dataclass
class LocalServer:
    """A test server: started here (`process` set; it owns `tmpdir`) or an
    external one named by an environment variable (`process` None)."""

    _: KW_ONLY
    process: ChildProcess | None = None
    tmpdir: Path | None = None
    start_seconds: float = 0.0

    # -- what a kind of server says
    @property
    def address(self) -> str:
        """Where it serves (a URL), for messages."""
        raise NotImplementedError

    def _probe(self) -> bool:
        """True once the server serves (exceptions count as "not yet")."""
        raise NotImplementedError

    def _clean_external(self) -> None:
        """What stop() does to an external server: remove what this object made."""

    def _clean_after_exit(self) -> None:
        """What stop() removes besides `tmpdir` once the process has exited."""

    # -- lifecycle (only for a server this process started)
    @property
    def restartable(self) -> bool:
        return self.process is not None

    def own_process(self) -> ChildProcess:
        """The process of a server started here (RuntimeError for an external one)."""
        if self.process is None:
            raise RuntimeError(f"{self.address} was not started by this process")
        return self.process

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        self.own_process().wait_ready(self._probe, timeout, what="serve", interval=0.2)

    def kill(self) -> None:
        """SIGKILL the server (a crash); its data stays for start()."""
        self.own_process().kill()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server again (same ports, data dir) and wait until it serves."""
        proc = self.own_process().start()
        try:
            self.wait_ready(timeout)
        except ServiceUnavailable:
            proc.kill()
            raise

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """SIGKILL, then start on the same ports and data directory."""
        self.kill()
        self.start(timeout)

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after its grace) and remove its data.
        For an external server, only remove what this object created there."""
        if self.process is None:
            self._clean_external()
            return
        self.process.stop()
        self._clean_after_exit()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


S = TypeVar("S", bound=LocalServer)


def start_on_free_ports(make: Callable[[], S], *, timeout: float, attempts: int) -> S:
    """Start the server `make()` sets up (on newly picked free ports, in a new
    temporary directory, not started) and wait until it serves. When it fails
    because a port was taken between picking and binding it ("address already
    in use" in its log), try again on new ports, `attempts` times in all.
    Raises ServiceUnavailable with the log tail when it cannot."""
    last: ServiceUnavailable | None = None
    for _ in range(attempts):
        t0 = time.monotonic()
        server = make()
        proc = server.own_process()
        try:
            proc.start()
            server.wait_ready(timeout)
        except ServiceUnavailable as exc:
            last = exc
            port_taken = "address already in use" in proc.log_tail()
            server.stop()
            if port_taken:
                continue
            raise
        except BaseException:
            server.stop()
            raise
        server.start_seconds = time.monotonic() - t0
        return server
    assert last is not None
    raise last
