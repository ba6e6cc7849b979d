"""The dashboard reads FederatedJob objects (phase, conditions, events, combiners
ready) through the official kubernetes client from a real kube-apiserver, and says
plainly when it has neither a kubeconfig nor a service account."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from fedkube import spec
from fedkube.dashboard import kube, source
from fedkube.dashboard.config import DashboardConfig
from fedkube.dashboard.server import APP_SCRIPT
from fedkube.state import open_state_store
from tests.support.k8s import EXAMPLE_JOB, K8s, example_job, kube_path

FEDJOBS = f"{spec.API_VERSION}/federatedjobs"


def make_job(k8s: K8s, namespace: str, name: str) -> None:
    k8s.api.create(kube_path(FEDJOBS, namespace), example_job(name))
    status = {
        "status": {
            "phase": "Running",
            "currentRound": 4,
            "completedRounds": 3,
            "headlineMetric": "accuracy=0.9512",
            "message": "round 4 running",
            "combiners": {"replicas": 2, "ready": 1},
            "conditions": [
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "RoundRunning",
                    "message": "round 4 of 10",
                    "lastTransitionTime": "2026-12-02T10:00:00Z",
                }
            ],
        }
    }
    k8s.api.patch(kube_path(FEDJOBS, namespace, name, "status"), status)
    k8s.api.create(
        kube_path("events", namespace),
        {
            "metadata": {"name": f"{name}.round4", "namespace": namespace},
            "involvedObject": {
                "apiVersion": spec.API_VERSION,
                "kind": "FederatedJob",
                "name": name,
                "namespace": namespace,
            },
            "reason": "RoundStarted",
            "message": "round 4 started",
            "type": "Normal",
            "count": 1,
            "lastTimestamp": "2026-12-02T10:00:00Z",
        },
    )


def test_reads_federated_jobs_and_their_events(
    k8s: K8s, crd: None, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_job(k8s, namespace, "dash-k8s")
    monkeypatch.setenv("KUBECONFIG", str(k8s.kubeconfig))
    conn = kube.connect("auto", namespace)
    assert conn.connected, conn.where
    assert conn.where == "kubeconfig"
    (job,) = kube.list_jobs(conn)
    assert (job.namespace, job.name, job.phase) == (namespace, "dash-k8s", "Running")
    assert (job.current_round, job.rounds) == (4, 10)
    assert (job.combiners_ready, job.combiners) == (1, 2)
    assert job.headline == "accuracy=0.9512"
    assert job.conditions[0]["reason"] == "RoundRunning"
    (event,) = kube.job_events(conn, namespace, "dash-k8s")
    assert (event.reason, event.message) == ("RoundStarted", "round 4 started")


def test_the_jobs_and_detail_pages_show_the_cluster_objects(
    k8s: K8s, crd: None, namespace: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    make_job(k8s, namespace, "dash-page")
    monkeypatch.setenv("KUBECONFIG", str(k8s.kubeconfig))
    # the state store knows a job on Kubernetes by its job key (namespace, name, uid)
    (obj,) = kube.list_jobs(kube.connect("auto", namespace))
    assert obj.key.startswith(f"{namespace}/dash-page-")
    uri = f"sqlite:///{tmp_path / 'state.db'}"
    st = open_state_store(uri)
    st.create_job(obj.key, yaml.safe_load(EXAMPLE_JOB.read_text()))
    st.close()
    for k, v in DashboardConfig(state=uri, namespace=namespace).to_env().items():
        monkeypatch.setenv(k, v)
    source.config.cache_clear()
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    tables = [d.value for d in at.dataframe if "namespace" in d.value.columns]
    assert tables, "no FederatedJob table on the Jobs page"
    row = tables[0].iloc[0]
    assert (row["name"], row["phase"], row["combiners ready"]) == ("dash-page", "Running", "1/2")
    at.query_params["job"] = obj.key
    at.switch_page("pages/job_detail.py").run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [d.value for d in at.dataframe]
    assert any("RoundRunning" in set(t.get("reason", [])) for t in shown)
    assert any("round 4 started" in set(t.get("message", [])) for t in shown)


def test_without_kubeconfig_or_service_account_it_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    conn = kube.connect("auto", "")
    assert not conn.connected
    assert "no service account and no kubeconfig" in conn.where
    assert "off" in kube.connect("off", "").where
