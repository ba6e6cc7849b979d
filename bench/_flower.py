"""Flower's Deployment Engine on loopback: the baseline of bench/round_overhead.py.

Flower (``flwr``, pinned to FLWR_VERSION) lives in a virtual environment of
its own, ``~/.cache/fedkube/flwr-venv`` (or $FEDKUBE_FLWR_VENV): it pins
protobuf below what fedkube's grpcio-tools needs, so it cannot share fedkube's.
`ensure_venv` creates it with ``python -m venv`` and ``pip install
flwr==FLWR_VERSION numpy`` the first time, and reuses it while its ``flwr
--version`` says FLWR_VERSION.

`Deployment` runs Flower's components as processes of their own on 127.0.0.1
with free ports, without TLS, telemetry off (FLWR_TELEMETRY_ENABLED=0), each
with a FLWR_HOME of its own under the work directory (nothing lands in
~/.flwr):

* ``flower-superlink --insecure``: one HTTP port for the Fleet, Control and
  Runtime APIs (flwr 1.42 serves them all on ``--host/--port``), its state in
  memory (no ``--database``), runtime dependency installation off (there is no
  network here, and the app's dependencies are in the venv already). It starts
  a SuperExec, which runs the ServerApp as a ``flwr-serverapp`` process.
* N SuperNodes, ``flower-supernode --insecure --superlink 127.0.0.1:PORT`` with
  ``--node-config "partition-id=i num-partitions=N"`` and a Runtime API port
  each, and for each its SuperExec, which runs a new ``flwr-clientapp`` process
  for every message the node receives. They start STARTING at a time, the next
  ones once these registered with the SuperLink, and `start` returns once
  ``flwr supernode list`` shows all N online: start-up is never in a round.
* ``flwr run bench/flower_app bench`` submits the app (its run config
  overridden from a TOML file) through the Control API. The ServerApp writes
  each round's start and end to a JSON file, and whether it finished
  (bench/flower_app/overhead_flwr/server_app.py says what it measures);
  `Deployment.run` waits for that.

How the SuperNodes start (`fork`): a SuperNode and its SuperExec are two
Python processes of about 100 MB each, so 100 of them would not fit in this
machine's memory next to the 100 ClientApp processes of a round. By default a
fork server (this file run by the Flower venv's Python: ``python _flower.py
forkserver``) imports the SuperNode's and the SuperExec's code once, freezes
its heap (``gc.freeze()``) and forks every SuperNode, with ``--isolation
process``, and its SuperExec, ``flower-superexec --insecure
--runtime-api-address ... --parent-pid ...``, the command the SuperNode itself
runs in its default subprocess isolation; each then runs Flower's own ``main``
with that argv, so the forked processes share the imported code's pages and
take ~55 MB together. Nothing else differs: same code, same arguments, same
polling; the ClientApps are still new ``flwr-clientapp`` processes, started by
the SuperExec as Flower does. ``fork=False`` starts every SuperNode as a
process of its own in Flower's default subprocess isolation instead (it
starts its SuperExec itself); round times agree with the forked ones.

Every process (and the fork server's every child) is started in a session of
its own, so `Deployment.close` ends it with all it started (SuperExec,
ServerApp, ClientApps): SIGTERM to the process group, SIGKILL 10 s later.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any, Final

#: the Flower release the baseline runs (and the venv is reused for)
FLWR_VERSION: Final = "1.42.0"
#: where the venv is, when set (else DEFAULT_VENV)
VENV_ENV: Final = "FEDKUBE_FLWR_VENV"
DEFAULT_VENV: Final = Path.home() / ".cache" / "fedkube" / "flwr-venv"
#: the Flower app: pyproject.toml and the overhead_flwr package
APP_DIR: Final = Path(__file__).resolve().parent / "flower_app"
#: the name of the SuperLink connection in the CLI's config.toml
CONNECTION: Final = "bench"
LOOPBACK: Final = "127.0.0.1"
STOP_GRACE: Final = 10.0
#: seconds for one component to start (import flwr, bind, register)
START_TIMEOUT: Final = 120.0
#: SuperNodes started at once (the next ones once these registered)
STARTING: Final = 4
#: how often a run's status is asked for while it runs (a CLI call: ~1 CPU second)
STATUS_SECONDS: Final = 30.0

Log = Callable[[str], None]

PR_SET_PDEATHSIG: Final = 1
_prctl: Any
try:  # looked up now: a preexec_fn must not load libraries (other threads may run)
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def die_with_parent() -> None:
    """In a new child: SIGKILL it when its parent ends (Linux's PR_SET_PDEATHSIG;
    nothing elsewhere), so that a benchmark killed outright leaves no SuperNode
    polling for ever. (The parent starts its children from its main thread.)
    fedkube.process has the same; the fork server needs it in Flower's venv, where
    fedkube cannot be imported."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class FlowerUnavailable(RuntimeError):
    """The Flower venv could not be set up (no network, no venv module, ...)."""


class FlowerRunFailed(RuntimeError):
    """Flower's run ended, or was given up, before its last round: a finding about
    Flower (e.g. overload), not a failure of this script. `log` has the run's and
    the SuperLink's last lines."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


# ------------------------------------------------------------------ the venv


def venv_path() -> Path:
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV).expanduser()


def installed_version(venv: Path) -> str | None:
    """What ``flwr --version`` of `venv` says, or None when there is none."""
    flwr = venv / "bin" / "flwr"
    if not flwr.exists():
        return None
    env = {**flower_env(venv), "FLWR_HOME": str(venv / "flwr-home")}
    try:
        out = subprocess.run(
            [str(flwr), "--version"], env=env, capture_output=True, text=True, timeout=120
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"(\d+\.\d+\.\d+\S*)", out)
    return m.group(1) if m else None


def ensure_venv(log: Log = print) -> Path:
    """The venv with flwr FLWR_VERSION, set up first if need be; FlowerUnavailable
    (with pip's last lines) when it cannot be."""
    venv = venv_path()
    if installed_version(venv) == FLWR_VERSION:
        return venv
    log(f"setting up Flower {FLWR_VERSION} in {venv} (once; a minute or two) ...")
    steps = []
    if not (venv / "bin" / "python").exists():
        steps.append([sys.executable, "-m", "venv", str(venv)])
    steps.append(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
         "--progress-bar", "off", f"flwr=={FLWR_VERSION}", "numpy"]
    )  # fmt: skip
    for cmd in steps:
        tail: list[str] = []
        try:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        except OSError as exc:
            raise FlowerUnavailable(f"{cmd[0]}: {exc}") from exc
        assert proc.stdout is not None
        for line in proc.stdout:  # pip's progress, as it goes
            line = line.rstrip()
            tail = [*tail[-19:], line]
            if line.startswith(("Collecting", "Installing", "Successfully", "ERROR")):
                log(f"  {line}")
        if proc.wait() != 0:
            raise FlowerUnavailable(
                f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n" + "\n".join(tail)
            )
    got = installed_version(venv)
    if got != FLWR_VERSION:
        raise FlowerUnavailable(f"{venv}: flwr --version says {got!r}, not {FLWR_VERSION}")
    return venv


def flower_env(venv: Path) -> dict[str, str]:
    """This process's environment for a Flower process: the Flower venv first on
    PATH (the SuperLink and the SuperNode start ``flower-superexec``, which starts
    ``flwr-clientapp``, by name), none of fedkube's Python or Flower settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FLWR_"))}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ------------------------------------------------------------------ processes


@dataclass
class _Proc:
    """A process of the deployment: our child (`popen`), or the fork server's."""

    name: str
    pid: int
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    out: IO[bytes] | None = None
    start: str = ""  # its start time (/proc/PID/stat field 22), to tell a reused pid

    def __post_init__(self) -> None:
        st = _stat(self.pid)
        self.start = st[19] if st else ""

    def signal_group(self, sig: int) -> None:
        """Signal its process group (a session of its own), unless its pid is now
        another process's."""
        st = _stat(self.pid)
        if st is None or st[19] == self.start:
            _signal_group(self.pid, sig)

    @property
    def running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        st = _stat(self.pid)  # the fork server reaps its children: gone, or a zombie a moment
        return st is not None and st[0] not in ("Z", "X")

    @property
    def status(self) -> str:
        code = self.popen.returncode if self.popen is not None else None
        return "exited" if code is None else f"exited {code}"

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class ForkServer:
    """``python _flower.py forkserver`` in the Flower venv: `spawn` asks it to fork a
    SuperNode or a SuperExec (see the module docstring)."""

    def __init__(self, venv: Path, workdir: Path) -> None:
        self.log = workdir / "forkserver.log"
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in close()
        self.popen = subprocess.Popen(
            # -P: not bench/ first on sys.path (its scripts' names could shadow a module)
            [str(venv / "bin" / "python"), "-P", str(Path(__file__).resolve()), "forkserver"],
            cwd=workdir,
            env=flower_env(venv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._out,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        if self._reply(START_TIMEOUT) != "ready":
            raise RuntimeError(f"the Flower fork server did not start:\n{self._tail()}")

    def _tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def _reply(self, timeout: float) -> str:
        assert self.popen.stdout is not None
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout)
        return self.popen.stdout.readline().decode().strip() if ready else ""

    def spawn(self, argv: list[str], log: Path, env: dict[str, str]) -> int:
        """Fork `argv` (``flower-supernode ...`` or ``flower-superexec ...``) with
        `env` added, logging to `log`; its pid."""
        assert self.popen.stdin is not None
        request = {"argv": argv, "log": str(log), "env": env}
        self.popen.stdin.write((json.dumps(request) + "\n").encode())
        self.popen.stdin.flush()
        reply = self._reply(30)
        if not reply.isdigit():
            raise RuntimeError(f"the Flower fork server failed:\n{self._tail()}")
        return int(reply)

    def close(self) -> None:
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        try:
            self.popen.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            _signal_group(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=STOP_GRACE)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._out.close()


def forkserver() -> None:
    """The fork server's loop (in the Flower venv): one JSON request a line on stdin,
    the forked child's pid a line on stdout. Each child starts a session of its own,
    sends its output to its log and runs the component's ``main`` with its argv."""
    import gc

    # (the modules a running SuperNode and SuperExec use, imported once for all)
    import flwr.supernode.fleet_http_client
    import flwr.supernode.fleet_http_connection
    import flwr.supernode.main
    import flwr.supernode.start_client_internal  # noqa: F401
    from flwr.supercore.cli.flower_superexec import flower_superexec
    from flwr.supernode.cli.flower_supernode import flower_supernode

    mains: dict[str, Callable[[], Any]] = {
        "flower-supernode": flower_supernode,
        "flower-superexec": flower_superexec,
    }

    def reap(*_: object) -> None:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass

    signal.signal(signal.SIGCHLD, reap)
    gc.collect()
    gc.freeze()  # the collector never touches (and so never copies) the shared heap
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            print(pid, flush=True)
            continue
        code = 1
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()
            die_with_parent()  # with the fork server, which ends with the benchmark
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            os.environ.update(req["env"])
            sys.argv = req["argv"]
            mains[req["argv"][0]]()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


def free_port(taken: set[int]) -> int:
    """A loopback port nothing listens on now (and not in `taken`, which it joins)."""
    while True:
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            port: int = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string, for plain paths


# ------------------------------------------------------------------ the deployment


@dataclass
class FlowerRound:
    round: int
    seconds: float  # configure_train called .. aggregate_train returned (ServerApp clock)
    gap: float  # the previous round's end .. this round's start (0 for round 1)
    #: the replies that were results: fewer than the SuperNodes when some were errors
    #: (e.g. a ClientApp that did not start in time was given up)
    replies: int


class Deployment:
    """One SuperLink and `nodes` SuperNodes on loopback; `run` the app on them.

    ``with Deployment(venv, workdir, nodes) as d: d.start(); rounds = d.run(...)``
    """

    def __init__(
        self, venv: Path, workdir: Path, nodes: int, *, fork: bool = True, log: Log = print
    ) -> None:
        self.venv = venv
        self.bin = venv / "bin"
        self.workdir = workdir
        self.nodes = nodes
        self.fork = fork
        self.log = log
        self.procs: list[_Proc] = []
        self.forkserver: ForkServer | None = None
        self.ports: set[int] = set()
        self.port = 0  # the SuperLink's
        self.run_started = 0.0  # time.monotonic() when `run` submitted the app
        self.rounds_done = 0
        workdir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ processes

    def _home(self, name: str) -> dict[str, str]:
        home = self.workdir / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        return {"FLWR_HOME": str(home)}

    def _spawn(self, name: str, argv: list[str], home: str | None = None) -> _Proc:
        """Start `argv` with FLWR_HOME `home` (default: `name`), logging to NAME.log."""
        log = self.workdir / f"{name}.log"
        out = open(log, "wb")  # noqa: SIM115 - closed in close()
        popen = subprocess.Popen(
            argv,
            cwd=self.workdir,
            env={**flower_env(self.venv), **self._home(home or name)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: close() ends it whole
            preexec_fn=die_with_parent,
        )
        proc = _Proc(name, popen.pid, log, popen, out)
        self.procs.append(proc)
        return proc

    def _fork(self, name: str, argv: list[str], home: str) -> _Proc:
        assert self.forkserver is not None
        log = self.workdir / f"{name}.log"
        proc = _Proc(name, self.forkserver.spawn(argv, log, self._home(home)), log)
        self.procs.append(proc)
        return proc

    def _wait(self, proc: _Proc, ready: Callable[[], bool], what: str) -> None:
        t0 = time.monotonic()
        while not ready():
            if not proc.running:
                raise RuntimeError(f"{proc.name} {proc.status} before it {what}:\n{proc.tail()}")
            if time.monotonic() - t0 > START_TIMEOUT:
                raise RuntimeError(f"{proc.name} did not {what} in {START_TIMEOUT:.0f} s")
            time.sleep(0.1)

    def _cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "flwr"), *args],
            cwd=self.workdir,
            env={**flower_env(self.venv), **self._home("cli")},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def online(self) -> int:
        """SuperNodes the SuperLink lists as online (``flwr supernode list``)."""
        res = self._cli("supernode", "list", "--format", "json")
        try:
            nodes = json.loads(res.stdout).get("nodes", [])
        except ValueError:
            return 0
        return sum(1 for n in nodes if n.get("status") == "online")

    def start(self) -> float:
        """Start the SuperLink, then the SuperNodes; return the seconds it took, once
        all of them are online."""
        t0 = time.monotonic()
        self.port = free_port(self.ports)
        (self.workdir / "home" / "cli").mkdir(parents=True, exist_ok=True)
        (self.workdir / "home" / "cli" / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{LOOPBACK}:{self.port}"\ninsecure = true\n'
        )
        link = self._spawn(
            "superlink",
            [str(self.bin / "flower-superlink"), "--insecure", "--host", LOOPBACK,
             "--port", str(self.port), "--disable-runtime-dependency-installation"],
        )  # fmt: skip
        if self.fork:
            self.forkserver = ForkServer(self.venv, self.workdir)
        self._wait(link, self._healthy, "answered /health")
        for first in range(0, self.nodes, STARTING):
            batch = [self._start_node(i) for i in range(first, min(self.nodes, first + STARTING))]
            for node in batch:
                self._wait(node, partial(_registered, node), "registered with the SuperLink")
            if (first + STARTING) % 20 == 0 and first + STARTING < self.nodes:
                self.log(f"    {first + STARTING}/{self.nodes} SuperNodes registered")
        t1 = time.monotonic()
        while (online := self.online()) < self.nodes:
            if time.monotonic() - t1 > START_TIMEOUT:
                raise RuntimeError(f"only {online} of {self.nodes} SuperNodes online")
            time.sleep(1)
        return time.monotonic() - t0

    def _start_node(self, i: int) -> _Proc:
        """SuperNode i (and its SuperExec, forked here or started by the SuperNode)."""
        name, port = f"supernode-{i}", free_port(self.ports)  # its Runtime API
        argv = ["--insecure", "--superlink", f"{LOOPBACK}:{self.port}",
                "--host", LOOPBACK, "--port", str(port),
                "--node-config", f"partition-id={i} num-partitions={self.nodes}"]  # fmt: skip
        if not self.fork:
            return self._spawn(name, [str(self.bin / "flower-supernode"), *argv])
        node = self._fork(name, ["flower-supernode", *argv, "--isolation", "process"], name)
        self._fork(
            f"superexec-{i}",
            ["flower-superexec", "--insecure", "--runtime-api-address", f"{LOOPBACK}:{port}",
             "--parent-pid", str(node.pid)],
            name,  # the FLWR_HOME of its SuperNode, as when the SuperNode starts it
        )  # fmt: skip
        return node

    # ------------------------------------------------------------ the run

    def run(
        self, *, rounds: int, params: int, tensors: int, seconds: float, timeout: float
    ) -> list[FlowerRound]:
        """Run the app (`rounds` FedAvg rounds over every SuperNode, a model of `params`
        float32 parameters in `tensors` tensors, ClientApps sleeping `seconds`) and
        return its rounds, as the ServerApp timed them.

        ``flwr run`` only submits it; then this waits for the ServerApp's timings
        file to say it finished (or failed), asking ``flwr list`` for the run's
        status every STATUS_SECONDS in case the ServerApp died without a word. (A
        ``flwr run --stream`` that follows the run's log can end early: with 100
        SuperNodes its stream broke off in round 1 of a run that went on.)"""
        timings = self.workdir / "timings.json"
        timings.unlink(missing_ok=True)
        overrides = {
            "num-server-rounds": rounds,
            "num-nodes": self.nodes,
            "params": params,
            "tensors": tensors,
            "train-seconds": float(seconds),
            "timings-file": str(timings),
        }
        run_config = self.workdir / "run-config.toml"
        run_config.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in overrides.items()))
        res = self._cli("run", str(APP_DIR), CONNECTION, "--run-config", str(run_config),
                        "--format", "json")  # fmt: skip
        try:
            run_id = int(json.loads(res.stdout)["run-id"])
        except (ValueError, KeyError, TypeError):
            raise RuntimeError(f"flwr run failed:\n{res.stdout}\n{res.stderr}") from None
        t0 = last_status = self.run_started = time.monotonic()
        data: dict[str, Any] = {}
        while not (data.get("finished") or data.get("error")):
            time.sleep(0.5)
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(timings.read_text())
            self.rounds_done = sum(1 for r in data.get("rounds", []) if "committed" in r)
            now = time.monotonic()
            if not self.procs[0].running:
                raise RuntimeError(f"the SuperLink exited during the run:\n{self.procs[0].tail()}")
            if now - t0 > timeout:
                raise FlowerRunFailed(
                    f"not ended after {timeout:.0f} s: {self.progress()}", self._log(run_id)
                )
            if now - last_status > STATUS_SECONDS:
                last_status = now
                if self.status(run_id).startswith("finished") and not data.get("finished"):
                    with contextlib.suppress(OSError, ValueError):
                        data = json.loads(timings.read_text())
                    break
        done = [r for r in data.get("rounds", []) if "committed" in r]
        if len(done) < rounds:
            times = ", ".join(f"{r['committed'] - r['start']:.2f}" for r in done)
            results = ", ".join(str(r["replies"]) for r in done)
            raise FlowerRunFailed(
                f"run {self.status(run_id) or 'ended'} after {len(done)} of {rounds} rounds "
                f"([{times}] s with [{results}] results of {self.nodes})"
                + (f": {data['error']}" if data.get("error") else ""),
                self._log(run_id),
            )
        out = []
        for prev, r in zip([None, *done], done, strict=False):
            gap = r["start"] - prev["committed"] if prev else 0.0
            out.append(FlowerRound(r["round"], r["committed"] - r["start"], gap, r["replies"]))
        return out

    def status(self, run_id: int) -> str:
        """The run's status as ``flwr list`` says it (e.g. ``finished:completed``)."""
        res = self._cli("list", "--run-id", str(run_id), "--format", "json")
        try:
            runs = json.loads(res.stdout).get("runs", [])
            return str(runs[0].get("status", "")) if runs else ""
        except (ValueError, AttributeError):
            return ""

    def _log(self, run_id: int, lines: int = 40) -> str:
        """The last lines of the run's log (``flwr log --show``) and the SuperLink's."""
        res = self._cli("log", str(run_id), "--show")
        run_log = "\n".join((res.stdout + res.stderr).splitlines()[-lines:])
        return f"--- flwr log {run_id}\n{run_log}\n--- superlink\n{self.procs[0].tail(lines)}"

    # ------------------------------------------------------------ the end

    def _roots(self) -> list[int]:
        roots = [p.pid for p in self.procs]
        if self.forkserver is not None:
            roots.append(self.forkserver.popen.pid)
        return roots

    def kill(self) -> str:
        """SIGKILL every process of the deployment now (safe from another thread);
        what it was doing (`progress`)."""
        tree = process_tree(self._roots())
        state = self.progress(tree)
        _signal_tree(tree, signal.SIGKILL)
        return state

    def progress(self, tree: dict[int, str] | None = None) -> str:
        """How far the run got: rounds done, seconds, ClientApp processes running."""
        if not self.run_started:
            return "before the run started"
        apps = 0
        for pid in tree if tree is not None else process_tree(self._roots()):
            with contextlib.suppress(OSError):
                apps += b"flwr-clientapp" in Path(f"/proc/{pid}/cmdline").read_bytes()
        return (
            f"{self.rounds_done} rounds done {time.monotonic() - self.run_started:.0f} s "
            f"into the run, {apps} flwr-clientapp processes running for {self.nodes} SuperNodes"
        )

    def close(self) -> None:
        """End every process of the deployment: SIGTERM, SIGKILL what is left 10 s
        later. Not only their process groups: the SuperLink starts its SuperExec
        (and so the ServerApp) in a session of their own, so whatever descends from
        the processes started here is found in /proc first (before a parent's exit
        hands its children to init) and signalled by pid."""
        tree = process_tree(self._roots())
        _signal_tree(tree, signal.SIGTERM)
        for p in self.procs:
            p.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while any(_alive(pid, start) for pid, start in tree.items()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        tree.update(process_tree(self._roots()))  # anything started meanwhile
        _signal_tree(tree, signal.SIGKILL)
        for p in self.procs:
            p.signal_group(signal.SIGKILL)
            if p.popen is not None:
                p.popen.wait(timeout=STOP_GRACE)
            if p.out is not None:
                p.out.close()
        self.procs.clear()
        if self.forkserver is not None:
            self.forkserver.close()
            self.forkserver = None

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _registered(node: _Proc) -> bool:
    """The SuperNode logs its ID once the SuperLink registered it."""
    return "SuperNode ID" in node.tail(200)


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command (state, ppid, pgrp, ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str) -> bool:
    """Process `pid` still runs, and is the one that started at `start` (not a
    new process that reuses its pid)."""
    st = _stat(pid)
    return st is not None and st[19] == start and st[0] not in ("Z", "X")


def process_tree(roots: list[int]) -> dict[int, str]:
    """`roots` and every process below them (pid -> its start time, field 22 of
    /proc/PID/stat, which tells a pid reused by another process)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(int(st[1]), []).append(int(entry.name))
            starts[int(entry.name)] = st[19]
    out: dict[int, str] = {}
    todo = [pid for pid in roots if pid in starts]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out[pid] = starts[pid]
            todo += children.get(pid, [])
    return out


def _signal_tree(tree: dict[int, str], sig: int) -> None:
    for pid, start in tree.items():
        if _alive(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


if __name__ == "__main__":
    if sys.argv[1:] == ["forkserver"]:
        forkserver()
    else:
        raise SystemExit(f"usage: {sys.executable} {sys.argv[0]} forkserver (in the Flower venv)")
