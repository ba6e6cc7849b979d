"""The client pool: simulated clients forked from one process that imported the job once.

`fedkube run` starts 8 (or 1,000) simulated clients. As separate processes each
one imports fedkube and the job's code (torch: ~2 s of CPU each); on a laptop
the start-up of the clients costs more than their training. Instead `fedkube
run` starts one `fedkube client-pool` process (fedkube/client/pool.py), with
the clients' environment, as soon as it starts: it imports the client runtime
and the job's in-process functions while the combiners start, then forks one
client per entry of the clients file, each in a session of its own.

This module is what the two sides share, a protocol of files in one directory
(``WORKDIR/run/clients/``), and the launcher's view of a pooled client:

- ``clients.json``, written (atomically) by the launcher once the combiners
  listen: one `PoolEntry` per client (id, index, combiner address, workdir,
  log, token file). The pool waits for it.
- ``NAME.token`` (mode 0600): the client's own token. The forked client reads
  it and deletes it; the pool never reads it, so no process holds another
  client's credential.
- ``NAME.pid``: written by the pool as it forks the client.
- ``NAME.exit``: the client's exit status (negative: killed by that signal),
  written by the pool when it reaps the client.
- ``failed``: written by the pool when it cannot start any client (the job's
  code does not import); its text is the error, which the pool also writes
  into every client's log.

`PooledProcess` gives the launcher what `subprocess.Popen` gives it for a
client process of its own (pid, poll, wait), from these files, so a pooled
client is stopped, killed, reaped and reported like any other (`PooledClient`).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from fedkube.process import write_atomic

#: the clients file in the pool directory
CLIENTS_FILE = "clients.json"
#: the file the pool writes when it cannot start any client
FAILED_FILE = "failed"
#: how often PooledProcess.wait looks at the exit file
POLL_INTERVAL = 0.02


@dataclass(frozen=True)
class PoolEntry:
    """One client the pool forks: what `fedkube client` would get as flags."""

    name: str
    client_id: str
    client_index: int
    num_clients: int
    connect: str
    workdir: str
    log: str


def pid_path(pool_dir: Path, name: str) -> Path:
    return pool_dir / f"{name}.pid"


def exit_path(pool_dir: Path, name: str) -> Path:
    return pool_dir / f"{name}.exit"


def token_path(pool_dir: Path, name: str) -> Path:
    return pool_dir / f"{name}.token"


def write_clients(pool_dir: Path, entries: Sequence[PoolEntry], tokens: Sequence[str]) -> None:
    """The launcher's side: each client's token file (0600), then the clients file."""
    for entry, token in zip(entries, tokens, strict=True):
        write_atomic(token_path(pool_dir, entry.name), token + "\n", mode=0o600)
    write_atomic(pool_dir / CLIENTS_FILE, json.dumps([asdict(e) for e in entries], indent=1))


def read_clients(pool_dir: Path) -> list[PoolEntry] | None:
    """The pool's side: the clients, or None while the launcher has not written them."""
    try:
        raw = json.loads((pool_dir / CLIENTS_FILE).read_text())
    except FileNotFoundError:
        return None
    return [PoolEntry(**e) for e in raw]


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):  # not there yet, or being written
        return None


class PooledProcess:
    """A pooled client as the launcher sees it: the subset of `subprocess.Popen`
    that `fedkube.process.ChildProcess` uses (pid, poll, wait).

    `pool_returncode` says whether the pool still runs. The client's status is
    its exit file once the pool reaped it; a pool that exited without writing
    one (killed: its clients die with it, PR_SET_PDEATHSIG) makes it -SIGKILL;
    a pool that exited before forking it (the job's code did not import) makes
    it the pool's own exit status."""

    def __init__(
        self, pool_dir: Path, name: str, pool_returncode: Callable[[], int | None]
    ) -> None:
        self.pool_dir = pool_dir
        self.name = name
        self._pool_returncode = pool_returncode
        self._pid: int | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        """The client's pid (0 until the pool forked it)."""
        if self._pid is None:
            self._pid = _read_int(pid_path(self.pool_dir, self.name))
        return self._pid or 0

    @property
    def forked(self) -> bool:
        return self.pid > 0

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        code = _read_int(exit_path(self.pool_dir, self.name))
        if code is None:
            pool = self._pool_returncode()
            if pool is None:
                return None
            code = _read_int(exit_path(self.pool_dir, self.name))  # reaped as the pool ended
            if code is None:
                code = -signal.SIGKILL if self.forked else (pool or 1)
        self.returncode = code
        return code

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.name, timeout or 0.0)
            time.sleep(POLL_INTERVAL)
        return code
