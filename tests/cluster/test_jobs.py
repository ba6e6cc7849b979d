"""FederatedJobs on real pods, through the chart's operator (tests/support/release.py).

- The README's "Run a job": `kubectl apply -f examples/linear/job.yaml` gives a
  reducer, two combiners and four client pods; `kubectl get fedjobs -w` shows the
  rounds while it runs; `kubectl describe` shows the round Events; every committed
  model equals the FedAvg recomputed from what the state store recorded. Then the
  README's "Connect a client from outside the cluster", as written.
- TLS and an outside client: the README's TLS commands; the combiners serve the
  certificate, the client pods verify it, and a `fedkube client` process on the
  node's network (outside the cluster) joins through the clients NodePort with its
  own credential; its updates are in every round's FedAvg.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from fedkube.vocabulary import EventKind
from tests.support.certs import make_certs
from tests.support.fedjobs import (
    assert_models_are_the_recorded_fedavg,
    diagnostics,
    linear_job,
    status,
    wait_finished,
    wait_job_key,
    without_jobs,
)
from tests.support.k8s import kube_path, wait_for
from tests.support.release import Release, Shell, readme_block

pytestmark = pytest.mark.slow

RUN_HEADING = "### Run a job"
CONNECT_HEADING = "### Connect a client from outside the cluster"
TLS_HEADING = "### TLS"


@pytest.fixture
def team_a(release: Release) -> Iterator[str]:
    for _ in without_jobs(release, "team-a"):
        yield "team-a"


@pytest.fixture
def team_b(release: Release) -> Iterator[str]:
    for _ in without_jobs(release, "team-b"):
        yield "team-b"
    release.k8s.kubectl("delete", "secret", "linear-tls", "--ignore-not-found", namespace="team-b")


def _columns(line: str) -> dict[str, str]:
    """A `kubectl get fedjobs` row: NAME PHASE ROUND ROUNDS COMBINERS READY [METRIC] AGE."""
    parts = line.split()
    keys = ["name", "phase", "round", "rounds", "combiners", "ready"]
    return dict(zip(keys, parts, strict=False))


def _client_logs(shell: Shell, name: str) -> list[str]:
    out = []
    for line in (shell.dir / name).read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line).get("msg", ""))
        except (ValueError, AttributeError):
            continue
    return out


def test_readme_run_a_job_and_connect_a_client(release: Release, team_a: str, shell: Shell) -> None:
    ns = team_a
    apply, watch, describe = readme_block(RUN_HEADING)
    assert apply == f"kubectl -n {ns} apply -f examples/linear/job.yaml"
    shell.run(apply)
    key = wait_job_key(release, ns, "linear")

    # the table a user watches: progress while it runs, Succeeded at the end
    def finished(lines: list[str]) -> bool:
        return any(_columns(ln).get("phase") in ("Succeeded", "Failed") for ln in lines)

    lines = shell.watch(watch, finished, timeout=300)
    rows = [_columns(ln) for ln in lines if ln.startswith("linear ")]
    assert rows[-1]["phase"] == "Succeeded", lines
    running = [r for r in rows if r["phase"] == "Running"]
    assert running, f"no Running row while it ran:\n{lines}"
    rounds = [int(r["round"]) for r in rows if r.get("round", "").isdigit()]
    assert rounds == sorted(rounds) and rounds[-1] == 5, lines
    assert lines[-1].split()[6].startswith("loss="), lines[-1]  # the METRIC column

    st = status(release, ns, "linear")
    assert st["completedRounds"] == 5 and st["jobKey"] == key, st
    # the whole federation ran as pods: reducer, 2 combiners, 4 clients
    pods = release.k8s.api.list(kube_path("pods", ns), labelSelector="fedkube.dev/job=linear")
    by_component: dict[str, list[str]] = {}
    for p in pods:
        comp = p["metadata"]["labels"]["app.kubernetes.io/component"]
        by_component.setdefault(comp, []).append(p["metadata"]["name"])
        assert p["status"]["phase"] == "Running", (p["metadata"]["name"], p["status"])
    assert sorted(by_component["client"]) == [f"linear-client-{i}" for i in range(4)]
    assert len(by_component["combiner"]) == 2 and len(by_component["reducer"]) == 1

    described = shell.run(describe).stdout
    assert described.count("RoundCompleted") >= 1 and "JobSucceeded" in described, described
    events = release.k8s.kubectl_json(
        "get", "events", "--field-selector", "involvedObject.name=linear", namespace=ns
    )["items"]
    committed_events = [e for e in events if e["reason"] == "RoundCompleted"]
    assert sum(e.get("count", 1) for e in committed_events) >= 1

    # the models in S3 are the FedAvg of what the clients sent, round by round
    job = linear_job()
    used = assert_models_are_the_recorded_fedavg(
        release, key, "linear", job["spec"]["train"]["config"], 5
    )
    assert all(len(c) >= 3 for c in used.values()), used  # minUpdates

    # the README's outside client, as written: it connects with its own credential
    block = readme_block(CONNECT_HEADING)
    assert len(block) == 4, block
    get_yaml, port_forward, issue, client = block
    shell.run(get_yaml)
    shell.start(port_forward, log="port-forward.log")
    wait_for(
        lambda: "Forwarding from" in (shell.dir / "port-forward.log").read_text(),
        30,
        "kubectl port-forward to listen",
    )
    shell.run(issue)
    assert (shell.dir / "site-x.token").read_text().startswith("fkc_")
    proc = shell.start(client, in_netns=True, log="site-x.log")
    wait_for(
        lambda: "connected" in _client_logs(shell, "site-x.log") or proc.poll() is not None,
        60,
        "site-x to connect",
    )
    assert proc.poll() is None, (shell.dir / "site-x.log").read_text()[-3000:]
    state = release.state()
    try:
        wait_for(
            lambda: any(c.client == "site-x" for c in state.list_clients(key)),
            30,
            "the combiner to record site-x",
        )
    finally:
        state.close()


def test_tls_and_an_outside_client_next_to_the_client_pods(
    release: Release, team_b: str, shell: Shell
) -> None:
    ns = team_b
    node_ip = release.cluster.node_ip
    names = [
        "DNS:linear-clients",
        f"DNS:linear-clients.{ns}.svc",
        f"DNS:*.linear-combiner.{ns}.svc",
        f"IP:{node_ip}",
    ]
    certs = make_certs(shell.dir / "certs", server_names=names)
    for src, dst in (
        (certs.server_cert, "server.pem"),
        (certs.server_key, "server.key"),
        (certs.ca, "ca.pem"),
    ):
        (shell.dir / dst).write_bytes(src.read_bytes())
    create_secret, tls_client = readme_block(TLS_HEADING)
    shell.run(create_secret.replace("team-b", ns))
    # five clients per round, all needed: the four pods and the outside client
    manifest = linear_job(
        combiners={"replicas": 2, "tls": {"secretName": "linear-tls"}},
        clients={"perRound": 5, "minUpdates": 5, "waitTimeoutSeconds": 120},
    )
    release.k8s.apply(manifest, ns)
    key = wait_job_key(release, ns, "linear")
    get_yaml, port_forward, issue, _plain_client = readme_block(CONNECT_HEADING)
    team = "team-a"  # the README's commands name team-a; this job is in team-b
    shell.run(get_yaml.replace(team, ns))
    shell.start(port_forward, log="port-forward.log")
    wait_for(
        lambda: "Forwarding from" in (shell.dir / "port-forward.log").read_text(),
        30,
        "kubectl port-forward to listen",
    )
    shell.run(issue.replace(team, ns))
    proc = shell.start(tls_client, in_netns=True, log="site-x.log")
    st = wait_finished(release, ns, "linear", timeout=300)
    log = (shell.dir / "site-x.log").read_text(errors="replace")
    assert st["phase"] == "Succeeded", f"{st}\n--- site-x\n{log[-3000:]}{diagnostics(release, ns)}"
    assert proc.poll() is None, log[-3000:]
    used = assert_models_are_the_recorded_fedavg(
        release, key, "linear", manifest["spec"]["train"]["config"], 5
    )
    for r, clients in used.items():
        assert clients == sorted(["site-x", *(f"linear-client-{i}" for i in range(4))]), (r, used)

    # the combiners served TLS: their pods mount the key, the client pods only the CA
    def argv(statefulset: str) -> list[str]:
        sts = release.k8s.api.get(kube_path("statefulsets", ns, statefulset))
        c = sts["spec"]["template"]["spec"]["containers"][0]
        return [*c.get("command", []), *c.get("args", [])]

    assert "--tls-cert" in argv("linear-combiner") and "--tls-key" in argv("linear-combiner")
    assert "--tls-ca" in argv("linear-client") and "--tls-key" not in argv("linear-client")
    # site-x's (valid) credential does not make anyone else site-x, nor site-x anyone else
    impostor = shell.run(
        tls_client.replace("--client-id site-x", "--client-id site-y"),
        in_netns=True,
        check=False,
        timeout=120,
    )
    assert impostor.returncode == 3, impostor.stdout + impostor.stderr
    assert "PERMISSION_DENIED" in impostor.stderr, impostor.stderr
    state = release.state()
    try:
        events = state.list_events(key)
    finally:
        state.close()
    (impersonation,) = [e for e in events if e.kind == EventKind.IMPERSONATION]
    assert "'site-y'" in impersonation.message and "'site-x'" in impersonation.message
