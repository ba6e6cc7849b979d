"""Optional TLS on every gRPC endpoint, with real servers on loopback.

The combiner serves both the client-facing Combiner service and the reducer-facing
CombinerControl service on one port; with a cert/key that port speaks only TLS,
and with a client CA it also demands client certificates (mTLS). The certificates
are a throwaway CA made by tests/support/certs.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedkube.client.runner import InProcessRunner
from fedkube.client.runtime import ClientConfig, ClientRuntime
from fedkube.model import load_model, save_model
from fedkube.proto.v1 import fedkube_pb2 as pb
from fedkube.proto.v1 import fedkube_pb2_grpc as pb_grpc
from fedkube.reducer import Reducer, ReducerConfig
from fedkube.rpc import (
    CLIENT_TOKEN_ENV,
    REDUCER_TOKEN_ENV,
    ClientTLS,
    ServerTLS,
    bearer,
    open_channel,
)
from fedkube.state import open_state_store
from fedkube.store import model_key, open_object_store
from fedkube.vocabulary import Phase
from tests.support import toy_task
from tests.support.certs import CertSet, make_certs
from tests.support.combiner import (
    REDUCER_TOKEN,
    UNKNOWN_CLIENT_TOKEN,
    CombinerHarness,
    FakeClient,
    seed_model,
)

TOY_TRAIN = "tests.support.toy_task:train"


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> CertSet:
    return make_certs(tmp_path_factory.mktemp("certs"))


def server_tls(certs: CertSet, *, mtls: bool = False) -> ServerTLS:
    return ServerTLS(str(certs.server_cert), str(certs.server_key), str(certs.ca) if mtls else None)


def trusting(certs: CertSet, **kw: str) -> ClientTLS:
    """Client TLS that trusts the test CA (plus any extra fields)."""
    return ClientTLS(ca=str(certs.ca), **kw)


def with_client_cert(certs: CertSet, **kw: str) -> ClientTLS:
    return ClientTLS(ca=str(certs.ca), cert=str(certs.client_cert), key=str(certs.client_key), **kw)


@pytest.fixture
def tls_comb(tmp_path, certs):
    h = CombinerHarness(tmp_path, tls=server_tls(certs), client_tls=trusting(certs))
    yield h
    h.close()


@pytest.fixture
def mtls_comb(tmp_path, certs):
    h = CombinerHarness(
        tmp_path, tls=server_tls(certs, mtls=True), client_tls=with_client_cert(certs)
    )
    yield h
    h.close()


def an_update() -> dict[str, np.ndarray]:
    m = seed_model()
    m["w"] += 1.5
    m["b"] -= 2.0
    m["count"] += 1
    return m


def full_round(comb: CombinerHarness, client: FakeClient) -> None:
    """One train round through the real protocol: Status -> RunRound -> Connect gets
    the task -> upload to task.upload.path -> ReportUpdate accepted -> Partial."""
    comb.wait_connected(1)  # CombinerControl.Status with the reducer token
    call = comb.run_round(quota=1)  # CombinerControl.RunRound
    task = client.next_task()
    assert task.kind == pb.TASK_KIND_TRAIN and task.round == 1
    assert task.upload.path, task
    sha = client.upload(task, an_update())
    ack = client.report(task, num_examples=7, digest=sha)
    assert ack.accepted, ack
    partial = call.result()
    assert partial.n_updates == 1
    assert list(partial.participants) == [client.client_id]
    assert partial.weight == 7
    merged = load_stored(comb, partial.key)
    for name, arr in an_update().items():
        np.testing.assert_array_equal(merged[name], arr)


def load_stored(comb: CombinerHarness, key: str) -> dict[str, np.ndarray]:
    path = comb.store.local_path(key)
    assert path is not None
    return load_model(path)


def connect_error(address: str, tls: ClientTLS | None) -> grpc.RpcError:
    """Connect (client side) must fail; return the error."""
    c = FakeClient(address, "intruder", UNKNOWN_CLIENT_TOKEN, tls)
    try:
        with pytest.raises(grpc.RpcError) as info:
            c.next_task(timeout=20)
    finally:
        c.close()
    return info.value


def status_error(address: str, tls: ClientTLS | None) -> grpc.RpcError:
    """CombinerControl.Status (reducer side, right token) must fail; return the error."""
    ch = grpc.insecure_channel(address) if tls is None else open_channel(address, tls)
    try:
        stub = pb_grpc.CombinerControlStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Status(pb.StatusRequest(), metadata=bearer(REDUCER_TOKEN), timeout=20)
    finally:
        ch.close()
    return info.value


def assert_refused(comb: CombinerHarness, tls: ClientTLS | None) -> None:
    """Both services on the port refuse this channel at the transport level, and the
    refused attempts leave the server healthy (nobody connected, Status fine)."""
    for err in (connect_error(comb.address, tls), status_error(comb.address, tls)):
        assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    st = comb.control.Status(pb.StatusRequest(), metadata=bearer(REDUCER_TOKEN), timeout=10)
    assert st.connected == 0


def use_toy_seed(comb: CombinerHarness) -> None:
    """Replace the harness seed with the toy task's model so real training fits it."""
    seed = comb.tmp / "toy-seed.safetensors"
    save_model(seed, toy_task.init())
    comb.store.put_file(model_key("toy", 0), seed)


def run_in_thread(rt: ClientRuntime) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            rt.run()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, errors


# ------------------------------------------------------------ server TLS


def test_tls_round_and_control_plane(tls_comb):
    c = tls_comb.client("c1")
    full_round(tls_comb, c)
    st = tls_comb.control.Status(pb.StatusRequest(), metadata=bearer(REDUCER_TOKEN), timeout=10)
    assert st.connected == 1
    # The bearer tokens still apply on top of TLS.
    with pytest.raises(grpc.RpcError) as info:
        md = bearer(tls_comb.token_for("c1"))
        tls_comb.control.Status(pb.StatusRequest(), metadata=md, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tls_server_name_override(tls_comb, certs):
    # 127.0.0.1 checked as "localhost" (the DNS SAN) through ssl_target_name_override.
    c = tls_comb.client("c1", tls=trusting(certs, server_name="localhost"))
    full_round(tls_comb, c)


def test_tls_hostname_is_verified(tls_comb, certs):
    assert_refused(tls_comb, trusting(certs, server_name="not-the-server.example"))


def test_plaintext_client_refused_by_tls_server(tls_comb):
    assert_refused(tls_comb, None)


def test_client_without_the_ca_refused(tls_comb):
    # TLS with the system trust store: the test CA is not in it.
    assert_refused(tls_comb, ClientTLS())


def test_client_trusting_another_ca_refused(tls_comb, certs):
    assert_refused(tls_comb, ClientTLS(ca=str(certs.rogue_ca)))


def test_tls_client_against_plaintext_server_refused(tmp_path, certs):
    h = CombinerHarness(tmp_path)
    try:
        assert_refused(h, trusting(certs))
    finally:
        h.close()


# ------------------------------------------------------------ mTLS


def test_mtls_client_certificate_accepted(mtls_comb):
    c = mtls_comb.client("c1")  # presents the CA-signed client certificate
    full_round(mtls_comb, c)


def test_mtls_without_client_certificate_refused(mtls_comb, certs):
    assert_refused(mtls_comb, trusting(certs))


def test_mtls_client_certificate_from_another_ca_refused(mtls_comb, certs):
    rogue = ClientTLS(
        ca=str(certs.ca), cert=str(certs.rogue_client_cert), key=str(certs.rogue_client_key)
    )
    assert_refused(mtls_comb, rogue)


# ------------------------------------------------------------ the real client and reducer


def test_client_runtime_over_tls(tls_comb, certs, tmp_path):
    use_toy_seed(tls_comb)
    rt = ClientRuntime(
        ClientConfig(
            address=tls_comb.address,
            client_id="rt-0",
            job="toy",
            token=tls_comb.token_for("rt-0"),
            workdir=tmp_path / "client",
            tls=trusting(certs, server_name="localhost"),
            max_tasks=1,
        ),
        InProcessRunner(TOY_TRAIN, None),
    )
    t, errors = run_in_thread(rt)
    try:
        tls_comb.wait_connected(1)
        partial = tls_comb.run_round(quota=1).result()
        t.join(20)
        assert not t.is_alive(), "ClientRuntime.run() did not return after max_tasks=1"
    finally:
        rt.stop()
        t.join(10)
    assert not errors, errors
    assert rt.tasks_done == 1
    assert partial.n_updates == 1 and list(partial.participants) == ["rt-0"]
    assert partial.weight == toy_task.examples(0)
    merged = load_stored(tls_comb, partial.key)
    seed = toy_task.init()
    np.testing.assert_allclose(merged["w"], 0.5 * toy_task.target(0), rtol=1e-6)
    np.testing.assert_array_equal(merged["b"], seed["b"] + 1)
    np.testing.assert_array_equal(merged["count"], seed["count"] + 1)


def test_whole_job_over_mtls(mtls_comb, certs, tmp_path):
    """The real Reducer (ReducerConfig.tls) and two real ClientRuntimes, all with
    client certificates, run the harness job (3 rounds) to Succeeded."""
    use_toy_seed(mtls_comb)
    runtimes = [
        ClientRuntime(
            ClientConfig(
                address=mtls_comb.address,
                client_id=f"rt-{i}",
                job="toy",
                token=mtls_comb.token_for(f"rt-{i}"),
                workdir=tmp_path / f"client-{i}",
                tls=with_client_cert(certs),
                client_index=i,
                num_clients=2,
            ),
            InProcessRunner(TOY_TRAIN, None),
        )
        for i in range(2)
    ]
    threads = [run_in_thread(rt) for rt in runtimes]
    state = open_state_store(f"sqlite:///{tmp_path / 'state.db'}")
    reducer = Reducer(
        ReducerConfig(
            job=mtls_comb.job,
            store=open_object_store(f"file://{tmp_path / 'store'}"),
            state=state,
            combiners={"c0": mtls_comb.address},
            reducer_token=REDUCER_TOKEN,
            workdir=tmp_path / "reducer",
            tls=with_client_cert(certs),
            poll_seconds=0.05,
        )
    )
    try:
        phase = reducer.run()
    finally:
        reducer.close()
        for rt in runtimes:
            rt.stop()
        for t, _ in threads:
            t.join(10)
    try:
        assert phase == Phase.SUCCEEDED, state.get_job("toy")
        for _, errors in threads:
            assert not errors, errors
        rounds = mtls_comb.job.spec.rounds
        final = load_stored(mtls_comb, model_key("toy", rounds))
        n = np.array([toy_task.examples(i) for i in (0, 1)], np.float64)
        t_ = np.stack([toy_task.target(i) for i in (0, 1)]).astype(np.float64)
        want = (1 - 0.5**rounds) * (n[:, None] * t_).sum(0) / n.sum()
        np.testing.assert_allclose(final["w"], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(final["count"], [rounds])
    finally:
        state.close()


# ------------------------------------------------------------ CLI validation

JOB_YAML = """\
apiVersion: fedkube.dev/v1alpha1
kind: FederatedJob
metadata:
  name: toy
spec:
  rounds: 1
"""


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        CLIENT_TOKEN_ENV: UNKNOWN_CLIENT_TOKEN,
        REDUCER_TOKEN_ENV: REDUCER_TOKEN,
        "COLUMNS": "300",
    }
    return subprocess.run(
        [sys.executable, "-P", "-m", "fedkube", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )


def write_job(tmp_path: Path) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(JOB_YAML)
    return job


def role_args(role: str, tmp_path: Path) -> list[str]:
    """The role's required flags, minus TLS; nothing here can fail by itself."""
    job = str(write_job(tmp_path))
    wd = str(tmp_path / "wd")
    if role == "combiner":
        port = str(tmp_path / "port")
        return ["combiner", "--job", job, "--name", "c0", "--listen", "127.0.0.1:0",
                "--workdir", wd, "--port-file", port]  # fmt: skip
    if role == "reducer":
        return ["reducer", "--job", job, "-c", "c0=127.0.0.1:1", "--workdir", wd]
    return ["client", "--connect", "127.0.0.1:1", "--job", "toy", "--client-id", "x",
            "--train-cmd", "python train.py", "--workdir", wd]  # fmt: skip


def assert_usage_error(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in " ".join(proc.stderr.split()), proc.stderr  # however rich wrapped it
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "SERVER_CERT"], "TLS needs both --tls-cert and --tls-key"),
        (["--tls-key", "SERVER_KEY"], "TLS needs both --tls-cert and --tls-key"),
        (["--tls-client-ca", "CA"], "--tls-client-ca needs --tls-cert and --tls-key"),
    ],
)
def test_combiner_cli_rejects_incomplete_tls(tmp_path, certs, flags, message):
    paths = {"SERVER_CERT": certs.server_cert, "SERVER_KEY": certs.server_key, "CA": certs.ca}
    flags = [str(paths.get(f, f)) for f in flags]
    proc = run_cli(tmp_path, *role_args("combiner", tmp_path), *flags)
    assert_usage_error(proc, message)
    assert not (tmp_path / "port").exists()  # it never listened


def test_client_cli_rejects_cert_without_key(tmp_path, certs):
    proc = run_cli(
        tmp_path,
        *role_args("client", tmp_path),
        *("--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert)),
    )
    assert_usage_error(proc, "a client certificate needs both --tls-cert and --tls-key")


@pytest.mark.parametrize("role", ["combiner", "reducer", "client"])
@pytest.mark.parametrize("problem", ["missing", "not-pem"])
def test_cli_rejects_unusable_tls_files(tmp_path, certs, role, problem):
    bad = tmp_path / "bad.pem"
    if problem == "not-pem":
        bad.write_text("this is not a certificate\n")
    if role == "combiner":
        flags = ["--tls-cert", str(bad), "--tls-key", str(certs.server_key)]
        flag = "--tls-cert"
    else:
        flags = ["--tls-ca", str(bad)]
        flag = "--tls-ca"
    proc = run_cli(tmp_path, *role_args(role, tmp_path), *flags)
    want = "cannot read" if problem == "missing" else "not a PEM file"
    assert_usage_error(proc, f"{flag} {bad}: {want}")
