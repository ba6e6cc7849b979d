"""FederatedJob objects as the cluster sees them, through the official
`kubernetes` client. I/O module.

The dashboard reads them when it has a way in: a service account (in a pod) or
a kubeconfig ($KUBECONFIG, ~/.kube/config). Without either, `connect` says so
plainly and the pages show the state store alone. It only reads (get, list):
the chart's dashboard role needs get/list on federatedjobs and events.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from fedkube.spec import API_VERSION, job_key

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "federatedjobs"


@dataclass
class KubeJob:
    """What the dashboard shows of one FederatedJob object."""

    namespace: str
    name: str
    key: str  # the job key (fedkube.spec.job_key): how the state store knows it
    phase: str
    current_round: int | None
    rounds: int | None
    combiners_ready: int | None
    combiners: int | None
    headline: str
    message: str
    conditions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class KubeEvent:
    at: str
    type: str
    reason: str
    message: str
    count: int


@dataclass
class Kube:
    """A connection to the cluster's API, or the reason there is none."""

    api: Any | None  # kubernetes.client.ApiClient
    where: str  # "service account", "kubeconfig <path>", or why not connected
    namespace: str  # "" for all namespaces

    @property
    def connected(self) -> bool:
        return self.api is not None


def connect(mode: str, namespace: str) -> Kube:
    """In-cluster config, else the kubeconfig; a Kube with ``api=None`` and the
    reason when `mode` is "off", the client is missing, or neither is found."""
    if mode == "off":
        return Kube(None, "reading FederatedJob objects is off (--kube off)", namespace)
    try:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException
    except ImportError:
        return Kube(None, "the kubernetes package is not installed", namespace)
    try:
        config.load_incluster_config()
        return Kube(client.ApiClient(), "service account", namespace)
    except ConfigException:
        pass
    # $KUBECONFIG (a list of paths) or ~/.kube/config, read now: the client's own
    # default is fixed when the kubernetes package is first imported
    files = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        cfg = client.Configuration()
        config.load_kube_config(config_file=files, client_configuration=cfg)
        return Kube(client.ApiClient(cfg), "kubeconfig", namespace)
    except (ConfigException, OSError) as exc:
        return Kube(
            None,
            "no service account and no kubeconfig found "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
            namespace,
        )


def _job(obj: dict[str, Any]) -> KubeJob:
    meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status") or {}
    combiners = status.get("combiners") or {}
    return KubeJob(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        key=job_key(meta.get("name", ""), meta.get("namespace"), meta.get("uid")),
        phase=status.get("phase", "") or "(no status yet)",
        current_round=status.get("currentRound"),
        rounds=spec.get("rounds"),
        combiners_ready=combiners.get("ready"),
        combiners=combiners.get("replicas", (spec.get("combiners") or {}).get("replicas")),
        headline=status.get("headlineMetric") or "",
        message=status.get("message") or "",
        conditions=[
            {
                "type": c.get("type", ""),
                "status": c.get("status", ""),
                "reason": c.get("reason", ""),
                "message": c.get("message", ""),
                "lastTransitionTime": c.get("lastTransitionTime", ""),
            }
            for c in status.get("conditions") or []
        ],
    )


def list_jobs(kube: Kube) -> list[KubeJob]:
    """Every FederatedJob the connection may list (its namespace, or all)."""
    from kubernetes import client

    api = client.CustomObjectsApi(kube.api)
    if kube.namespace:
        body = api.list_namespaced_custom_object(GROUP, VERSION, kube.namespace, PLURAL)
    else:
        body = api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    items: list[dict[str, Any]] = body.get("items", []) if isinstance(body, dict) else []
    jobs = [_job(o) for o in items]
    return sorted(jobs, key=lambda j: (j.namespace, j.name))


def job_events(kube: Kube, namespace: str, name: str, limit: int = 50) -> list[KubeEvent]:
    """The Kubernetes Events about one FederatedJob, newest first."""
    from kubernetes import client

    core = client.CoreV1Api(kube.api)
    selector = f"involvedObject.kind=FederatedJob,involvedObject.name={name}"
    items = core.list_namespaced_event(namespace, field_selector=selector).items
    events = [
        KubeEvent(
            at=str(e.last_timestamp or e.event_time or e.first_timestamp or ""),
            type=e.type or "",
            reason=e.reason or "",
            message=e.message or "",
            count=e.count or 1,
        )
        for e in items
    ]
    return sorted(events, key=lambda e: e.at, reverse=True)[:limit]
