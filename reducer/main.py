"""Run a reducer process: `fedkube reducer ...` lands here.

Runs the job's round loop; with a health port it also serves ``/healthz`` and
``/status`` (for Kubernetes probes) and ``/metrics`` (Prometheus), and with
``linger`` it keeps serving after the job finished, until SIGTERM, so a
Deployment's pod is not restarted in a loop.

No phase outlives its process:

- `open_stores` reaches the state store and the object store at start,
  retrying with capped exponential backoff for ``--startup-timeout`` seconds;
  then it records the job Failed (when the state store answers) and raises
  `ReducerFailed` with one line naming the unreachable store;
- `run_reducer` records the job Failed with a one-line reason when anything
  unexpected ends the loop (the traceback goes to the JSON log), and puts a
  Running job back to Pending (``INTERRUPTED_MESSAGE``) on SIGTERM;
- while it runs, the reducer renews ``JobRecord.reducer_seen_at``, so a
  reducer killed with SIGKILL shows as missing in `fedkube status`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fedkube.errors import FedkubeError
from fedkube.logs import Logger
from fedkube.reducer.health import HealthServer
from fedkube.reducer.loop import Reducer, ReducerConfig
from fedkube.report import job_status
from fedkube.spec import FederatedJob
from fedkube.state import EventRecord, StateStore, open_state_store
from fedkube.store import ObjectStore, model_key, open_object_store
from fedkube.telemetry import write_port_file
from fedkube.vocabulary import EventKind, Phase

#: default of ``fedkube reducer --startup-timeout`` (seconds)
STARTUP_TIMEOUT = 60.0
#: first and largest pause between two start-up attempts (seconds)
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0
#: longest one-line reason recorded for a failure
MAX_REASON = 500

T = TypeVar("T")


class ReducerFailed(FedkubeError):
    """The reducer could not run the job (unreachable stores at start, a crash); the
    message is one line, already recorded as the job's reason when possible."""


class NoAnswer(FedkubeError):
    """A store's first call did not return in the time left (it hangs)."""


def one_line(exc: BaseException | str, limit: int = MAX_REASON) -> str:
    """`exc` as a single line of at most `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _state_answers(state: StateStore, name: str) -> bool:
    state.get_job(name)  # raises when the state store is unreachable
    return True


# ------------------------------------------------------------------ start-up


def _answer(fn: Callable[[], T], timeout: float, what: str) -> T:
    """fn() in a helper thread; FedkubeError when it does not return within `timeout`
    (a store whose server accepts connections but never answers)."""
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=call, name="reducer-startup-probe", daemon=True)
    t.start()
    t.join(max(0.1, timeout))
    if t.is_alive():
        raise NoAnswer(f"{what} did not answer within {max(0.1, timeout):.1f}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _open_state(uri: str, name: str, timeout: float) -> StateStore:
    state = open_state_store(uri)
    try:
        _answer(lambda: state.get_job(name), timeout, f"state store {state.uri}")
    except BaseException:
        with contextlib.suppress(Exception):
            state.close()
        raise
    return state


def _open_store(uri: str, name: str, timeout: float) -> ObjectStore:
    store = open_object_store(uri)
    # The first call a reducer makes (and, for S3, the bucket check or creation).
    _answer(lambda: store.exists(model_key(name, 0)), timeout, f"object store {store.uri}")
    return store


def _record_startup_failure(
    state: StateStore, job: FederatedJob, message: str, log: Logger
) -> None:
    """The job Failed with `message` (not a job that already succeeded); best effort."""
    try:
        rec = state.get_job(job.key)
        if rec is not None and rec.phase == Phase.SUCCEEDED:
            return
        if rec is None:
            state.create_job(job.key, job.to_manifest())
        state.update_job(job.key, phase=Phase.FAILED, message=message, completed_at=time.time())
        state.add_event(
            EventRecord(job=job.key, kind=EventKind.JOB_FAILED, message=message, level="error")
        )
    except FedkubeError as exc:
        log.error("cannot record the job as failed", error=one_line(exc), reason=message)


def open_stores(
    job: FederatedJob, store_uri: str, state_uri: str, *, timeout: float, log: Logger
) -> tuple[ObjectStore, StateStore]:
    """The job's object store and state store, each answering a first call.

    Retries with capped exponential backoff (0.5 s, doubling, at most 10 s),
    logging each retry, for `timeout` seconds; then records the job Failed if the
    state store answers and raises ReducerFailed naming the store that does not."""
    deadline = time.monotonic() + timeout
    state: StateStore | None = None
    delay, attempt, error = FIRST_BACKOFF, 0, ""
    while True:
        attempt += 1
        which = "state store"
        try:
            left = deadline - time.monotonic()
            if state is None:
                state = _open_state(state_uri, job.key, left)
                error = ""  # what follows is about the object store
            which = "object store"
            return _open_store(store_uri, job.key, deadline - time.monotonic()), state
        except Exception as exc:  # whatever the store raised: retried, then reported
            # A store cut short by the deadline keeps the error it gave before.
            if not (isinstance(exc, NoAnswer) and error):
                error = one_line(exc)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        pause = min(delay, left)
        log.warning(
            f"cannot reach the {which}; retrying",
            error=error,
            attempt=attempt,
            retry_in=round(pause, 2),
            gives_up_in=round(left, 1),
        )
        time.sleep(pause)
        delay = min(MAX_BACKOFF, delay * 2)
    message = one_line(f"cannot reach the {which} within {timeout:g}s: {error}")
    log.error("giving up", error=message, attempts=attempt)
    if state is not None:
        _record_startup_failure(state, job, message, log)
        state.close()
    raise ReducerFailed(message)


# ------------------------------------------------------------------ the run


def _guarded(reducer: Reducer) -> str:
    """reducer.run(); anything unexpected records the job Failed with a one-line
    reason (the traceback goes to the log) and raises ReducerFailed."""
    try:
        return reducer.run()
    except Exception as exc:
        reason = one_line(f"reducer crashed: {type(exc).__name__}: {exc}")
        reducer.log.error("reducer crashed", error=reason, exc_info=True)
        reducer.fail(reason)
        raise ReducerFailed(reason) from None


def _health(
    cfg: ReducerConfig, reducer: Reducer, port: int | None, port_file: Path | None
) -> HealthServer | None:
    """The health endpoint on `port` (0: a free one, written to `port_file`), bound to
    $FEDKUBE_BIND_HOST (default all interfaces); None without a port."""
    if port is None:
        return None
    health = HealthServer(
        os.environ.get("FEDKUBE_BIND_HOST", "0.0.0.0"),
        port,
        healthy=lambda: _state_answers(cfg.state, cfg.job.key),
        status=lambda: job_status(cfg.state, cfg.job.key),
        registry=reducer.telemetry.registry,
    ).start()
    if port_file is not None:
        write_port_file(port_file, health.port)
    reducer.log.info("health endpoint listening", port=health.port, metrics="/metrics")
    return health


#: how often a lingering reducer looks for a raised spec.rounds
LINGER_POLL_SECONDS = 2.0


def _more_rounds(reducer: Reducer) -> bool:
    try:
        return reducer.more_rounds()
    except FedkubeError as exc:
        reducer.log.warning("state store unavailable while lingering", error=str(exc))
        return False


def run_reducer(
    cfg: ReducerConfig,
    *,
    health_port: int | None = None,
    health_port_file: Path | None = None,
    linger: bool = False,
) -> str:
    """Run the job; return its final phase. SIGTERM stops the loop (exit 143) and puts
    a Running job back to Pending; an unexpected error records it Failed and raises
    ReducerFailed. With `health_port` it serves /healthz, /status and /metrics there
    (0: a free port, written to `health_port_file`)."""
    reducer = Reducer(cfg)
    stopped = threading.Event()

    def _term(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one interruption is enough
        reducer.stop()
        stopped.set()
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, _term)
    health = _health(cfg, reducer, health_port, health_port_file)
    try:
        phase = _guarded(reducer)
        if phase == Phase.RUNNING:  # stopped before the end
            reducer.interrupted()
        elif linger:
            reducer.log.info("job finished; lingering until terminated", phase=phase)
            # A patch that raises spec.rounds continues a Succeeded job from here.
            while not stopped.wait(LINGER_POLL_SECONDS):
                if _more_rounds(reducer):
                    reducer.log.info("spec.rounds was raised: continuing the job")
                    phase = _guarded(reducer)
                    if phase == Phase.RUNNING:
                        reducer.interrupted()
                        break
        return phase
    except (SystemExit, KeyboardInterrupt):
        reducer.interrupted()
        raise
    finally:
        reducer.close()
        if health is not None:
            health.close()
