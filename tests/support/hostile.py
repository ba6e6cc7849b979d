"""Hostile crowds for tests, run as their own process (so their load is real):

    python -P tests/support/hostile.py churn ADDRESS TOKENS_JSON SECONDS
    python -P tests/support/hostile.py flood ADDRESS SECONDS

`churn`: every client of TOKENS_JSON ({client id: token}) connects with its own
token, stays a random 0.2-6 s, and leaves; one that is handed a task leaves at
once without reporting (the picked ones leave). Repeats until SECONDS passed.

`flood`: 8 threads call every RPC of both services without a valid token
(none, made-up ones, the wrong scheme) as fast as they can for SECONDS; prints
the number of calls made.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import threading
import time
from pathlib import Path

import grpc

from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.proto.v1 import fedkube_pb2_grpc as pb_grpc


def _md(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def churner(address: str, cid: str, token: str, until: float, rng: random.Random) -> None:
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.CombinerStub(ch)
        while time.monotonic() < until:
            call = stub.Connect(pb.Hello(client_id=cid, job="toy"), metadata=_md(token))
            stay = rng.uniform(0.2, 6.0)
            timer = threading.Timer(stay, call.cancel)
            timer.start()
            try:
                for _task in call:
                    break  # picked: leave without reporting
            except grpc.RpcError:
                pass
            finally:
                timer.cancel()
                call.cancel()
            time.sleep(rng.uniform(0.05, 0.5))


def churn(address: str, tokens_file: str, seconds: float) -> None:
    tokens: dict[str, str] = json.loads(Path(tokens_file).read_text())
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=churner, args=(address, cid, tok, until, random.Random(cid)), daemon=True
        )
        for cid, tok in tokens.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)


def flooder(address: str, until: float, counter: list[int], rng: random.Random) -> None:
    bad = [(), _md("fkc_" + "A" * 43), _md("nonsense"), (("authorization", "Basic xyz"),)]
    with grpc.insecure_channel(address) as ch:
        client = pb_grpc.CombinerStub(ch)
        control = pb_grpc.CombinerControlStub(ch)
        calls = [
            lambda md: client.Heartbeat(pb.Ping(client_id="honest-0"), metadata=md, timeout=5),
            lambda md: client.ReportUpdate(
                pb.Update(client_id="honest-0", num_examples=10**12), metadata=md, timeout=5
            ),
            lambda md: next(iter(client.Connect(pb.Hello(client_id="x"), metadata=md, timeout=5))),
            lambda md: control.Status(pb.StatusRequest(), metadata=md, timeout=5),
        ]
        while time.monotonic() < until:
            with contextlib.suppress(grpc.RpcError, StopIteration):
                rng.choice(calls)(rng.choice(bad))
            counter[0] += 1


def flood(address: str, seconds: float) -> None:
    until = time.monotonic() + seconds
    counter = [0]
    threads = [
        threading.Thread(target=flooder, args=(address, until, counter, random.Random(i)))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(counter[0], flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "churn":
        churn(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif sys.argv[1] == "flood":
        flood(sys.argv[2], float(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
