"""`fedkube run`: a whole federation on one machine, as separate processes.

The reducer, the combiners and the job's simulated clients run as the same
`fedkube reducer|combiner|client` processes that Kubernetes would run, talking
gRPC on loopback, with the embedded defaults (a local directory as the object
store, SQLite as the state store) unless --store/--state say otherwise. This
process only starts them, shows live progress from the state store and stops
them at the end. The simulated clients are forked from one `fedkube client-pool`
process that imported the job's code once (fedkube/clientpool.py, started before
the combiners so its imports overlap theirs); with ``--no-fork`` each is a
`fedkube client` process of its own.

It also watches them: a combiner or the reducer that exits ends the run; each
simulated client that exits is reported (name, exit code, its log's last
lines), and once fewer clients run than ``clients.minUpdates`` (no round can
reach its quorum any more: the run starts no new clients) the federation is
stopped within a second, the job is recorded Failed with the clients' own
error, and the run exits 1.

Metrics: the reducer (``--health-port 0``) and every combiner
(``--metrics-port 0``) serve Prometheus metrics on a free loopback port; the
scrape targets go to ``WORKDIR/run/metrics-targets.json`` in Prometheus'
file_sd format (``file_sd_configs``), rewritten whenever a role's port is
known, and the run prints where they are.

Least privilege: each role process gets only the credentials it needs. A
simulated client gets its own client token (`LocalFederation._client_env`) and
no reducer token, store credential or MongoDB URI; the reducer gets the reducer
token only.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fedkube.clientpool import PooledProcess, PoolEntry, write_clients
from fedkube.contract import is_credential_env
from fedkube.errors import FedkubeError, SpecError
from fedkube.process import ChildProcess, stop_all, write_atomic
from fedkube.report import job_status, make_console, render_status
from fedkube.rpc import CLIENT_TOKEN_ENV, REDUCER_TOKEN_ENV
from fedkube.settings import state_uri, store_uri
from fedkube.spec import FederatedJob, load_job_file, parse_job
from fedkube.state import EventRecord, StateStore, open_state_store
from fedkube.telemetry import METRICS_PATH
from fedkube.vocabulary import EventKind, Phase


@dataclass
class LocalRunOptions:
    job_file: Path
    workdir: Path
    rounds: int | None = None
    clients: int | None = None
    store: str | None = None
    state: str | None = None
    fresh: bool = False
    log_level: str = "info"
    progress: bool = True
    #: fork the simulated clients from one `fedkube client-pool` process (else one
    #: `fedkube client` process each)
    fork: bool = True


#: SIGTERM grace of the role processes before SIGKILL
STOP_GRACE = 10.0
#: log lines shown when a role process fails
TAIL_LINES = 15
#: log lines shown for each simulated client that exits
CLIENT_TAIL_LINES = 5
#: stop order: clients first, then their pool (which reaps them), then the reducer, the
#: combiners last
STOP_ORDER = {"client": 0, "client-pool": 1, "reducer": 2, "combiner": 3}
#: how long start_clients waits for the pool to fork its clients
POOL_FORK_TIMEOUT = 120.0
#: how long the reducer retries reaching its stores at start (--startup-timeout)
REDUCER_STARTUP_TIMEOUT = 20.0
#: longest reason recorded for a run whose clients exited
MAX_REASON = 500
#: the Prometheus file_sd file of a run, in its run directory
METRICS_TARGETS = "metrics-targets.json"
#: where the role processes of a local run listen
LOOPBACK = "127.0.0.1"


def client_error(log_text: str) -> str:
    """A client's own error from its log: the last line that reports an error (the
    `error: ...` line of a client that could not start, a traceback's last line,
    or the ``error`` of a JSON log line at level error), else the last line."""
    last = ""
    for line in reversed(log_text.splitlines()):
        line = line.strip()
        if not line:
            continue
        last = last or line
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if isinstance(rec, dict):
                if rec.get("level") in ("error", "critical") and rec.get("error"):
                    return " ".join(f"{rec.get('msg', 'error')}: {rec['error']}".split())
                continue
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
        if "Error" in line or "Exception" in line:
            return line
    if last.startswith("{"):
        try:
            rec = json.loads(last)
            last = str(rec.get("msg", last)) if isinstance(rec, dict) else last
        except ValueError:
            pass
    return last or "no output"


class Proc(ChildProcess):
    """A role process, ``python -P -m fedkube ROLE ...``, logging to WORKDIR/logs/NAME.log."""

    def __init__(
        self, role: str, name: str, argv: list[str], log: Path, *, cwd: Path, env: dict[str, str]
    ) -> None:
        super().__init__(
            name,
            argv,
            log,
            cwd=cwd,
            env=env,
            stop_grace=STOP_GRACE,
            tail_lines=TAIL_LINES,
            banner=False,  # the log is the role's JSON lines only
        )
        self.role = role


class PooledClient(Proc):
    """A simulated client forked by the client pool: a `Proc` whose process handle is
    the pool's files (`PooledProcess`), so it is watched, stopped, killed and
    reported like a client process of its own. Its pid is 0 until the pool forked
    it, and nothing is signalled until then (the pool passes a stop on)."""

    def __init__(
        self, argv: list[str], log: Path, *, cwd: Path, env: dict[str, str], handle: PooledProcess
    ) -> None:
        # argv and env: the `fedkube client` process it stands for (what start() runs)
        super().__init__("client", handle.name, argv, log, cwd=cwd, env=env)
        self.handle = handle
        self.popen = handle

    def signal_group(self, sig: int) -> None:
        if self.handle.forked:
            super().signal_group(sig)


def effective_job(opts: LocalRunOptions) -> FederatedJob:
    job = load_job_file(opts.job_file)
    if opts.rounds is None and opts.clients is None:
        return job
    manifest = job.to_manifest()
    if opts.rounds is not None:
        manifest["spec"]["rounds"] = opts.rounds
    if opts.clients is not None:
        manifest["spec"]["clients"].setdefault("simulation", {})["clients"] = opts.clients
    return parse_job(manifest, source=f"{opts.job_file} (with command-line overrides)")


class LocalFederation:
    def __init__(self, opts: LocalRunOptions, console: Console) -> None:
        self.opts = opts
        self.console = console
        self.job = effective_job(opts)
        self.job_dir = opts.job_file.resolve().parent
        self.workdir = opts.workdir.resolve()
        self.run_dir = self.workdir / "run"
        self.procs: list[Proc] = []
        self._exited: dict[int, Proc] = {}  # simulated clients seen exited, by id(proc)
        self.combiners: dict[str, str] = {}
        #: role process name -> host:port of its /metrics (the reducer once it listens)
        self.metrics: dict[str, str] = {}
        self._metrics_announced = False
        self._client_tokens: dict[int, str] = {}
        self._issuer: StateStore | None = None  # issues the simulated clients' credentials
        self.pool: Proc | None = None  # the client pool, until it was given its clients
        self.pool_dir = self.run_dir / "clients"
        self.reducer_token = secrets.token_urlsafe(24)
        self.store_uri = store_uri(self.job, self.workdir, opts.store)
        self.state_uri = state_uri(self.job, self.workdir, opts.state)

    # ------------------------------------------------------------ processes

    def _base_env(self) -> dict[str, str]:
        """This process's environment for a role process, without any fedkube token."""
        env = {
            k: v for k, v in os.environ.items() if k not in (CLIENT_TOKEN_ENV, REDUCER_TOKEN_ENV)
        }
        env["PYTHONPATH"] = os.pathsep.join(
            [str(self.job_dir), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
        )
        env["PYTHONUNBUFFERED"] = "1"
        # The job directory is on PYTHONPATH explicitly; the current directory must
        # not be (a folder there could shadow a standard-library module).
        env["PYTHONSAFEPATH"] = "1"
        return env

    def _env(self, role: str) -> dict[str, str]:
        """The environment of the reducer or a combiner: the reducer token (what the
        reducer presents and a combiner checks) and the store credentials."""
        env = self._base_env()
        env[REDUCER_TOKEN_ENV] = self.reducer_token
        return env

    def _client_env(self, i: int | None) -> dict[str, str]:
        """Simulated client i's environment: its own client token and no other
        credential (no reducer token, no S3 keys, no MongoDB URI: a client reaches
        the store through presigned URLs or paths its combiner gives it). For
        i None (the client pool) no token at all."""
        st = self.job.spec.state_store
        hidden = {st.mongodb.uri_env} if st is not None and st.mongodb is not None else set()
        env = {
            k: v
            for k, v in self._base_env().items()
            if not is_credential_env(k) and k not in hidden
        }
        if i is not None:
            env[CLIENT_TOKEN_ENV] = self.client_token_for(i)
        return env

    def client_token_for(self, i: int) -> str:
        """Simulated client i's own token (client id ``client-<i>``), issued into the
        job's credentials the first time this run asks; the credentials earlier
        runs issued to that client are revoked first, so only this run's work."""
        if i not in self._client_tokens:
            if self._issuer is None:
                self._issuer = open_state_store(self.state_uri)
            cid = f"client-{i}"
            self._issuer.revoke_credentials(self.job.key, cid)
            self._client_tokens[i] = self._issuer.issue_credential(
                self.job.key, cid, "simulated client of fedkube run"
            )[0]
        return self._client_tokens[i]

    def _spawn(
        self, role: str, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> Proc:
        env = self._env(role) if env is None else env
        proc = Proc(
            role, name, self._command(role, args), self._log(name), cwd=self.job_dir, env=env
        )
        self.procs.append(proc)
        return proc.start()

    def _log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def _command(self, role: str, args: list[str]) -> list[str]:
        """``python -P -m fedkube ROLE ARGS --log-level LEVEL``."""
        return [
            sys.executable,
            "-P",
            "-m",
            "fedkube",
            role,
            *args,
            "--log-level",
            self.opts.log_level,
        ]

    def _wait_port(self, proc: Proc, port_file: Path, timeout: float = 60.0) -> int:
        """The port `proc` writes to `port_file` once it listens (ServiceUnavailable
        with its log tail when it exits first or takes longer than `timeout`)."""

        def port() -> int | None:
            return int(port_file.read_text()) if port_file.exists() else None

        return proc.wait_ready(port, timeout, what="start listening", interval=0.05)

    def stop(self) -> None:
        """SIGTERM every role process (clients, then the reducer, then the
        combiners); SIGKILL what still runs 10 s later."""
        procs = sorted(self.procs, key=lambda p: STOP_ORDER.get(p.role, len(STOP_ORDER)))
        stop_all(procs, STOP_GRACE)
        for token in self.pool_dir.glob("*.token"):  # of clients the pool never forked
            token.unlink(missing_ok=True)
        if self._issuer is not None:
            self._issuer.close()
            self._issuer = None

    # ------------------------------------------------------------ run

    def prepare(self, state: StateStore) -> bool:
        """Returns False when the job already succeeded (nothing to run)."""
        name = self.job.key
        existing = state.get_job(name)
        if existing is not None and self.opts.fresh:
            raise SpecError(
                f"job {name!r} already exists in {state.uri}; --fresh could not remove it"
            )
        finished = (
            existing is not None
            and existing.phase == Phase.SUCCEEDED
            and existing.completed_rounds >= self.job.spec.rounds
        )
        return not finished

    def setup(self) -> tuple[Path, Path]:
        """Create the workdir layout; return (effective job file, run dir)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.opts.fresh:
            self._wipe()
        (self.workdir / "logs").mkdir(exist_ok=True)
        run_dir = self.run_dir
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        job_yaml = run_dir / "job.yaml"
        job_yaml.write_text(yaml.safe_dump(self.job.to_manifest(), sort_keys=False))
        return job_yaml, run_dir

    def run(self) -> int:
        job_yaml, run_dir = self.setup()
        state = open_state_store(self.state_uri)
        try:
            if not self.prepare(state):
                self.console.print(
                    f"[green]job {self.job.key!r} already succeeded[/] in "
                    f"{self.workdir} (use --fresh to start over)"
                )
                self.console.print(render_status(job_status(state, self.job.key)))
                return 0
            return self._run(state, job_yaml, run_dir)
        finally:
            self.stop()
            state.close()

    def _wipe(self) -> None:
        if (
            self.opts.store
            or self.opts.state
            or self.job.spec.storage.s3
            or self.job.spec.state_store.mongodb
        ):
            raise SpecError(
                "--fresh only wipes the embedded defaults; with S3 or MongoDB use a "
                "new job name or delete the job's data yourself"
            )
        for p in (
            self.workdir / "store",
            self.workdir / "reducer",
            self.workdir / "combiners",
            self.workdir / "clients",
            self.workdir / "logs",
        ):
            shutil.rmtree(p, ignore_errors=True)
        for suffix in ("", "-wal", "-shm"):
            (self.workdir / f"state.db{suffix}").unlink(missing_ok=True)

    def _run(self, state: StateStore, job_yaml: Path, run_dir: Path) -> int:
        self.start_pool(job_yaml)  # imports the job's code while the combiners start
        self.start_combiners(job_yaml, run_dir)
        reducer = self.start_reducer(job_yaml)
        self.start_clients(job_yaml)
        self.console.print(
            f"[bold]fedkube run[/] job [bold]{self.job.key}[/]: {self.job.spec.rounds} rounds, "
            f"{len(self.combiners)} combiners, {self.job.spec.clients.simulation.clients} "
            f"clients  (workdir {self.workdir}, logs in {self.workdir / 'logs'})"
        )
        return self._watch(state, reducer)

    def _common(self, job_yaml: Path) -> list[str]:
        return ["--job", str(job_yaml), "--store", self.store_uri, "--state", self.state_uri]

    def _job_args(self, job_yaml: Path) -> list[str]:
        return ["--job", str(job_yaml), "--job-dir", str(self.job_dir)]

    def start_combiner(
        self, job_yaml: Path, run_dir: Path, name: str, port: int = 0, host: str = LOOPBACK
    ) -> Proc:
        """Start one combiner (port 0: any free port, reported through a port file);
        its metrics go on another free port, reported through a file of their own."""
        pf = run_dir / f"{name}.port"
        pf.unlink(missing_ok=True)
        mpf = run_dir / f"{name}.metrics-port"
        mpf.unlink(missing_ok=True)
        self.metrics.pop(name, None)
        return self._spawn(
            "combiner",
            name,
            [
                *self._common(job_yaml),
                "--name",
                name,
                "--listen",
                f"{host}:{port}",
                "--port-file",
                str(pf),
                "--metrics-port",
                "0",
                "--metrics-port-file",
                str(mpf),
                "--workdir",
                str(self.workdir / "combiners" / name),
            ],
        )

    def wait_combiner(self, proc: Proc, run_dir: Path, host: str = LOOPBACK) -> str:
        """Wait until a combiner listens; record and return its address (and its
        metrics address, whose port file is written before the gRPC one)."""
        port = self._wait_port(proc, run_dir / f"{proc.name}.port")
        self.combiners[proc.name] = f"{host}:{port}"
        mpf = run_dir / f"{proc.name}.metrics-port"
        if mpf.exists():
            self.metrics[proc.name] = f"{host}:{int(mpf.read_text())}"
            self.write_metrics_targets()
        return self.combiners[proc.name]

    def start_combiners(self, job_yaml: Path, run_dir: Path) -> dict[str, str]:
        """Start every combiner; return name -> address once all listen."""
        names = [f"combiner-{i}" for i in range(self.job.spec.combiners.replicas)]
        procs = [self.start_combiner(job_yaml, run_dir, n) for n in names]
        for p in procs:
            self.wait_combiner(p, run_dir)
        return self.combiners

    def start_reducer(self, job_yaml: Path, extra: list[str] | None = None) -> Proc:
        """Start the reducer; its health port (/healthz, /status, /metrics) is a free
        loopback port, reported through a port file (`poll_reducer_metrics`)."""
        hpf = self._reducer_health_file()
        hpf.unlink(missing_ok=True)
        self.metrics.pop("reducer", None)
        self._metrics_announced = False
        env = self._env("reducer")
        env["FEDKUBE_BIND_HOST"] = LOOPBACK
        return self._spawn(
            "reducer",
            "reducer",
            [
                *self._common(job_yaml),
                *(x for n, a in self.combiners.items() for x in ("--combiner", f"{n}={a}")),
                "--workdir",
                str(self.workdir / "reducer"),
                "--startup-timeout",
                str(REDUCER_STARTUP_TIMEOUT),
                "--health-port",
                "0",
                "--health-port-file",
                str(hpf),
                *(extra or []),
            ],
            env=env,
        )

    def start_client(
        self, job_yaml: Path, i: int, n_clients: int, extra: list[str] | None = None
    ) -> Proc:
        """Start simulated client i of n_clients on combiner i mod replicas, as a
        `fedkube client` process of its own."""
        client = self._client_entry(i, n_clients)
        return self._spawn(
            "client",
            client.name,
            [*self._client_args(job_yaml, client), *(extra or [])],
            env=self._client_env(i),
        )

    def _client_entry(self, i: int, n_clients: int) -> PoolEntry:
        """Simulated client i of n_clients, whether forked by the pool or a process of
        its own: its name and id, its combiner (i mod replicas), workdir and log."""
        names = list(self.combiners)
        name = f"client-{i}"
        return PoolEntry(
            name=name,
            client_id=name,
            client_index=i,
            num_clients=n_clients,
            connect=self.combiners[names[i % len(names)]],
            workdir=str(self.workdir / "clients" / name),
            log=str(self._log(name)),
        )

    def _client_args(self, job_yaml: Path, client: PoolEntry) -> list[str]:
        """`client`'s `fedkube client` flags."""
        return [
            "--connect",
            client.connect,
            *self._job_args(job_yaml),
            "--client-id",
            client.client_id,
            "--client-index",
            str(client.client_index),
            "--num-clients",
            str(client.num_clients),
            "--workdir",
            client.workdir,
        ]

    def start_clients(self, job_yaml: Path, count: int | None = None) -> list[Proc]:
        """Start the simulated clients: forked by the client pool (started now unless
        `start_pool` already did) when the run forks and the pool has no clients
        yet, else one `fedkube client` process each."""
        n_clients = self.job.spec.clients.simulation.clients if count is None else count
        if self.opts.fork and n_clients and (self.pool is not None or not self._pool_used):
            return self._start_pooled(job_yaml, n_clients)
        return [self.start_client(job_yaml, i, n_clients) for i in range(n_clients)]

    # ------------------------------------------------------------ client pool

    @property
    def _pool_used(self) -> bool:
        return any(p.role == "client-pool" for p in self.procs)

    def start_pool(self, job_yaml: Path, clients: int | None = None) -> Proc | None:
        """Start the client pool (`fedkube client-pool`), which imports the client
        runtime and the job's code and then waits for its clients (`start_clients`).
        It has the clients' environment without any token. None when the run does
        not fork or there are no simulated clients (`clients`, default the job's)."""
        n_clients = self.job.spec.clients.simulation.clients if clients is None else clients
        if not self.opts.fork or self.pool is not None or self._pool_used or not n_clients:
            return self.pool
        shutil.rmtree(self.pool_dir, ignore_errors=True)
        self.pool_dir.mkdir(parents=True)
        self.pool = self._spawn(
            "client-pool",
            "client-pool",
            [*self._job_args(job_yaml), "--pool-dir", str(self.pool_dir)],
            env=self._client_env(None),
        )
        return self.pool

    def _start_pooled(self, job_yaml: Path, n_clients: int) -> list[Proc]:
        """Give the pool its clients (each one's token in a 0600 file it reads and
        deletes); wait until it forked them all or exited."""
        pool = self.start_pool(job_yaml, n_clients)
        assert pool is not None
        self.pool = None  # the pool takes clients once
        entries = [self._client_entry(i, n_clients) for i in range(n_clients)]
        clients = [
            PooledClient(  # argv, env: the process it would be without the pool
                self._command("client", self._client_args(job_yaml, e)),
                Path(e.log),
                cwd=self.job_dir,
                env=self._client_env(e.client_index),
                handle=PooledProcess(self.pool_dir, e.name, lambda: pool.returncode),
            )
            for e in entries
        ]
        tokens = [self.client_token_for(e.client_index) for e in entries]
        write_clients(self.pool_dir, entries, tokens)
        self.procs.extend(clients)
        deadline = time.monotonic() + POOL_FORK_TIMEOUT
        while time.monotonic() < deadline and any(
            not c.handle.forked and c.running for c in clients
        ):
            time.sleep(0.02)
        return list(clients)

    # ------------------------------------------------------------ metrics

    @property
    def metrics_targets_path(self) -> Path:
        return self.run_dir / METRICS_TARGETS

    def metrics_targets(self) -> list[dict[str, Any]]:
        """The scrape targets known so far, in Prometheus' file_sd format."""
        out: list[dict[str, Any]] = []
        for role in ("reducer", "combiner"):
            names = [p.name for p in self.procs if p.role == role]
            addrs = sorted({self.metrics[n] for n in names if n in self.metrics})
            if addrs:
                out.append({"targets": addrs, "labels": {"role": role}})
        return out

    def write_metrics_targets(self) -> Path:
        """Write the targets file (atomically: Prometheus may read it any time)."""
        path = self.metrics_targets_path
        write_atomic(path, json.dumps(self.metrics_targets(), indent=2) + "\n")
        return path

    def _reducer_health_file(self) -> Path:
        return self.run_dir / "reducer.health-port"

    def poll_reducer_metrics(self) -> str | None:
        """The reducer's metrics address once it listens (its port file is there), else
        None; the first time, the targets file is rewritten with it."""
        if "reducer" not in self.metrics:
            pf = self._reducer_health_file()
            if not pf.exists():
                return None
            self.metrics["reducer"] = f"{LOOPBACK}:{int(pf.read_text())}"
            self.write_metrics_targets()
        return self.metrics["reducer"]

    def wait_reducer_metrics(self, proc: Proc, timeout: float = 60.0) -> str:
        """Wait until the reducer serves its metrics; return host:port."""
        return proc.wait_ready(
            self.poll_reducer_metrics, timeout, what="serve its metrics", interval=0.05
        )

    def _announce_metrics(self) -> None:
        if self._metrics_announced or self.poll_reducer_metrics() is None:
            return
        self._metrics_announced = True
        where = ", ".join(f"{n} http://{a}{METRICS_PATH}" for n, a in sorted(self.metrics.items()))
        self.console.print(
            f"metrics: {where}  (Prometheus file_sd targets: {self.metrics_targets_path})",
            highlight=False,
            soft_wrap=True,
        )

    def _watch(self, state: StateStore, reducer: Proc) -> int:
        name = self.job.key
        last_line = ""
        clients_failed: str | None = None
        live: Live | None = None
        if self.opts.progress and self.console.is_terminal:
            live = Live(console=self.console, refresh_per_second=4, transient=True)
            live.start()
        try:
            while True:
                rc = reducer.returncode
                self._announce_metrics()
                view = self._progress(state, name)
                if view is not None:
                    if live is not None:
                        live.update(view[1])
                    elif view[0] != last_line and self.opts.progress:
                        self.console.print(view[0], highlight=False, markup=False)
                        last_line = view[0]
                dead = [p for p in self.procs if p.role == "combiner" and not p.running]
                if rc is not None or dead:
                    break
                clients_failed = self._check_clients()
                if clients_failed is not None:
                    break
                time.sleep(0.25)
        finally:
            if live is not None:
                live.stop()
        if clients_failed is not None:
            return self._clients_failed(state, clients_failed)
        rec = state.get_job(name)
        if reducer.running:
            for p in dead:
                self.console.print(
                    f"[red]{p.name} exited with {p.returncode}[/]:\n{escape(p.log_tail())}",
                    soft_wrap=True,
                )
            return 1
        if rec is not None:
            self.console.print(render_status(job_status(state, name)))
        if rec is None or rec.phase != Phase.SUCCEEDED:
            self.console.print(
                f"[red]job {name!r} did not succeed[/] (phase "
                f"{rec.phase if rec else 'unknown'}, reducer exit "
                f"{reducer.returncode}); reducer log tail:\n{escape(reducer.log_tail())}",
                soft_wrap=True,
            )
            return 1
        return 0

    # ------------------------------------------------------------ clients that exit

    def _check_clients(self) -> str | None:
        """Report each simulated client that exited since the last call; the reason
        the run must stop once fewer run than clients.minUpdates (else None)."""
        clients = [p for p in self.procs if p.role == "client"]
        for p in clients:
            if not p.running and id(p) not in self._exited:
                self._exited[id(p)] = p
                self.console.print(
                    f"[red]{escape(p.name)} exited with {p.returncode}[/]: "
                    f"{escape(client_error(p.log_tail()))}\n"
                    f"{escape(p.log_tail(CLIENT_TAIL_LINES))}",
                    highlight=False,
                    soft_wrap=True,
                )
        alive = sum(1 for p in clients if p.running)
        need = self.job.spec.clients.min_updates
        if not self._exited or alive >= need:
            return None
        first = next(iter(self._exited.values()))
        reason = (
            f"{len(self._exited)} of {len(clients)} simulated clients exited ({alive} still "
            f"running, clients.minUpdates is {need}); {first.name} exited with "
            f"{first.returncode}: {client_error(first.log_tail())}"
        )
        reason = " ".join(reason.split())
        return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."

    def _clients_failed(self, state: StateStore, reason: str) -> int:
        """Stop the federation, record the job Failed with `reason`, show the log tail."""
        name = self.job.key
        first = next(iter(self._exited.values()))
        self.console.print(
            f"[red]job {name!r} cannot run[/]: {escape(reason)}\n"
            f"{escape(first.name)} log tail ({first.log_path}):\n{escape(first.log_tail())}",
            highlight=False,
            soft_wrap=True,
        )
        self.stop()  # the reducer first records that it was interrupted; Failed comes after
        try:
            if state.get_job(name) is None:
                state.create_job(name, self.job.to_manifest())
            state.update_job(name, phase=Phase.FAILED, message=reason, completed_at=time.time())
            state.add_event(
                EventRecord(job=name, kind=EventKind.JOB_FAILED, message=reason, level="error")
            )
        except FedkubeError as exc:
            self.console.print(f"[yellow]cannot record the failure[/]: {escape(str(exc))}")
        return 1

    def _progress(self, state: StateStore, name: str) -> tuple[str, Any] | None:
        try:
            rec = state.get_job(name)
            if rec is None:
                return None
            rounds = state.get_rounds(name)
        except FedkubeError:
            return None
        total = self.job.spec.rounds
        cur = rounds[-1] if rounds else None
        per = ""
        if cur is not None:
            per = "  ".join(
                f"{c}: {p.get('received', 0)}/{p.get('selected', 0)}"
                + (
                    f" (-{p['rejected'] + p['failed']})"
                    if p.get("rejected", 0) + p.get("failed", 0)
                    else ""
                )
                for c, p in sorted(cur.combiners.items())
            )
        metrics = "  ".join(f"{k}={v:.4f}" for k, v in sorted(rec.metrics.items()))
        state_txt = (
            f"round {cur.round}/{total} attempt {cur.attempt} {cur.status}"
            if cur
            else "waiting for clients"
        )
        line = (
            f"[{rec.phase}] {rec.completed_rounds}/{total} done | {state_txt} | {per} | {metrics}"
        )
        table = Table.grid(padding=(0, 2))
        table.add_row(Text("Job", style="bold"), f"{name}  [{rec.phase}]")
        bar_w = 30
        filled = int(bar_w * rec.completed_rounds / max(total, 1))
        table.add_row(
            Text("Rounds", style="bold"),
            f"{'█' * filled}{'░' * (bar_w - filled)} {rec.completed_rounds}/{total}",
        )
        table.add_row(Text("Now", style="bold"), state_txt)
        if per:
            table.add_row(Text("Updates", style="bold"), per)
        if metrics:
            table.add_row(Text("Metrics", style="bold"), metrics)
        return line, table


def run_local(opts: LocalRunOptions, console: Console | None = None) -> int:
    console = console or make_console()
    fed = LocalFederation(opts, console)
    old = signal.getsignal(signal.SIGTERM)

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        return fed.run()
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted: stopping the federation (state is kept; run again to resume)[/]"
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)


def phase_exit_code(phase: str) -> int:
    return 0 if phase == Phase.SUCCEEDED else (1 if phase == Phase.FAILED else 2)
