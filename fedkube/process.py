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

`run_contained` runs one command of user code the same way (its own session),
with a time limit for its whole process group, its output streamed to a
size-capped log file (`CappedLog`, the tail kept in memory), and returns only
once no process of the group is left: the train/validate/init commands of a
client (fedkube.client.runner).

Failures raise fedkube.errors.ServiceUnavailable (with the log tail and a
`hint`). Standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, Self, TypeVar

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


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` so that another process reading it sees all of it or
    nothing: port, pid and exit files, configuration another process loads."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def read_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of a log file ("(no log)" when it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


class ProcessHandle(Protocol):
    """What ChildProcess uses of `subprocess.Popen`: a child forked by some other
    process (fedkube.clientpool.PooledProcess) can stand in for it."""

    returncode: int | None

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


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
        self.popen: ProcessHandle | None = None
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


# ------------------------------------------------------------ contained commands

#: SIGTERM grace before SIGKILL for a contained command (at most a quarter of its time)
COMMAND_TERM_GRACE = 5.0
#: a contained command's log file keeps at most this many bytes: the newest output
COMMAND_LOG_CAP = 8 << 20
#: the tail of a command's output kept in memory: at most this many lines and bytes
COMMAND_TAIL_LINES = 40
COMMAND_TAIL_BYTES = 4096
#: how long output is still read once the command's process group is gone
_DRAIN_SECONDS = 2.0
_READ_CHUNK = 1 << 16
_PROC = Path("/proc")


class CappedLog:
    """Output appended to `path`, of which at most `cap` bytes (the newest) are kept,
    and the last lines in memory (`tail`). Memory stays bounded whatever is written.

    It is written in two halves: when `path` would pass cap/2 bytes it becomes
    ``path.1`` (dropping the previous ``.1``) and a new `path` starts. `close()`
    joins the halves back into `path`, behind a line saying how much was dropped.
    A write error (disk full) stops the file, not the tail."""

    def __init__(self, path: Path, cap: int = COMMAND_LOG_CAP) -> None:
        self.path = path
        self.half = max(1, cap // 2)
        self.total = 0  # bytes written, dropped or not
        self._old = path.with_name(path.name + ".1")
        self._old.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] | None = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._size = 0
        self._tail = bytearray()
        self._trimmed = False
        self.error: OSError | None = None

    def write(self, data: bytes) -> None:
        self.total += len(data)
        self._tail += data
        if len(self._tail) > 2 * COMMAND_TAIL_BYTES:
            del self._tail[:-COMMAND_TAIL_BYTES]
            self._trimmed = True
        if self._file is None:
            return
        data = data[-self.half :]
        try:
            if self._size + len(data) > self.half and self._size:
                self._file.close()
                os.replace(self.path, self._old)
                self._file = open(self.path, "wb")  # noqa: SIM115
                self._size = 0
            self._file.write(data)
            self._size += len(data)
        except OSError as exc:
            self.error = exc
            self._close_file()

    def tail(self, lines: int = COMMAND_TAIL_LINES) -> str:
        """The last `lines` lines (at most COMMAND_TAIL_BYTES bytes) written."""
        text = bytes(self._tail[-COMMAND_TAIL_BYTES:]).decode("utf-8", "replace")
        out = text.rstrip().splitlines()
        if (self._trimmed or len(self._tail) > COMMAND_TAIL_BYTES) and len(out) > 1:
            out = out[1:]  # the first line is cut
        return "\n".join(out[-lines:])

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def close(self) -> None:
        """Close the file, joining its halves into `path` (at most `cap` bytes)."""
        self._close_file()
        if not self._old.exists():
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            kept = self._old.stat().st_size + self.path.stat().st_size
            with open(tmp, "wb") as out:
                out.write(
                    f"[fedkube: the first {self.total - kept} bytes of output were dropped; "
                    f"the last {kept} follow]\n".encode()
                )
                for part in (self._old, self.path):
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
            os.replace(tmp, self.path)
            self._old.unlink()
        except OSError as exc:  # the two halves stay as they are
            self.error = exc
            tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class CommandResult:
    """How a contained command ended. `returncode` is None when it was killed
    (`timed_out`: it ran out of time; `cancelled`: `cancel` was set)."""

    returncode: int | None
    timed_out: bool
    cancelled: bool
    seconds: float
    tail: str
    log_path: Path
    output_bytes: int


def run_contained(
    argv: Sequence[str],
    *,
    log_path: Path,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    cancel: threading.Event | None = None,
    term_grace: float = COMMAND_TERM_GRACE,
    log_cap: int = COMMAND_LOG_CAP,
) -> CommandResult:
    """Run `argv` in a session (and process group) of its own, stdin from /dev/null,
    stdout and stderr streamed by a reader thread into a `CappedLog` at `log_path`.

    The whole group is done within `timeout` seconds: SIGTERM at ``timeout - grace``
    (grace: `term_grace`, at most a quarter of `timeout`), SIGKILL at `timeout`. The
    group is also stopped when `cancel` is set, on any exception (KeyboardInterrupt
    included), and when the command exits leaving processes behind. Returns once no
    process of the group is left (waiting at most REAP_TIMEOUT after SIGKILL); OSError
    (FileNotFoundError, PermissionError, ...) when `argv` cannot be run. A process
    that starts a session of its own (setsid) leaves the group and is not tracked."""
    log = CappedLog(log_path, log_cap)
    rfd, wfd = os.pipe()
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=wfd,
            stderr=wfd,
            start_new_session=True,
        )
    except BaseException:
        os.close(rfd)
        log.close()
        raise
    finally:
        os.close(wfd)
    done = threading.Event()
    reader = threading.Thread(
        target=_pump, args=(rfd, log, done), name=f"output-{proc.pid}", daemon=True
    )
    reader.start()
    t0 = time.monotonic()
    kill_at = t0 + max(0.0, timeout)
    grace = max(0.0, min(term_grace, timeout / 4))
    ended = "error"
    try:
        ended = _wait_until(proc, kill_at - grace, cancel)
    finally:
        # SIGKILL at kill_at on a timeout; otherwise (processes left behind, a
        # cancel, an exception) after the grace, and never later than kill_at.
        now = time.monotonic()
        until = kill_at if ended == "timeout" else min(kill_at, now + grace)
        if ended in ("cancelled", "error"):
            until = now + grace
        stop_group(proc, max(0.1, until - now))
        done.set()
        reader.join(_DRAIN_SECONDS + 5)
        os.close(rfd)
        log.close()
    return CommandResult(
        returncode=proc.returncode if ended == "exited" else None,
        timed_out=ended == "timeout",
        cancelled=ended == "cancelled",
        seconds=time.monotonic() - t0,
        tail=log.tail(),
        log_path=log_path,
        output_bytes=log.total,
    )


def _wait_until(
    proc: subprocess.Popen[bytes], term_at: float, cancel: threading.Event | None
) -> str:
    """Wait for `proc` until `term_at` (monotonic): "exited", "timeout" or "cancelled"."""
    while True:
        try:
            proc.wait(timeout=max(0.0, min(0.05, term_at - time.monotonic())))
            return "exited"
        except subprocess.TimeoutExpired:
            pass
        if cancel is not None and cancel.is_set():
            return "cancelled"
        if time.monotonic() >= term_at:
            return "timeout"


def _pump(fd: int, log: CappedLog, done: threading.Event) -> None:
    """Copy the command's output from `fd` into `log` in chunks until EOF, or until
    `done` is set and nothing more arrives (at most _DRAIN_SECONDS later)."""
    drain_until: float | None = None
    poller = select.poll()  # not select(): no limit on the fd's number
    poller.register(fd, select.POLLIN)
    while True:
        if done.is_set():
            drain_until = drain_until or time.monotonic() + _DRAIN_SECONDS
            if time.monotonic() > drain_until:
                return
        if not poller.poll(100):
            if done.is_set():
                return
            continue
        try:
            data = os.read(fd, _READ_CHUNK)
        except OSError:
            return
        if not data:
            return
        log.write(data)


def is_zombie(pid: int) -> bool:
    """True when `pid` is gone or a zombie (exited, not yet reaped by its parent)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return True
    fields = stat[stat.rfind(")") + 2 :].split()
    return not fields or fields[0] in ("Z", "X")


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    """Send `sig` to each pid (gone ones and foreign ones are skipped)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def wait_gone(pids: Sequence[int], timeout: float) -> bool:
    """Wait until every pid is gone or a zombie; False when some still run at `timeout`."""
    end = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if not is_zombie(p)]
        if not alive or time.monotonic() > end:
            return not alive
        time.sleep(0.05)


def stop_pids(pids: Sequence[int], grace: float) -> None:
    """Stop processes that are not our children (a server recorded in a state file):
    SIGTERM, SIGKILL to what still runs after `grace` seconds, then wait (at most
    REAP_TIMEOUT) until they are gone."""
    kill_pids(pids, signal.SIGTERM)
    if not wait_gone(pids, grace):
        kill_pids(pids)
        wait_gone(pids, REAP_TIMEOUT)


def group_alive(pgid: int) -> bool:
    """True while a process (not a zombie) of process group `pgid` exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not _PROC.is_dir():
        return True
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop the process group `proc` leads (it was started with start_new_session):
    nothing if no process of it is left; else SIGTERM, SIGKILL after `grace`
    seconds, and wait (at most REAP_TIMEOUT) until the group is gone. `proc` is
    reaped."""
    pgid = proc.pid

    def gone(until: float) -> bool:
        while time.monotonic() < until:
            proc.poll()  # reap the leader, or it stays a zombie of the group
            if not group_alive(pgid):
                return True
            time.sleep(0.02)
        proc.poll()
        return not group_alive(pgid)

    proc.poll()
    if not group_alive(pgid):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, REAP_TIMEOUT)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        if gone(time.monotonic() + wait):
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=REAP_TIMEOUT)
