"""`fedkube client-pool`: many simulated clients forked from one warm process. I/O side.

The pool imports the client runtime and the job's entry points once (for an
in-process job: its modules, torch and all), then waits for the clients file
of `fedkube.clientpool` and forks one client per entry. A forked client:

- leads a session of its own (its process group is what a stop signals) and
  dies with the pool (PR_SET_PDEATHSIG), so no client outlives its reaper;
- writes its output to its own log, reads its own token from its token file
  and deletes it (the pool never reads a token: its environment, and so the
  clients' /proc/PID/environ, holds no credential at all);
- gets fresh seeds for Python's and numpy's global random generators, as a
  process of its own would;
- then runs exactly what `fedkube client` runs (`ClientRuntime.run`), and exits
  with the status `fedkube client` would have.

The pool stays as their reaper: it writes each client's exit status to its
exit file, passes SIGTERM and SIGINT on to every client still running, and
exits once none is left. It opens no gRPC channel and starts no thread before
it forks (neither survives a fork).

When the job's code cannot be imported the pool writes the error into the
``failed`` file and into every client's log (the `error: ...` line that
`fedkube client` prints) and exits 2: the launcher reports it as the clients'
own error, as it would for client processes of their own.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fedkube.client.runner import Entrypoints, TaskRunner, make_runner
from fedkube.client.runtime import ClientConfig, ClientRuntime
from fedkube.clientpool import (
    FAILED_FILE,
    PoolEntry,
    exit_path,
    pid_path,
    read_clients,
    token_path,
)
from fedkube.errors import FedkubeError
from fedkube.logs import get_logger
from fedkube.process import die_with_parent, write_atomic
from fedkube.rpc import CLIENT_TOKEN_ENV, check_address, read_token
from fedkube.spec import FederatedJob

#: how often the pool looks for the clients file
WAIT_INTERVAL = 0.01
#: exit statuses, as `fedkube client` has them
EXIT_ERROR = 2
EXIT_RUNTIME = 3


def run_pool(
    job: FederatedJob, job_dir: Path, pool_dir: Path, *, wait_timeout: float = 600.0
) -> int:
    """Import the job's entry points, wait for the clients file, fork the clients,
    reap them; the pool's exit status (0 once every client was reaped)."""
    log = get_logger("client-pool", job=job.key)
    sys.path.insert(0, str(job_dir))  # the job's in-process functions import from here
    try:
        make_runner(Entrypoints(), job, cwd=job_dir, workdir=pool_dir)  # imports the job's code
    except (FedkubeError, ValueError) as exc:
        return _fail_all(pool_dir, str(exc), wait_timeout)
    entries = _wait_clients(pool_dir, wait_timeout)
    if entries is None:
        log.error("no clients file", pool=str(pool_dir), waited_s=wait_timeout)
        return EXIT_ERROR
    children: dict[int, PoolEntry] = {}
    stopping: list[int] = []

    def forward(signum: int, frame: object) -> None:
        stopping.append(signum)
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for entry in entries:
        if stopping:
            break
        pid = _fork(entry, job, job_dir, pool_dir)
        children[pid] = entry
        write_atomic(pid_path(pool_dir, entry.name), str(pid))
    log.info("clients forked", clients=len(children))
    _reap(children, pool_dir)
    return 0


def _wait_clients(pool_dir: Path, timeout: float) -> list[PoolEntry] | None:
    deadline = time.monotonic() + timeout
    while (entries := read_clients(pool_dir)) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(WAIT_INTERVAL)
    return entries


def _fail_all(pool_dir: Path, error: str, timeout: float) -> int:
    """The job's code does not import: say so in `failed` and in every client's log."""
    line = " ".join(f"error: {error}".split()) + "\n"
    print(line, end="", file=sys.stderr, flush=True)
    write_atomic(pool_dir / FAILED_FILE, error)
    for entry in _wait_clients(pool_dir, timeout) or []:
        with open(entry.log, "a") as f:
            f.write(line)
    return EXIT_ERROR


def _reap(children: dict[int, PoolEntry], pool_dir: Path) -> None:
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        entry = children.pop(pid, None)
        if entry is not None:
            write_atomic(exit_path(pool_dir, entry.name), str(os.waitstatus_to_exitcode(status)))


def _fork(entry: PoolEntry, job: FederatedJob, job_dir: Path, pool_dir: Path) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pool_pid = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = EXIT_RUNTIME
    try:
        _become_client(entry, pool_pid)
        code = _client_main(entry, job, job_dir, pool_dir)
    except BaseException as exc:  # a forked child must never return into the pool's code
        with contextlib.suppress(Exception):
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _become_client(entry: PoolEntry, pool_pid: int) -> None:
    """A session of its own, death with the pool, its own log, fresh seeds."""
    os.setsid()
    die_with_parent()
    if os.getppid() != pool_pid:  # the pool died before the death signal was armed
        os._exit(EXIT_RUNTIME)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    fd = os.open(entry.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def _client_main(entry: PoolEntry, job: FederatedJob, job_dir: Path, pool_dir: Path) -> int:
    """What `fedkube client` does once its flags are parsed; its exit status."""
    try:
        token_file = token_path(pool_dir, entry.name)
        token = read_token(CLIENT_TOKEN_ENV, str(token_file))
        token_file.unlink(missing_ok=True)
        workdir = Path(entry.workdir).resolve()
        runner: TaskRunner = make_runner(Entrypoints(), job, cwd=job_dir, workdir=workdir)
        cfg = ClientConfig(
            address=check_address(entry.connect),
            client_id=entry.client_id,
            job=job.key,
            token=token,
            workdir=workdir,
            client_index=entry.client_index,
            num_clients=entry.num_clients,
        )
    except (FedkubeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    rt = ClientRuntime(cfg, runner)
    stop: Callable[..., None] = lambda *_: rt.stop()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        rt.run()
    except FedkubeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_RUNTIME
    return 0
