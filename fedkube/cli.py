"""The `fedkube` command line (typer).

Components are imported inside their commands, so `fedkube status` does not
load gRPC servers and `fedkube client` does not load the reducer.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from fedkube.errors import FedkubeError
from fedkube.report import make_console
from fedkube.settings import DEFAULT_WORKDIR

if TYPE_CHECKING:
    from fedkube.spec import FederatedJob
    from fedkube.state import StateStore

app = typer.Typer(
    help="fedkube: Kubernetes-native federated learning.\n\n"
    "Run a whole federation locally with `fedkube run JOB.yaml`, inspect it with "
    "`fedkube status`, fetch models with `fedkube models pull`. The role commands "
    "(reducer, combiner, client) are what the Kubernetes operator runs in its pods.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = typer.Typer(help="List and download global models of a job.", no_args_is_help=True)
app.add_typer(models_app, name="models")
clients_app = typer.Typer(
    help="Issue, list and revoke client credentials (one bearer token per client id).",
    no_args_is_help=True,
)
app.add_typer(clients_app, name="clients")

err = make_console(stderr=True)

WorkdirOpt = Annotated[
    Path,
    typer.Option("--workdir", "-w", help="Directory holding the embedded store, state and logs."),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Object store URI overriding the spec: file:///dir or "
        "s3://bucket?endpoint=host:port (credentials from AWS_ACCESS_KEY_ID/"
        "AWS_SECRET_ACCESS_KEY).",
    ),
]
StateOpt = Annotated[
    str | None,
    typer.Option(
        "--state",
        help="State store URI overriding the spec: sqlite:///path.db or mongodb://host:port/db.",
    ),
]
LogLevelOpt = Annotated[
    str, typer.Option("--log-level", help="debug, info, warning or error (JSON lines on stderr).")
]
JobFileOpt = Annotated[
    Path, typer.Option("--job", "-j", help="The FederatedJob manifest (YAML).", exists=False)
]
JobDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--job-dir",
        help="Directory that relative paths and in-process imports of the job resolve "
        "against, and where train commands run (default: the job file's directory).",
    ),
]
TlsCertOpt = Annotated[
    str | None, typer.Option("--tls-cert", help="Server certificate (PEM); enables TLS.")
]
TlsKeyOpt = Annotated[str | None, typer.Option("--tls-key", help="Server private key (PEM).")]
TlsClientCaOpt = Annotated[
    str | None,
    typer.Option(
        "--tls-client-ca", help="CA (PEM) that client certificates must chain to; enables mTLS."
    ),
]
TlsOpt = Annotated[
    bool,
    typer.Option("--tls", help="Use TLS, verifying the server with the system's trusted CAs."),
]
TlsClientCertOpt = Annotated[
    str | None, typer.Option("--tls-cert", help="Client certificate (PEM) for mutual TLS.")
]
TlsClientKeyOpt = Annotated[
    str | None, typer.Option("--tls-key", help="Client private key (PEM) for mutual TLS.")
]
TlsCaOpt = Annotated[
    str | None, typer.Option("--tls-ca", help="CA (PEM) to verify the server with; enables TLS.")
]


def _fail(exc: BaseException, code: int = 2) -> typer.Exit:
    # soft_wrap: one line however long (logs and scripts read the last line)
    err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(code)


def _setup_logging(level: str) -> None:
    from fedkube.logs import setup_logging

    setup_logging(level)


# ---------------------------------------------------------------- run


@app.command()
def run(
    job_file: Annotated[Path, typer.Argument(help="FederatedJob manifest (YAML).")],
    workdir: WorkdirOpt = Path(DEFAULT_WORKDIR),
    rounds: Annotated[
        int | None, typer.Option("--rounds", "-r", min=1, help="Override spec.rounds.")
    ] = None,
    clients: Annotated[
        int | None,
        typer.Option("--clients", min=0, help="Override spec.clients.simulation.clients."),
    ] = None,
    store: StoreOpt = None,
    state: StateOpt = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Delete this job's embedded state and models first (otherwise an "
            "unfinished job resumes and a finished one is reported).",
        ),
    ] = False,
    fork: Annotated[
        bool,
        typer.Option(
            "--fork/--no-fork",
            help="Fork the simulated clients from one process that imported the job's code "
            "once (`fedkube client-pool`: fast to start), or start a `fedkube client` "
            "process for each (for job code that cannot be forked, e.g. it starts threads "
            "or a GPU context when imported).",
        ),
    ] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")] = False,
    log_level: LogLevelOpt = "info",
) -> None:
    """Run a whole federation on this machine: reducer, combiners and the job's simulated
    clients as separate processes on loopback gRPC. Exits 0 only if the job Succeeded."""
    from fedkube.localrun import LocalRunOptions, run_local

    opts = LocalRunOptions(
        job_file=job_file,
        workdir=workdir,
        rounds=rounds,
        clients=clients,
        store=store,
        state=state,
        fresh=fresh,
        log_level=log_level,
        progress=not quiet,
        fork=fork,
    )
    try:
        rc = run_local(opts)
    except FedkubeError as exc:
        raise _fail(exc) from None
    raise typer.Exit(rc)


# ---------------------------------------------------------------- status


def _open_state(workdir: Path, state: str | None) -> StateStore:
    """--state, else the embedded SQLite store of the workdir."""
    from fedkube.settings import state_uri
    from fedkube.state import open_state_store

    if state is None and not (workdir / "state.db").exists():
        raise FedkubeError(
            f"no state store in {workdir.resolve()} (run `fedkube run` there, or "
            "pass --workdir or --state)"
        )
    return open_state_store(state_uri(None, workdir.resolve(), state))


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="Job name (default: all jobs).")] = None,
    workdir: WorkdirOpt = Path(DEFAULT_WORKDIR),
    state: StateOpt = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
    stale_after: Annotated[
        float,
        typer.Option(
            "--stale-after",
            min=0,
            help="A Running job whose reducer has not renewed its liveness for longer than "
            "this (seconds) is shown as having no reducer (JSON: reducerMissing).",
        ),
    ] = 30.0,
) -> None:
    """Show a job: phase, completed rounds, latest metrics, per-round metrics, timings and
    participants, failed attempts and recent warnings; a Running job whose reducer is gone
    (killed) shows as "Running (no reducer seen for ...)"."""
    from fedkube.report import job_status, render_status

    if output not in ("table", "json"):
        raise _fail(ValueError(f"--output must be table or json, not {output!r}"))
    try:
        st = _open_state(workdir, state)
        try:
            names = [name] if name else [j.name for j in st.list_jobs()]
            data = [job_status(st, n, stale_after=stale_after) for n in names]
        finally:
            st.close()
    except FedkubeError as exc:
        raise _fail(exc) from None
    if output == "json":
        print(json.dumps(data[0] if name else data, indent=2))
        return
    out = make_console()
    if not data:
        out.print("no jobs")
    for d in data:
        out.print(render_status(d))


# ---------------------------------------------------------------- models


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="Job name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")] = Path(
        "model.safetensors"
    ),
    round: Annotated[
        int | None, typer.Option("--round", help="Model after this round (default: the latest).")
    ] = None,
    workdir: WorkdirOpt = Path(DEFAULT_WORKDIR),
    state: StateOpt = None,
    store: StoreOpt = None,
) -> None:
    """Download a global model (safetensors) and check its sha256 against the lineage."""
    from fedkube.model import sha256_file
    from fedkube.state import ModelRecord
    from fedkube.store import open_object_store

    try:
        st = _open_state(workdir, state)
        try:
            rec: ModelRecord | None = st.get_model(name, round)
            job = st.get_job(name)
        finally:
            st.close()
        if rec is None:
            which = f"round {round}" if round is not None else "any round"
            raise FedkubeError(f"job {name!r} has no model for {which}")
        if store is None and job is not None:
            from fedkube.settings import store_uri
            from fedkube.spec import parse_job

            store = store_uri(parse_job(job.manifest), workdir.resolve())
        obj = open_object_store(store or f"file://{(workdir / 'store').resolve()}")
        obj.get_file(rec.key, output)
        if sha256_file(output) != rec.sha256:
            output.unlink()
            raise FedkubeError(f"{rec.key}: sha256 does not match the recorded lineage")
    except FedkubeError as exc:
        raise _fail(exc) from None
    err.print(
        f"wrote {output} (job {name}, round {rec.round}, {rec.size} bytes, "
        f"sha256 {rec.sha256[:12]})"
    )


@models_app.command("list")
def models_list(
    name: Annotated[str, typer.Argument(help="Job name.")],
    workdir: WorkdirOpt = Path(DEFAULT_WORKDIR),
    state: StateOpt = None,
) -> None:
    """List a job's models: round, key, parent, size, sha256."""
    try:
        st = _open_state(workdir, state)
        try:
            recs = st.list_models(name)
        finally:
            st.close()
    except FedkubeError as exc:
        raise _fail(exc) from None
    for r in recs:
        print(f"{r.round:>5}  {r.key}  {r.size:>12}  {r.sha256[:12]}")


# ---------------------------------------------------------------- clients


@clients_app.command("issue")
def clients_issue(
    name: Annotated[str, typer.Argument(help="Job name.")],
    client: Annotated[str, typer.Argument(help="The client id the token proves.")],
    workdir: WorkdirOpt = Path(DEFAULT_WORKDIR),
    state: StateOpt = None,
    note: Annotated[str, typer.Option("--note", help="Free text kept with the credential.")] = "",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the token to this file (mode 0600) instead of standard output; "
            "give it to the client as --token-file.",
        ),
    ] = None,
) -> None:
    """Issue a new token for one client of a job. The token is shown once (only its
    sha256 is stored); the client passes it as $FEDKUBE_CLIENT_TOKEN or --token-file.
    A client may hold several tokens (rotation): revoke the old one afterwards."""
    try:
        st = _open_state(workdir, state)
        try:
            if st.get_job(name) is None:
                err.print(f"[yellow]note:[/] job {name!r} is not in {st.uri} yet")
            token, rec = st.issue_credential(name, client, note)
        finally:
            st.close()
    except (FedkubeError, ValueError) as exc:
        raise _fail(exc) from None
    if output is None:
        print(token)
    else:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    err.print(f"issued credential {rec.token_id} for client {client!r} of job {name!r}")


@clients_app.command("list")
def clients_list(
    name: Annotated[str, typer.Argument(help="Job name.")],
    workdir: WorkdirOpt = Path(DEFAULT_WORKDIR),
    state: StateOpt = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
    all_: Annotated[bool, typer.Option("--all", help="Include revoked credentials.")] = False,
) -> None:
    """List a job's client credentials: client, token id, issued, revoked, note (never
    the tokens, which are not stored)."""
    import dataclasses

    if output not in ("table", "json"):
        raise _fail(ValueError(f"--output must be table or json, not {output!r}"))
    try:
        st = _open_state(workdir, state)
        try:
            recs = [r for r in st.list_credentials(name) if all_ or r.revoked_at is None]
        finally:
            st.close()
    except FedkubeError as exc:
        raise _fail(exc) from None
    if output == "json":
        rows = [{k: v for k, v in dataclasses.asdict(r).items() if k != "digest"} for r in recs]
        print(json.dumps(rows, indent=2))
        return
    fmt = "%Y-%m-%d %H:%M:%S"
    for r in recs:
        revoked = (
            f"revoked {time.strftime(fmt, time.localtime(r.revoked_at))}" if r.revoked_at else ""
        )
        issued = time.strftime(fmt, time.localtime(r.issued_at))
        print(f"{r.client:<24} {r.token_id}  issued {issued}  {revoked}  {r.note}".rstrip())


@clients_app.command("revoke")
def clients_revoke(
    name: Annotated[str, typer.Argument(help="Job name.")],
    client: Annotated[str, typer.Argument(help="The client whose credentials to revoke.")],
    token_id: Annotated[
        str | None,
        typer.Option(
            "--token-id", help="Revoke only this credential (see `fedkube clients list`)."
        ),
    ] = None,
    workdir: WorkdirOpt = Path(DEFAULT_WORKDIR),
    state: StateOpt = None,
) -> None:
    """Revoke a client's credentials (all of them, or one with --token-id). Combiners
    refuse the token within seconds and close that client's task stream; other
    clients are not disturbed."""
    try:
        st = _open_state(workdir, state)
        try:
            n = st.revoke_credentials(name, client, token_id)
        finally:
            st.close()
    except FedkubeError as exc:
        raise _fail(exc) from None
    if n == 0:
        raise _fail(
            ValueError(
                f"client {client!r} of job {name!r} has no live credential"
                + (f" {token_id!r}" if token_id else "")
            )
        )
    err.print(f"revoked {n} credential(s) of client {client!r} of job {name!r}")


# ---------------------------------------------------------------- roles


def _load(job_file: Path) -> FederatedJob:
    from fedkube.spec import load_job_file

    return load_job_file(job_file)


@app.command()
def combiner(
    job_file: JobFileOpt,
    name: Annotated[str, typer.Option("--name", help="This combiner's name (unique in the job).")],
    listen: Annotated[
        str,
        typer.Option(
            "--listen", help="host:port to serve clients and the reducer on (port 0 picks one)."
        ),
    ] = "0.0.0.0:7070",
    store: StoreOpt = None,
    state: StateOpt = None,
    workdir: WorkdirOpt = Path(DEFAULT_WORKDIR),
    port_file: Annotated[
        Path | None, typer.Option("--port-file", help="Write the port actually bound to this file.")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            help="Serve GET /metrics (Prometheus) and /healthz over HTTP on this port, on "
            "the host of --listen (0 picks a free port; default: off).",
        ),
    ] = None,
    metrics_port_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-port-file", help="Write the metrics port actually bound to this file."
        ),
    ] = None,
    reducer_token_file: Annotated[
        str | None,
        typer.Option(
            "--reducer-token-file",
            help="File with the reducer's bearer token (else $FEDKUBE_REDUCER_TOKEN).",
        ),
    ] = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_client_ca: TlsClientCaOpt = None,
    log_level: LogLevelOpt = "info",
) -> None:
    """Serve a combiner: clients connect here; it selects them for rounds, checks their
    updates and keeps one running weighted sum (memory O(model)).

    Each client proves its id with a token of its own, issued by `fedkube clients
    issue` and checked against the job's credentials in the state store."""
    _setup_logging(log_level)
    from fedkube.combiner.server import serve_combiner
    from fedkube.rpc import REDUCER_TOKEN_ENV, read_token, server_tls
    from fedkube.settings import state_uri, store_uri
    from fedkube.state import open_state_store
    from fedkube.store import open_object_store

    try:
        job = _load(job_file)
        wd = workdir.resolve()
        obj = open_object_store(store_uri(job, wd, store))
        st = open_state_store(state_uri(job, wd, state))
        rtok = read_token(REDUCER_TOKEN_ENV, reducer_token_file)
        tls = server_tls(tls_cert, tls_key, tls_client_ca)
    except (FedkubeError, ValueError) as exc:
        raise _fail(exc) from None
    try:
        asyncio.run(
            serve_combiner(
                name=name,
                job=job,
                store=obj,
                state=st,
                listen=listen,
                reducer_token=rtok,
                workdir=wd,
                tls=tls,
                port_file=port_file,
                metrics_port=metrics_port,
                metrics_port_file=metrics_port_file,
            )
        )
    except (OSError, RuntimeError) as exc:
        # grpc reports a taken port or a key that does not match its certificate
        # as "Failed to bind"; name what we tried.
        raise _fail(
            RuntimeError(f"cannot serve on {listen}{' with TLS' if tls else ''}: {exc}")
        ) from None


@app.command()
def reducer(
    job_file: JobFileOpt,
    combiner: Annotated[
        list[str] | None,
        typer.Option("--combiner", "-c", help="A combiner as NAME=HOST:PORT; repeat for each."),
    ] = None,
    combiner_template: Annotated[
        str | None,
        typer.Option(
            "--combiner-template",
            help="Combiners as NAME=HOST:PORT with {i} for the index, e.g. "
            "'mnist-combiner-{i}=mnist-combiner-{i}.mnist-combiner:7070'; their number is "
            "spec.combiners.replicas of the job record, re-read before every round.",
        ),
    ] = None,
    health_port: Annotated[
        int | None,
        typer.Option(
            "--health-port",
            min=0,
            help="Serve GET /healthz, /status (JSON) and /metrics (Prometheus) on this port "
            "(0 picks a free port).",
        ),
    ] = None,
    health_port_file: Annotated[
        Path | None,
        typer.Option(
            "--health-port-file", help="Write the health port actually bound to this file."
        ),
    ] = None,
    linger: Annotated[
        bool,
        typer.Option(
            "--linger",
            help="After the job finished, keep running (and serving health) until "
            "terminated instead of exiting; for Deployments.",
        ),
    ] = False,
    store: StoreOpt = None,
    state: StateOpt = None,
    workdir: WorkdirOpt = Path(DEFAULT_WORKDIR),
    job_dir: JobDirOpt = None,
    token_file: Annotated[
        str | None,
        typer.Option(
            "--token-file", help="File with the reducer bearer token (else $FEDKUBE_REDUCER_TOKEN)."
        ),
    ] = None,
    tls: TlsOpt = False,
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsClientCertOpt = None,
    tls_key: TlsClientKeyOpt = None,
    startup_timeout: Annotated[
        float,
        typer.Option(
            "--startup-timeout",
            min=0,
            help="How long to retry (with backoff) reaching the state and object stores at "
            "start before failing the job (seconds).",
        ),
    ] = 60.0,
    liveness_interval: Annotated[
        float,
        typer.Option(
            "--liveness-interval",
            min=0.05,
            help="How often to renew the job record's reducer_seen_at while running "
            "(seconds); `fedkube status` reports a Running job whose reducer was not "
            "seen for longer than its --stale-after as having no reducer.",
        ),
    ] = 5.0,
    log_level: LogLevelOpt = "info",
) -> None:
    """Run a job's round loop against its combiners. Resumes from the last committed round;
    exits 0 when the job Succeeded, 1 when it Failed (or the stores cannot be reached
    within --startup-timeout, or the reducer crashed: one line on stderr, the job Failed)."""
    _setup_logging(log_level)
    from fedkube.localrun import phase_exit_code
    from fedkube.logs import get_logger
    from fedkube.reducer import ReducerConfig, run_reducer
    from fedkube.reducer.main import ReducerFailed, open_stores
    from fedkube.rpc import REDUCER_TOKEN_ENV, client_tls, read_token
    from fedkube.settings import state_uri, store_uri

    try:
        job = _load(job_file)
        combiners: dict[str, str] = {}
        if not combiner and not combiner_template:
            raise ValueError("name the combiners: --combiner NAME=HOST:PORT or --combiner-template")
        if combiner_template:
            from fedkube.reducer import expand_template

            expand_template(combiner_template, 1)  # validates the form
        for c in combiner or []:
            n, sep, addr = c.partition("=")
            if not sep or not n or ":" not in addr:
                raise ValueError(f"--combiner {c!r}: expected NAME=HOST:PORT")
            combiners[n] = addr
        wd = workdir.resolve()
        token = read_token(REDUCER_TOKEN_ENV, token_file)
        tls_cfg = client_tls(tls_ca, tls_cert, tls_key, force=tls)
        store_u, state_u = store_uri(job, wd, store), state_uri(job, wd, state)
    except (FedkubeError, ValueError) as exc:
        raise _fail(exc) from None
    try:
        obj, st = open_stores(
            job, store_u, state_u, timeout=startup_timeout, log=get_logger("reducer", job=job.key)
        )
        cfg = ReducerConfig(
            job=job,
            store=obj,
            state=st,
            combiners=combiners,
            reducer_token=token,
            workdir=wd,
            job_dir=(job_dir or job_file.parent).resolve(),
            tls=tls_cfg,
            combiner_template=combiner_template,
            liveness_seconds=liveness_interval,
        )
        sys.path.insert(0, str((job_dir or job_file.parent).resolve()))
        phase = run_reducer(
            cfg, health_port=health_port, health_port_file=health_port_file, linger=linger
        )
    except ReducerFailed as exc:
        raise _fail(exc, 1) from None
    raise typer.Exit(phase_exit_code(phase))


@app.command()
def client(
    connect: Annotated[str, typer.Option("--connect", help="Combiner address HOST:PORT.")],
    job: Annotated[
        str,
        typer.Option(
            "--job",
            "-j",
            help="Job name, or a FederatedJob manifest file whose spec.train gives "
            "the train/validate entrypoints.",
        ),
    ],
    client_id: Annotated[str, typer.Option("--client-id", help="Stable id of this client.")],
    train_fn: Annotated[
        str | None,
        typer.Option(
            "--train-fn",
            help="In-process train function package.module:function (warm between rounds).",
        ),
    ] = None,
    validate_fn: Annotated[
        str | None,
        typer.Option("--validate-fn", help="In-process validate function package.module:function."),
    ] = None,
    train_cmd: Annotated[
        str | None,
        typer.Option("--train-cmd", help="Train command, run as `CMD IN_MODEL OUT_MODEL`."),
    ] = None,
    validate_cmd: Annotated[
        str | None,
        typer.Option("--validate-cmd", help="Validate command, run as `CMD IN_MODEL OUT_JSON`."),
    ] = None,
    init_fn: Annotated[
        str | None,
        typer.Option(
            "--init-fn",
            help="In-process function package.module:function returning the seed model, "
            "for the job's init task.",
        ),
    ] = None,
    init_cmd: Annotated[
        str | None,
        typer.Option("--init-cmd", help="Seed-model command, run as `CMD OUT_MODEL`."),
    ] = None,
    workdir: WorkdirOpt = Path(DEFAULT_WORKDIR),
    job_dir: JobDirOpt = None,
    client_index: Annotated[
        int,
        typer.Option(
            "--client-index",
            help="This client's position among simulated peers (FEDKUBE_CLIENT_INDEX).",
        ),
    ] = -1,
    num_clients: Annotated[
        int, typer.Option("--num-clients", help="Number of simulated peers (FEDKUBE_NUM_CLIENTS).")
    ] = 0,
    token_file: Annotated[
        str | None,
        typer.Option(
            "--token-file", help="File with the client bearer token (else $FEDKUBE_CLIENT_TOKEN)."
        ),
    ] = None,
    heartbeat: Annotated[
        float,
        typer.Option(
            "--heartbeat", help="Heartbeat interval in seconds until the combiner names its own."
        ),
    ] = 5.0,
    tls: TlsOpt = False,
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsClientCertOpt = None,
    tls_key: TlsClientKeyOpt = None,
    log_level: LogLevelOpt = "info",
) -> None:
    """Connect to a combiner and run train/validate tasks until stopped. Entry points come
    from the flags, else from the job file's spec.train (in-process form preferred)."""
    _setup_logging(log_level)
    import signal

    from fedkube.client.runner import Entrypoints, make_runner, split_command
    from fedkube.client.runtime import ClientConfig, ClientRuntime
    from fedkube.rpc import CLIENT_TOKEN_ENV, check_address, client_tls, read_token

    flags = Entrypoints(
        train_fn=train_fn,
        validate_fn=validate_fn,
        init_fn=init_fn,
        train_cmd=split_command(train_cmd),
        validate_cmd=split_command(validate_cmd),
        init_cmd=split_command(init_cmd),
    )
    try:
        spec_job: FederatedJob | None = None
        cwd: Path | None = None
        jpath = Path(job)
        if jpath.suffix in (".yaml", ".yml", ".json") or jpath.exists():
            spec_job = _load(jpath)
            cwd = (job_dir or jpath.parent).resolve()
            sys.path.insert(0, str(cwd))  # the job's in-process functions import from here
        wd = workdir.resolve()
        runner = make_runner(flags, spec_job, cwd=cwd, workdir=wd)
        cfg = ClientConfig(
            address=check_address(connect),
            client_id=client_id,
            job=spec_job.key if spec_job else job,
            token=read_token(CLIENT_TOKEN_ENV, token_file),
            workdir=wd,
            tls=client_tls(tls_ca, tls_cert, tls_key, force=tls),
            heartbeat_seconds=heartbeat,
            client_index=client_index,
            num_clients=num_clients,
        )
    except (FedkubeError, ValueError) as exc:
        raise _fail(exc) from None
    rt = ClientRuntime(cfg, runner)
    signal.signal(signal.SIGTERM, lambda *_: rt.stop())
    try:
        rt.run()
    except FedkubeError as exc:
        raise _fail(exc, 3) from None
    except KeyboardInterrupt:
        rt.stop()


@app.command("client-pool")
def client_pool(
    job_file: JobFileOpt,
    pool_dir: Annotated[
        Path,
        typer.Option(
            "--pool-dir",
            help="Directory of the pool's files: it waits for clients.json there (one entry "
            "per client: id, index, combiner, workdir, log) and each client's NAME.token, "
            "and writes NAME.pid and NAME.exit (see fedkube/clientpool.py).",
        ),
    ],
    job_dir: JobDirOpt = None,
    wait_timeout: Annotated[
        float,
        typer.Option("--wait-timeout", min=0, help="Seconds to wait for clients.json."),
    ] = 600.0,
    log_level: LogLevelOpt = "info",
) -> None:
    """Fork many simulated clients from one process (what `fedkube run` starts): it imports
    the client runtime and the job's in-process functions once, then forks one
    `fedkube client` per entry of the clients file and reaps them. Exits once every
    client exited; SIGTERM and SIGINT are passed on to the clients."""
    _setup_logging(log_level)
    from fedkube.client.pool import run_pool

    try:
        job = _load(job_file)
        rc = run_pool(
            job, (job_dir or job_file.parent).resolve(), pool_dir, wait_timeout=wait_timeout
        )
    except (FedkubeError, ValueError) as exc:
        raise _fail(exc) from None
    raise typer.Exit(rc)


@app.command()
def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace", "-n", help="Namespace to serve FederatedJobs in; repeat for several."
        ),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Serve FederatedJobs cluster-wide.")
    ] = False,
    kubeconfig: Annotated[
        str | None,
        typer.Option(
            "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else in-cluster)."
        ),
    ] = None,
    default_image: Annotated[
        str,
        typer.Option(
            "--default-image", help="Image of reducer and combiners when spec.image is unset."
        ),
    ] = "ghcr.io/fedkube/fedkube:0.1.0",
    image_pull_policy: Annotated[
        str | None,
        typer.Option("--image-pull-policy", help="Always, IfNotPresent or Never (default: unset)."),
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            help="One state store URI for every job, instead of each job's "
            "spec.stateStore.mongodb.uriSecret (single-tenant installs, tests).",
        ),
    ] = None,
    liveness_port: Annotated[
        int, typer.Option("--liveness-port", help="Serve GET /healthz here (0: off).")
    ] = 8080,
    default_client_image: Annotated[
        str,
        typer.Option(
            "--default-client-image",
            help="Image of in-cluster client pods when spec.clients.template.image is unset.",
        ),
    ] = "ghcr.io/fedkube/fedkube-client:0.1.0",
    operator_namespace: Annotated[
        str | None,
        typer.Option(
            "--operator-namespace",
            envvar="POD_NAMESPACE",
            help="The operator's own namespace, where the --default-*-secret Secrets are "
            "(default: $POD_NAMESPACE).",
        ),
    ] = None,
    default_s3_endpoint: Annotated[
        str | None,
        typer.Option(
            "--default-s3-endpoint",
            help="HOST:PORT of the S3 store of jobs whose spec names no storage "
            "(needs --default-s3-secret).",
        ),
    ] = None,
    default_s3_bucket: Annotated[
        str, typer.Option("--default-s3-bucket", help="Bucket of that S3 store.")
    ] = "fedkube",
    default_s3_secure: Annotated[
        bool,
        typer.Option(
            "--default-s3-secure/--no-default-s3-secure", help="Reach that S3 store over HTTPS."
        ),
    ] = True,
    default_s3_public_endpoint: Annotated[
        str | None,
        typer.Option(
            "--default-s3-public-endpoint",
            help="HOST:PORT clients outside the cluster reach that S3 store at (presigned URLs).",
        ),
    ] = None,
    default_s3_secret: Annotated[
        str | None,
        typer.Option(
            "--default-s3-secret",
            help="Secret in the operator's namespace with AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY of that S3 store (copied into each job's namespace as "
            "<job>-storage).",
        ),
    ] = None,
    default_mongodb_secret: Annotated[
        str | None,
        typer.Option(
            "--default-mongodb-secret",
            help="Secret in the operator's namespace whose key `uri` is the MongoDB URI of jobs "
            "whose spec names no state store.",
        ),
    ] = None,
    default_mongodb_database: Annotated[
        str, typer.Option("--default-mongodb-database", help="Database of that MongoDB.")
    ] = "fedkube",
    combiner_tls_secret: Annotated[
        str | None,
        typer.Option(
            "--combiner-tls-secret",
            help="spec.combiners.tls.secretName of jobs naming none: a Secret in the job's "
            "namespace with tls.crt, tls.key and ca.crt (e.g. from cert-manager).",
        ),
    ] = None,
    log_level: LogLevelOpt = "info",
) -> None:
    """Run the Kubernetes operator: reconcile FederatedJobs into a reducer Deployment, a
    combiner StatefulSet, Services, a ConfigMap and token Secrets; keep their status in
    sync with the state store."""
    try:
        from fedkube.operator.builders import OperatorSettings, StorageDefaults
        from fedkube.operator.main import run_operator
    except ImportError as exc:
        raise _fail(
            RuntimeError(
                f"the operator needs the operator extra (pip install 'fedkube[operator]'): {exc}"
            )
        ) from None
    if not namespace and not all_namespaces:
        raise _fail(ValueError("pass --namespace NS (repeatable) or --all-namespaces"))
    if bool(default_s3_endpoint) != bool(default_s3_secret):
        raise _fail(ValueError("--default-s3-endpoint and --default-s3-secret go together"))
    if (default_s3_secret or default_mongodb_secret) and not operator_namespace:
        raise _fail(ValueError("--default-*-secret needs --operator-namespace (or $POD_NAMESPACE)"))
    settings = OperatorSettings(
        default_image=default_image,
        log_level=log_level,
        image_pull_policy=image_pull_policy,
        default_client_image=default_client_image,
        namespace=operator_namespace,
        combiner_tls_secret=combiner_tls_secret,
        storage=StorageDefaults(
            s3_endpoint=default_s3_endpoint,
            s3_bucket=default_s3_bucket,
            s3_secure=default_s3_secure,
            s3_public_endpoint=default_s3_public_endpoint,
            s3_secret=default_s3_secret,
            mongodb_secret=default_mongodb_secret,
            mongodb_database=default_mongodb_database,
        ),
    )
    run_operator(
        namespaces=namespace or [],
        all_namespaces=all_namespaces,
        settings=settings,
        kubeconfig=kubeconfig,
        state_override=state,
        liveness_port=liveness_port or None,
        verbose=log_level == "debug",
    )


@app.command()
def dashboard(
    workdir: WorkdirOpt = Path(DEFAULT_WORKDIR),
    state: StateOpt = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Object store URI of the models the Models page downloads (default: each "
            "job's own, from its manifest and the workdir).",
        ),
    ] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to serve on.")] = 8501,
    address: Annotated[
        str,
        typer.Option("--address", help="Address to bind (0.0.0.0 in a container)."),
    ] = "127.0.0.1",
    refresh: Annotated[
        float,
        typer.Option(
            "--refresh", min=0.5, help="Seconds between live refreshes of a page while a job runs."
        ),
    ] = 3.0,
    kube: Annotated[
        str,
        typer.Option(
            "--kube",
            help="auto: also read FederatedJob objects when a service account or kubeconfig is "
            "found; off: only the state store.",
        ),
    ] = "auto",
    namespace: Annotated[
        str,
        typer.Option(
            "--namespace", "-n", help="Namespace of the FederatedJob objects (default: all)."
        ),
    ] = "",
    log_level: LogLevelOpt = "info",
) -> None:
    """Serve the monitoring dashboard (Streamlit): jobs, per-round metrics and timings,
    participation, refusals, events, clients and model lineage with verified downloads.
    Reads the same state store as `fedkube status` (--workdir or --state); GET /healthz
    answers 200 while that store does."""
    from fedkube.dashboard.config import DashboardConfig

    try:
        from fedkube.dashboard.server import serve_dashboard
    except ImportError as exc:
        raise _fail(
            FedkubeError(
                f"the dashboard needs the dashboard extra ({exc.name or exc} is missing): "
                "pip install 'fedkube[dashboard]'"
            )
        ) from None
    _setup_logging(log_level)
    if kube not in ("auto", "off"):
        raise _fail(ValueError(f"--kube must be auto or off, not {kube!r}"))
    try:
        st = _open_state(workdir, state)
        uri = state or st.uri
        st.close()
        cfg = DashboardConfig(
            state=uri,
            store=store,
            workdir=str(workdir.resolve()),
            refresh_seconds=refresh,
            kube=kube,
            namespace=namespace,
        )
        serve_dashboard(cfg, address=address, port=port)
    except FedkubeError as exc:
        raise _fail(exc) from None


def main() -> None:
    app()
