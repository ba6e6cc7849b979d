"""A real combiner (grpc.aio on loopback) in a background thread, with real stubs."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedkube.combiner.server import serve_combiner
from fedkube.digest import UPDATE_ALGORITHM, format_digest
from fedkube.model import save_model
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.proto.v1 import fedkube_pb2_grpc as pb_grpc
from fedkube.rpc import ClientTLS, ServerTLS, bearer, open_channel
from fedkube.spec import parse_job
from fedkube.state import open_state_store
from fedkube.store import model_key, open_object_store
from fedkube.vocabulary import Reason

#: a token of the client-token form that no job ever issued
UNKNOWN_CLIENT_TOKEN = "fkc_" + "x" * 43
REDUCER_TOKEN = "reducer-secret-token"


def seed_model() -> dict[str, np.ndarray]:
    return {
        "w": np.zeros(8, np.float32),
        "b": np.zeros((2, 2), np.float32),
        "count": np.zeros(1, np.int64),
    }


class FakeClient:
    """A client speaking the real protocol; the test decides what it uploads."""

    def __init__(
        self,
        address: str,
        client_id: str,
        token: str | None,
        tls: ClientTLS | None = None,
    ) -> None:
        self.client_id = client_id
        self.channel = _channel(address, tls)
        self.stub = pb_grpc.CombinerStub(self.channel)
        self.md = bearer(token) if token else ()
        self.tasks: queue.Queue[pb.Task | BaseException] = queue.Queue()
        self.call = self.stub.Connect(pb.Hello(client_id=client_id, job="toy"), metadata=self.md)
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        try:
            for task in self.call:
                self.tasks.put(task)
        except grpc.RpcError as exc:
            self.tasks.put(exc)

    def next_task(self, timeout: float = 10.0) -> pb.Task:
        item = self.tasks.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def upload(self, task: pb.Task, tensors: dict[str, np.ndarray] | bytes) -> str:
        """Write the task's file; return its digest as fedkube's client reports it
        ("" for raw bytes)."""
        path = Path(task.upload.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(tensors, bytes):
            path.write_bytes(tensors)
            return ""
        return format_digest(
            UPDATE_ALGORITHM, save_model(path, tensors, algorithm=UPDATE_ALGORITHM)
        )

    def report(
        self, task: pb.Task, *, num_examples: int = 10, digest: str = "", **kw: Any
    ) -> pb.Ack:
        upd = pb.Update(
            task_id=task.task_id,
            client_id=self.client_id,
            job=task.job,
            round=task.round,
            attempt=task.attempt,
            num_examples=num_examples,
            digest=digest,
            **kw,
        )
        ack = self.stub.ReportUpdate(upd, metadata=self.md, timeout=30)
        # Every refusal names a word of the vocabulary (tests/unit/test_vocabulary.py
        # checks the combiner's code for the same).
        assert ack.accepted or ack.reason in set(Reason), f"Ack.reason {ack.reason!r}"
        return ack

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


def _channel(address: str, tls: ClientTLS | None) -> grpc.Channel:
    """Plaintext as always without `tls`; with it, the production channel (open_channel)."""
    return grpc.insecure_channel(address) if tls is None else open_channel(address, tls)


class CombinerHarness:
    """A combiner on 127.0.0.1. With `tls` it serves TLS (mTLS if tls.client_ca);
    `client_tls` is then what the control stub and, by default, clients connect with."""

    def __init__(
        self,
        tmp: Path,
        *,
        max_bytes: int = 10_000_000,
        heartbeat: int = 5,
        tls: ServerTLS | None = None,
        client_tls: ClientTLS | None = None,
        seed: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.tmp = tmp
        self.tls = tls
        self.client_tls = client_tls
        self.job = parse_job(
            {
                "apiVersion": "fedkube.dev/v1alpha1",
                "kind": "FederatedJob",
                "metadata": {"name": "toy"},
                "spec": {
                    "rounds": 3,
                    "model": {"maxBytes": max_bytes},
                    "clients": {"perRound": 2, "minUpdates": 1, "heartbeatSeconds": heartbeat},
                },
            }
        )
        self.max_bytes = max_bytes
        self.store = open_object_store(f"file://{tmp / 'store'}")
        self.state = open_state_store(f"sqlite:///{tmp / 'state.db'}")
        self.state.create_job("toy", self.job.to_manifest())
        save_model(seed_path := tmp / "seed.safetensors", seed_model() if seed is None else seed)
        self.store.put_file(model_key("toy", 0), seed_path)
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        port_file = tmp / "combiner.port"
        self._thread = threading.Thread(target=self._serve, args=(port_file,), daemon=True)
        self._thread.start()
        t0 = time.monotonic()
        while not port_file.exists():
            if time.monotonic() - t0 > 20:
                raise RuntimeError("combiner did not start")
            time.sleep(0.02)
        self.address = f"127.0.0.1:{port_file.read_text()}"
        self.control_channel = _channel(self.address, client_tls)
        self.control = pb_grpc.CombinerControlStub(self.control_channel)
        self.clients: list[FakeClient] = []
        self._tokens: dict[str, str] = {}

    def _serve(self, port_file: Path) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.stop_event = asyncio.Event()
            await serve_combiner(
                name="c0",
                job=self.job,
                store=self.store,
                state=self.state,
                listen="127.0.0.1:0",
                reducer_token=REDUCER_TOKEN,
                workdir=self.tmp / "combiner",
                tls=self.tls,
                port_file=port_file,
                stop=self.stop_event,
                **self.serve_options(),
            )

        self.loop.run_until_complete(main())

    def serve_options(self) -> dict[str, Any]:
        """More keyword arguments of serve_combiner (a subclass's)."""
        return {}

    def token_for(self, cid: str) -> str:
        """The token of client `cid`, issued into the job's credentials on first use."""
        if cid not in self._tokens:
            self._tokens[cid] = self.state.issue_credential("toy", cid)[0]
        return self._tokens[cid]

    def client(
        self, cid: str, token: str | object | None = ..., tls: ClientTLS | None = None
    ) -> FakeClient:
        """A client connected as `cid`, with its own token unless `token` says otherwise."""
        tok = self.token_for(cid) if token is ... else token
        assert tok is None or isinstance(tok, str)
        c = FakeClient(self.address, cid, tok, tls or self.client_tls)
        self.clients.append(c)
        return c

    def wait_connected(self, n: int, timeout: float = 10.0) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            st = self.control.Status(pb.StatusRequest(), metadata=bearer(REDUCER_TOKEN))
            if st.connected >= n:
                return
            time.sleep(0.02)
        raise AssertionError(f"{n} clients did not connect")

    def run_round(
        self,
        round: int = 1,
        attempt: int = 1,
        quota: int = 2,
        deadline_s: float = 10.0,
        kind: int = pb.TASK_KIND_TRAIN,
    ) -> RoundCall:
        plan = pb.RoundPlan(
            job="toy",
            round=round,
            attempt=attempt,
            kind=kind,
            model_key=model_key("toy", round - 1),
            quota=quota,
            deadline_unix_ms=int((time.time() + deadline_s) * 1000),
            config_json="{}",
            seed=0,
            max_bytes=self.max_bytes,
        )
        return RoundCall(self.control, plan)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.control_channel.close()
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self._thread.join(timeout=10)
        self.state.close()


class RoundCall:
    """RunRound in a thread; result() gives the final Partial."""

    def __init__(self, control: pb_grpc.CombinerControlStub, plan: pb.RoundPlan) -> None:
        self.events: list[pb.RoundEvent] = []
        self.error: BaseException | None = None
        self.call = control.RunRound(plan, metadata=bearer(REDUCER_TOKEN), timeout=60)
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        try:
            for ev in self.call:
                self.events.append(ev)
        except grpc.RpcError as exc:
            self.error = exc

    def result(self, timeout: float = 30.0) -> pb.Partial:
        self._t.join(timeout)
        if self.error is not None:
            raise self.error
        partials = [e.partial for e in self.events if e.HasField("partial")]
        assert len(partials) == 1, f"expected one partial, got {self.events}"
        return partials[0]

    def cancel(self) -> None:
        self.call.cancel()
        self._t.join(10)
