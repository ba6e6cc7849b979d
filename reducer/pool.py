"""The reducer's combiners: a channel to each, their connected clients, the fan-out.

A pool holds one gRPC channel per combiner, named either once (``--combiner
NAME=HOST:PORT``) or by a template with ``{i}`` whose count follows
``spec.combiners.replicas`` of the job record (``--combiner-template``: a
StatefulSet's pods), re-read before every status poll so scaling the job adds
or removes combiners. It asks each combiner how many clients it holds, waits
for enough of them, and runs a `RoundPlan` on several combiners at once (one
thread per combiner, each streaming progress and then its `Partial`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from fedkube.logs import Logger
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.proto.v1 import fedkube_pb2_grpc as pb_grpc
from fedkube.reducer.failure import AttemptFailed, Cause
from fedkube.rpc import ClientTLS, bearer, open_channel

#: Status codes of a combiner that will not work with this reducer (not a blip).
_REFUSALS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION)


@dataclass
class CombinerResult:
    """What one combiner returned for a plan: its partial, or why there is none."""

    name: str
    partial: pb.Partial | None = None
    error: str = ""


def useful_partials(results: list[CombinerResult]) -> list[pb.Partial]:
    """The partials that aggregated at least one update (or validation report)."""
    return [r.partial for r in results if r.partial is not None and r.partial.n_updates > 0]


def expand_template(template: str, replicas: int) -> dict[str, str]:
    """'c-{i}=c-{i}.svc:7070' with 2 replicas -> {'c-0': 'c-0.svc:7070', 'c-1': ...}."""
    name, sep, addr = template.partition("=")
    if not sep or "{i}" not in name or ":" not in addr:
        raise ValueError(f"combiner template {template!r}: expected NAME-{{i}}=HOST-{{i}}:PORT")
    return {
        name.replace("{i}", str(i)): addr.replace("{i}", str(i)) for i in range(max(0, replicas))
    }


class CombinerPool:
    """The combiners of one job, as the reducer sees them (a client of CombinerControl)."""

    def __init__(
        self,
        combiners: dict[str, str],
        *,
        token: str,
        log: Logger,
        stop: threading.Event,
        tls: ClientTLS | None = None,
        template: str | None = None,
        replicas: Callable[[], int] | None = None,
        poll_seconds: float = 0.5,
    ) -> None:
        self._tls = tls
        self._md = bearer(token)
        self._log = log
        self._stop = stop
        self._template = template
        self._replicas = replicas
        self._poll = poll_seconds
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, pb_grpc.CombinerControlStub] = {}
        self._addresses: dict[str, str] = {}
        self._unreachable: set[str] = set()
        self._connect(dict(combiners))

    @property
    def addresses(self) -> dict[str, str]:
        return dict(self._addresses)

    def _connect(self, wanted: dict[str, str]) -> None:
        for name in list(self._addresses):
            if wanted.get(name) != self._addresses[name]:
                self._channels.pop(name).close()
                del self._stubs[name], self._addresses[name]
        for name, addr in wanted.items():
            if name not in self._addresses:
                self._channels[name] = open_channel(addr, self._tls)
                self._stubs[name] = pb_grpc.CombinerControlStub(self._channels[name])
                self._addresses[name] = addr

    def refresh(self) -> None:
        """With a template, follow the job's replica count (no-op otherwise)."""
        if not self._template or self._replicas is None:
            return
        wanted = expand_template(self._template, self._replicas())
        if wanted != self._addresses:
            self._log.info("combiners changed", combiners=sorted(wanted))
            self._connect(wanted)

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()

    # ------------------------------------------------------------ clients

    def connected(self) -> dict[str, int]:
        """Connected clients per combiner (0 for one that does not answer).

        Raises RoundFailed when a combiner refuses the reducer (wrong token, other job)."""
        self.refresh()
        return {name: self._connected(name, stub) for name, stub in self._stubs.items()}

    def _connected(self, name: str, stub: pb_grpc.CombinerControlStub) -> int:
        try:
            st = stub.Status(pb.StatusRequest(), metadata=self._md, timeout=5)
        except grpc.RpcError as exc:
            if exc.code() in _REFUSALS:
                raise AttemptFailed(
                    Cause.COMBINER_REFUSED, f"combiner {name} refused the reducer: {exc.details()}"
                ) from None
            if name not in self._unreachable:  # say it once, not every poll
                self._log.warning("combiner unreachable", combiner=name, error=exc.details())
                self._unreachable.add(name)
            return 0
        if name in self._unreachable:
            self._log.info("combiner reachable again", combiner=name)
            self._unreachable.discard(name)
        return int(st.connected)

    def wait_for_clients(self, want: int, need: int, *, timeout: float) -> dict[str, int]:
        """Wait until `want` clients are connected; after a grace period settle for
        `need`; after `timeout` go on with whatever is there (also when stopped)."""
        t0 = time.monotonic()
        grace = min(timeout, 10.0)
        while True:
            connected = self.connected()
            total = sum(connected.values())
            waited = time.monotonic() - t0
            if total >= want or (total >= need and waited >= grace) or waited >= timeout:
                return connected
            if self._stop.wait(self._poll):
                return connected

    # ------------------------------------------------------------ fan-out

    def run(
        self,
        plan: pb.RoundPlan,
        quotas: dict[str, int],
        on_progress: Callable[[str, pb.Progress], None] | None = None,
    ) -> list[CombinerResult]:
        """Run `plan` on every combiner with a quota > 0, at once; return what each
        returned (in the order of `quotas`) after the last one ended."""
        results = {n: CombinerResult(n) for n, q in quotas.items() if q > 0}
        timeout = max(5.0, plan.deadline_unix_ms / 1000 - time.time() + 60)
        threads = [
            threading.Thread(
                target=self._drive,
                args=(res, plan, quotas[name], timeout, on_progress),
                daemon=True,
            )
            for name, res in results.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return list(results.values())

    def _drive(
        self,
        res: CombinerResult,
        plan: pb.RoundPlan,
        quota: int,
        timeout: float,
        on_progress: Callable[[str, pb.Progress], None] | None,
    ) -> None:
        p = pb.RoundPlan()
        p.CopyFrom(plan)
        p.quota = quota
        try:
            for ev in self._stubs[res.name].RunRound(p, metadata=self._md, timeout=timeout):
                if ev.HasField("progress"):
                    if on_progress is not None:
                        on_progress(res.name, ev.progress)
                elif ev.HasField("partial"):
                    res.partial = ev.partial
        except grpc.RpcError as exc:
            res.error = f"{exc.code().name}: {exc.details()}"
        if res.partial is None and not res.error:
            res.error = "the combiner ended the round without a result"
