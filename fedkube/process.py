"""The child processes fedkube starts, and free loopback ports for them. I/O side.

`fedkube run` (fedkube/localrun.py) starts the reducer, the combiners and the
clients as ChildProcess objects, and fedkube.devenv starts the real servers of
the test environments (SeaweedFS, FerretDB, etcd, kube-apiserver, ...) the
same way. Each child:

- has its output (stdout and stderr) appended to a log file, stdin from
  /dev/null;
- runs in a session and process group of its own, so a Ctrl-C in the terminal
  reaches only this process, which then stops its children in its own order;
- is stopped with SIGTERM to its whole group, then SIGKILL after a grace
  period (``stop``, or ``stop_all`` for several with one deadline), reaped,
  and its log closed;
- optionally dies with the thread that started it (PR_SET_PDEATHSIG on
  Linux), so a killed parent leaves no server behind.

Failures raise fedkube.errors.ServiceUnavailable (with the log tail and a
`hint`). Standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Self, TypeVar

from fedkube.errors import ServiceUnavailable

#: default SIGTERM grace before SIGKILL, in seconds
STOP_GRACE = 2.0
#: default number of log lines an error shows
TAIL_LINES = 30
#: how long to wait for a process to be reaped after SIGKILL
REAP_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1

T = TypeVar("T")

_prctl: Any
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the thread that started it ends
    (PR_SET_PDEATHSIG; nothing where prctl does not exist). Start such a child
    from a thread that lives as long as the child should (the main thread)."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


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


def read_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of a log file ("(no log)" when it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


class ChildProcess:
    """One child process with its output appended to `log_path`.

    `env` is the child's whole environment (None: this process's). `hint`
    goes into the ServiceUnavailable errors (how to get what is missing).
    `banner` writes ``==> ARGV`` into the log before each start. `start()`
    may be called again after the process exited (same argv, same log).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        hint: str = "",
        stop_grace: float = STOP_GRACE,
        tail_lines: int = TAIL_LINES,
        banner: bool = True,
        dies_with_parent: bool = False,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.hint = hint
        self.stop_grace = stop_grace
        self.tail_lines = tail_lines
        self.banner = banner
        self.dies_with_parent = dies_with_parent
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid} running={self.running}>"

    # -- state
    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal); None while it runs."""
        return self.popen.poll() if self.popen is not None else None

    def log_tail(self, lines: int | None = None) -> str:
        return read_tail(self.log_path, self.tail_lines if lines is None else lines)

    # -- lifecycle
    def start(self) -> Self:
        """Start the process (ServiceUnavailable when it cannot be run); returns self."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        log = open(self.log_path, "ab")  # noqa: SIM115 - open while the process runs
        if self.banner:
            log.write(f"\n==> {shlex.join(self.argv)}\n".encode())
            log.flush()
        try:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not it
                preexec_fn=die_with_parent if self.dies_with_parent else None,
            )
        except OSError as exc:
            log.close()
            raise ServiceUnavailable(f"cannot run {self.argv[0]}: {exc}", self.hint) from exc
        self._log = log
        return self

    def exited_error(self) -> ServiceUnavailable:
        """The error for a process that exited: its status and log tail."""
        return ServiceUnavailable(
            f"{self.name} exited with {self.returncode}:\n{self.log_tail()}", self.hint
        )

    def check_running(self) -> None:
        """ServiceUnavailable (exit status, log tail) unless the process runs."""
        if not self.running:
            raise self.exited_error()

    def wait_ready(
        self,
        probe: Callable[[], T | None],
        timeout: float,
        *,
        what: str = "become ready",
        interval: float = 0.1,
    ) -> T:
        """Call `probe()` until it returns something truthy, and return that.

        An exception from the probe means "not yet" (the last one is reported),
        except ServiceUnavailable, which ends the wait at once (e.g. a process
        this one depends on died). Raises ServiceUnavailable with the log tail
        when the process exits or `timeout` seconds pass; the process is left
        as it is (stop() it)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                value = probe()
                if value:
                    return value
            except ServiceUnavailable:
                raise
            except Exception as exc:
                last = exc
            self.check_running()
            if time.monotonic() > deadline:
                error = f" (last probe error: {type(last).__name__}: {last})" if last else ""
                raise ServiceUnavailable(
                    f"{self.name} did not {what} within {timeout:.0f}s{error}; its log ends:\n"
                    f"{self.log_tail()}",
                    self.hint,
                )
            time.sleep(interval)

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the process's group (its own: it leads a new session)."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM to the group, SIGKILL after `grace` seconds (default:
        stop_grace); reap; close the log."""
        stop_all([self], self.stop_grace if grace is None else grace)

    def kill(self) -> None:
        """SIGKILL the group now (a crash); reap; close the log. start() may follow."""
        if self.running:
            self.signal_group(signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=REAP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None


def stop_all(procs: Iterable[ChildProcess], grace: float) -> None:
    """Stop several processes with one deadline: SIGTERM the group of each one
    still running, in the given order; then, in the same order, wait for each
    until `grace` seconds after the first signal, SIGKILL its group if it
    still runs, reap it and close its log."""
    procs = list(procs)
    for p in procs:
        if p.running:
            p.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        if p.popen is not None:
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.signal_group(signal.SIGKILL)
        p._reap()


def wait_for_signal(check: Callable[[], None] | None = None, interval: float = 0.5) -> None:
    """Block until SIGINT or SIGTERM arrives (the foreground commands of
    scripts/: Ctrl-C stops them), calling `check()` every `interval` seconds;
    an exception from `check` ends the wait and propagates. The previous
    signal handlers are restored. Call from the main thread."""
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not received:
            if check is not None:
                check()
            time.sleep(interval)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
