"""Pure builders: a FederatedJob in, the manifests of its children out.

No Kubernetes client and no kopf here: every function takes the job (a
``fedkube.spec.FederatedJob``), its namespace and uid and the operator's
settings, and returns plain dicts ready for server-side apply. The kopf
handlers stay thin: they read, call these, apply, and patch the status that
``fedkube.operator.status.status_from`` computes (this module builds manifests
only; child names and Secret keys come from ``names``).

Children, in apply order (``build_children``):

1. ConfigMap ``<job>-job``: ``job.yaml``, the manifest the pods read.
2. Secret ``<job>-tokens``: ``reducer-token`` only, the token the reducer and
   the combiners share (clients hold per-client credentials from ``fedkube
   clients issue``, checked by the combiners against the state store).
3. Service ``<job>-reducer``: port 8080 ``metrics`` (``/healthz``, ``/status``,
   ``/metrics``).
4. headless Service ``<job>-combiner``: DNS for each combiner pod, ready or not;
   ports ``grpc`` and ``metrics`` (9090, ``/metrics`` and ``/healthz``).
5. Service ``<job>-clients``: where clients connect (ClusterIP, NodePort or
   LoadBalancer by ``spec.clients.service``).
6. StatefulSet ``<job>-combiner``: ``spec.combiners.replicas`` pods (0 when
   suspended) named ``<job>-combiner-<i>``.
7. Deployment ``<job>-reducer``: one pod, ``Recreate``, always running (a
   suspended job pauses its round loop through the state store and the
   reducer keeps reporting).

Pods roll when the job's configuration changes: their templates carry the
annotation ``fedkube.dev/config-hash`` (see ``config_hash`` for what it covers).

Prometheus: the reducer and combiner pods, the reducer Service and the
headless combiner Service carry ``prometheus.io/scrape``, ``prometheus.io/port``
and ``prometheus.io/path`` (the annotations of the usual Kubernetes scrape
configs); their containers and the Services name the port ``metrics``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from fedkube.operator import names
from fedkube.spec import API_VERSION, KIND, FederatedJob

# Where the pods find things.
JOB_MOUNT: Final = "/etc/fedkube"
JOB_FILE_KEY: Final = "job.yaml"
JOB_FILE: Final = f"{JOB_MOUNT}/{JOB_FILE_KEY}"
WORKDIR: Final = "/var/lib/fedkube"
TMPDIR: Final = "/tmp"  # the store writes temporary files here; the root FS is read-only

REDUCER_HEALTH_PORT: Final = 8080  # /healthz, /status and /metrics
#: the combiners' ``--metrics-port`` (COMBINER_METRICS_PORT_ALT when spec.combiners.port is it)
COMBINER_METRICS_PORT: Final = 9090
COMBINER_METRICS_PORT_ALT: Final = 9091
METRICS_PORT_NAME: Final = "metrics"
METRICS_PATH: Final = "/metrics"  # = fedkube.telemetry.METRICS_PATH
SCRAPE_ANNOTATION: Final = "prometheus.io/scrape"
SCRAPE_PORT_ANNOTATION: Final = "prometheus.io/port"
SCRAPE_PATH_ANNOTATION: Final = "prometheus.io/path"
REDUCER_TOKEN_ENV: Final = "FEDKUBE_REDUCER_TOKEN"  # = fedkube.rpc.REDUCER_TOKEN_ENV
CONFIG_HASH_ANNOTATION: Final = "fedkube.dev/config-hash"
TERMINATION_GRACE_SECONDS: Final = 30

# Manifest fields (camelCase paths under spec) that the reducer and combiner
# processes do not take from job.yaml at start-up, so a change to one of them
# must not restart every pod: the processes follow replicas and suspend live
# through the job record in the state store, and the operator alone acts on the
# others (Services, TTL, pod templates, which roll by themselves when they change).
NOT_IN_CONFIG_HASH: Final[tuple[tuple[str, ...], ...]] = (
    ("combiners", "replicas"),
    ("suspend",),
    ("ttlSecondsAfterFinished",),
    ("clients", "service"),
    ("combiners", "resources"),
    ("reducer", "resources"),
    ("image",),
    ("imagePullPolicy",),
)


class BuildError(ValueError):
    """The job cannot run on Kubernetes as specified; the message names the field."""


@dataclass(frozen=True)
class OperatorSettings:
    default_image: str = "ghcr.io/fedkube/fedkube:0.1.0"
    log_level: str = "info"
    image_pull_policy: str | None = None


# ---------------------------------------------------------------- shared pieces


def owner_reference(job: str, uid: str) -> dict[str, Any]:
    """The FederatedJob as the controlling owner (garbage collection deletes the child)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(
    name: str,
    job: FederatedJob,
    namespace: str,
    uid: str,
    component: str,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    if not uid:
        raise BuildError(f"FederatedJob {job.name!r} has no metadata.uid (needed as the owner)")
    if not namespace:
        raise BuildError(f"FederatedJob {job.name!r}: no namespace given")
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": names.labels(job.name, component),
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    meta["ownerReferences"] = [owner_reference(job.name, uid)]
    return meta


def check_runnable(job: FederatedJob) -> None:
    """Raise BuildError unless the job has what pods on Kubernetes need.

    Pods share no directory, so the models must live in S3 and the state in
    MongoDB; and the pods read their credentials from Secrets, so those must
    be named (the S3 store and the MongoDB state store refuse to start
    without them).
    """
    spec = job.spec
    s3 = spec.storage.s3
    if s3 is None:
        raise BuildError(
            "spec.storage.s3 is required on Kubernetes (pods share no local directory)"
        )
    if not s3.credentials_secret:
        raise BuildError(
            "spec.storage.s3.credentialsSecret is required on Kubernetes: the pods read "
            f"{' and '.join(names.S3_CREDENTIAL_KEYS)} from that Secret"
        )
    mongo = spec.state_store.mongodb
    if mongo is None:
        raise BuildError(
            "spec.stateStore.mongodb is required on Kubernetes (pods share no local directory)"
        )
    if not mongo.uri_secret:
        raise BuildError(
            "spec.stateStore.mongodb.uriSecret is required on Kubernetes: the pods read the "
            f"MongoDB URI from that Secret's key {names.MONGODB_URI_KEY!r} into ${mongo.uri_env}"
        )
    svc = spec.clients.service
    if svc.node_port is not None and svc.type == "ClusterIP":
        raise BuildError(
            "spec.clients.service.nodePort needs spec.clients.service.type NodePort or "
            "LoadBalancer (it is ClusterIP)"
        )


def job_manifest(job: FederatedJob, namespace: str) -> dict[str, Any]:
    """The job as the pods (and the state store's job record) see it.

    metadata is reduced to name and namespace: uid, resourceVersion,
    managedFields, labels and annotations (kubectl's and kopf's included)
    change without the job changing and would otherwise roll the pods.
    """
    manifest = job.to_manifest()
    manifest["metadata"] = {"name": job.name, "namespace": namespace}
    return manifest


def _job_yaml(job: FederatedJob, namespace: str) -> str:
    return yaml.safe_dump(job_manifest(job, namespace), sort_keys=True)


def config_hash(job: FederatedJob, namespace: str) -> str:
    """sha256 of the job configuration the pods start with (the ConfigMap's job.yaml
    without the fields in NOT_IN_CONFIG_HASH).

    It changes exactly when a pod would start differently, so a spec change rolls
    the pods while ``kubectl scale`` or suspend leave the running ones alone.
    """
    manifest = job_manifest(job, namespace)
    spec = manifest.get("spec", {})
    for path in NOT_IN_CONFIG_HASH:
        node = spec
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    data = {JOB_FILE_KEY: yaml.safe_dump(manifest, sort_keys=True)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _image(job: FederatedJob, settings: OperatorSettings) -> dict[str, Any]:
    out: dict[str, Any] = {"image": job.spec.image or settings.default_image}
    policy = job.spec.image_pull_policy or settings.image_pull_policy
    if policy:
        out["imagePullPolicy"] = policy
    return out


def _secret_env(env: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _store_env(job: FederatedJob) -> list[dict[str, Any]]:
    """S3 credentials and the MongoDB URI, from the Secrets the spec names."""
    check_runnable(job)
    s3 = job.spec.storage.s3
    mongo = job.spec.state_store.mongodb
    assert s3 is not None and s3.credentials_secret  # check_runnable
    assert mongo is not None and mongo.uri_secret
    env = [_secret_env(k, s3.credentials_secret, k) for k in names.S3_CREDENTIAL_KEYS]
    env.append(_secret_env(mongo.uri_env, mongo.uri_secret, names.MONGODB_URI_KEY))
    return env


def _container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def _volume_mounts() -> list[dict[str, Any]]:
    return [
        {"name": "job", "mountPath": JOB_MOUNT, "readOnly": True},
        {"name": "work", "mountPath": WORKDIR},
        {"name": "tmp", "mountPath": TMPDIR},
    ]


def _pod_spec(job: FederatedJob, container: dict[str, Any]) -> dict[str, Any]:
    return {
        # The pods never talk to the Kubernetes API, and a namespace full of
        # Services would otherwise fill their environment.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        # Fit for the "restricted" Pod Security Standard.
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [
            {"name": "job", "configMap": {"name": names.config_map(job.name)}},
            {"name": "work", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }


def scrape_annotations(port: int) -> dict[str, str]:
    """What tells Prometheus to scrape a pod or Service: its metrics port and path."""
    return {
        SCRAPE_ANNOTATION: "true",
        SCRAPE_PORT_ANNOTATION: str(port),
        SCRAPE_PATH_ANNOTATION: METRICS_PATH,
    }


def combiner_metrics_port(job: FederatedJob) -> int:
    """The combiners' metrics port: 9090, or 9091 when the gRPC port is 9090."""
    if job.spec.combiners.port == COMBINER_METRICS_PORT:
        return COMBINER_METRICS_PORT_ALT
    return COMBINER_METRICS_PORT


def _pod_template(
    job: FederatedJob,
    namespace: str,
    component: str,
    container: dict[str, Any],
    metrics_port: int,
) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": names.labels(job.name, component),
            "annotations": {
                CONFIG_HASH_ANNOTATION: config_hash(job, namespace),
                **scrape_annotations(metrics_port),
            },
        },
        "spec": _pod_spec(job, container),
    }


# ---------------------------------------------------------------- ConfigMap, Secret


def build_config_map(job: FederatedJob, namespace: str, uid: str) -> dict[str, Any]:
    """ConfigMap ``<job>-job`` with ``job.yaml``, mounted at /etc/fedkube in every pod."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(
            names.config_map(job.name),
            job,
            namespace,
            uid,
            names.COMPONENT_CONFIG,
            {CONFIG_HASH_ANNOTATION: config_hash(job, namespace)},
        ),
        "data": {JOB_FILE_KEY: _job_yaml(job, namespace)},
    }


def build_tokens_secret(
    job: FederatedJob, namespace: str, uid: str, reducer_token: str
) -> dict[str, Any]:
    """Secret ``<job>-tokens``: the reducer token (shared by the reducer and the combiners).

    No client token: each client has a credential of its own in the state store.
    The value goes in ``data`` (base64), not ``stringData``: server-side apply
    tracks ``stringData`` keys that are never stored, so a key dropped from
    ``stringData`` would stay in the Secret (kubernetes/kubernetes#108008).
    """
    if not reducer_token:
        raise BuildError(f"FederatedJob {job.name!r}: empty reducer token")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(
            names.tokens_secret(job.name), job, namespace, uid, names.COMPONENT_TOKENS
        ),
        "type": "Opaque",
        "data": {names.REDUCER_TOKEN_KEY: base64.b64encode(reducer_token.encode()).decode()},
    }


# ---------------------------------------------------------------- Services


def _service_port(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "port": port, "targetPort": port, "protocol": "TCP"}


def build_reducer_service(job: FederatedJob, namespace: str, uid: str) -> dict[str, Any]:
    """Service ``<job>-reducer``: the reducer's /healthz, /status and /metrics on port
    8080 (named ``metrics``; annotated for Prometheus)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(
            names.reducer_service(job.name),
            job,
            namespace,
            uid,
            names.COMPONENT_REDUCER,
            scrape_annotations(REDUCER_HEALTH_PORT),
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector(job.name, names.COMPONENT_REDUCER),
            "ports": [_service_port(METRICS_PORT_NAME, REDUCER_HEALTH_PORT)],
        },
    }


def build_combiner_headless_service(job: FederatedJob, namespace: str, uid: str) -> dict[str, Any]:
    """Headless Service ``<job>-combiner``: DNS ``<job>-combiner-<i>.<job>-combiner``
    for each pod, published before the pod is ready so the reducer can dial it; it
    also carries each pod's metrics port (annotated for Prometheus)."""
    port = job.spec.combiners.port
    metrics = combiner_metrics_port(job)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(
            names.combiner_headless_service(job.name),
            job,
            namespace,
            uid,
            names.COMPONENT_COMBINER,
            scrape_annotations(metrics),
        ),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": names.selector(job.name, names.COMPONENT_COMBINER),
            "ports": [_service_port("grpc", port), _service_port(METRICS_PORT_NAME, metrics)],
        },
    }


def build_clients_service(job: FederatedJob, namespace: str, uid: str) -> dict[str, Any]:
    """Service ``<job>-clients``: spreads client connections over the ready combiners."""
    check_runnable(job)
    svc = job.spec.clients.service
    port = _service_port("grpc", job.spec.combiners.port)
    if svc.node_port is not None:
        port["nodePort"] = svc.node_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(
            names.clients_service(job.name),
            job,
            namespace,
            uid,
            names.COMPONENT_COMBINER,
            svc.annotations,
        ),
        "spec": {
            "type": svc.type,
            "selector": names.selector(job.name, names.COMPONENT_COMBINER),
            "ports": [port],
        },
    }


# ---------------------------------------------------------------- workloads


def reducer_command(job: FederatedJob, settings: OperatorSettings) -> list[str]:
    """The reducer container's command (no args)."""
    return [
        "fedkube",
        "reducer",
        "--job",
        JOB_FILE,
        "--combiner-template",
        names.combiner_template(job.name, job.spec.combiners.port),
        "--workdir",
        WORKDIR,
        "--health-port",
        str(REDUCER_HEALTH_PORT),
        # A finished reducer keeps serving /healthz instead of exiting: a
        # Deployment would restart an exited pod over and over.
        "--linger",
        "--log-level",
        settings.log_level,
    ]


def combiner_command(job: FederatedJob, settings: OperatorSettings) -> list[str]:
    """The combiner container's command; Kubernetes expands ``$(POD_NAME)`` from its env."""
    return [
        "fedkube",
        "combiner",
        "--job",
        JOB_FILE,
        "--name",
        "$(POD_NAME)",
        "--listen",
        f"0.0.0.0:{job.spec.combiners.port}",
        "--metrics-port",
        str(combiner_metrics_port(job)),
        "--workdir",
        WORKDIR,
        "--log-level",
        settings.log_level,
    ]


def build_reducer_deployment(
    job: FederatedJob, namespace: str, uid: str, settings: OperatorSettings
) -> dict[str, Any]:
    """Deployment ``<job>-reducer``: one pod (Recreate: never two round loops at once)."""
    tokens = names.tokens_secret(job.name)
    env = [_secret_env(REDUCER_TOKEN_ENV, tokens, names.REDUCER_TOKEN_KEY), *_store_env(job)]
    container: dict[str, Any] = {
        "name": "reducer",
        **_image(job, settings),
        "command": reducer_command(job, settings),
        "env": env,
        "ports": [
            {"name": METRICS_PORT_NAME, "containerPort": REDUCER_HEALTH_PORT, "protocol": "TCP"}
        ],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": REDUCER_HEALTH_PORT},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": REDUCER_HEALTH_PORT},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "resources": copy.deepcopy(job.spec.reducer.resources),
        "securityContext": _container_security(),
        "volumeMounts": _volume_mounts(),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(
            names.reducer_deployment(job.name), job, namespace, uid, names.COMPONENT_REDUCER
        ),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": names.selector(job.name, names.COMPONENT_REDUCER)},
            "template": _pod_template(
                job, namespace, names.COMPONENT_REDUCER, container, REDUCER_HEALTH_PORT
            ),
        },
    }


def combiner_replicas(job: FederatedJob) -> int:
    """The StatefulSet's replicas: spec.combiners.replicas, or 0 while suspended."""
    return 0 if job.spec.suspend else job.spec.combiners.replicas


def build_combiner_statefulset(
    job: FederatedJob, namespace: str, uid: str, settings: OperatorSettings
) -> dict[str, Any]:
    """StatefulSet ``<job>-combiner``: pods ``<job>-combiner-<i>``, started in parallel.

    The pods get the reducer token and the store credentials but no client token:
    a combiner checks each client's own token against the job's credentials in
    the state store.
    """
    port = job.spec.combiners.port
    tokens = names.tokens_secret(job.name)
    env = [
        {
            "name": "POD_NAME",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        },
        _secret_env(REDUCER_TOKEN_ENV, tokens, names.REDUCER_TOKEN_KEY),
        *_store_env(job),
    ]
    container: dict[str, Any] = {
        "name": "combiner",
        **_image(job, settings),
        "command": combiner_command(job, settings),
        "env": env,
        "ports": [
            {"name": "grpc", "containerPort": port, "protocol": "TCP"},
            {
                "name": METRICS_PORT_NAME,
                "containerPort": combiner_metrics_port(job),
                "protocol": "TCP",
            },
        ],
        "livenessProbe": {
            "tcpSocket": {"port": port},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "readinessProbe": {
            "tcpSocket": {"port": port},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "resources": copy.deepcopy(job.spec.combiners.resources),
        "securityContext": _container_security(),
        "volumeMounts": _volume_mounts(),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(
            names.combiner_statefulset(job.name), job, namespace, uid, names.COMPONENT_COMBINER
        ),
        "spec": {
            "replicas": combiner_replicas(job),
            "serviceName": names.combiner_headless_service(job.name),
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": names.selector(job.name, names.COMPONENT_COMBINER)},
            "template": _pod_template(
                job, namespace, names.COMPONENT_COMBINER, container, combiner_metrics_port(job)
            ),
        },
    }


def build_children(
    job: FederatedJob,
    namespace: str,
    uid: str,
    settings: OperatorSettings,
    *,
    reducer_token: str,
) -> list[dict[str, Any]]:
    """Every child of the job, in apply order: ConfigMap, Secret, Services, StatefulSet,
    Deployment (what the pods mount and dial exists before the pods).

    ``reducer_token`` goes into the Secret (the handlers keep an existing one).
    """
    check_runnable(job)
    return [
        build_config_map(job, namespace, uid),
        build_tokens_secret(job, namespace, uid, reducer_token),
        build_reducer_service(job, namespace, uid),
        build_combiner_headless_service(job, namespace, uid),
        build_clients_service(job, namespace, uid),
        build_combiner_statefulset(job, namespace, uid, settings),
        build_reducer_deployment(job, namespace, uid, settings),
    ]
