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
from fedkube.spec import (
    API_VERSION,
    KIND,
    ClientTemplateSpec,
    CombinerTlsSpec,
    FederatedJob,
    MongoStateSpec,
    S3StorageSpec,
)

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
#: the label the StatefulSet controller puts on each pod: its ordinal (Kubernetes >= 1.28)
POD_INDEX_LABEL: Final = "apps.kubernetes.io/pod-index"
#: group that may read the mounted client tokens (the images' user is 10001:10001)
CLIENT_FS_GROUP: Final = 10001

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
    # the reducer follows spec.rounds through the job record, before each round
    ("rounds",),
    # the client StatefulSet's pod template rolls by itself
    ("clients", "template"),
)
CLIENT_TOKENS_MOUNT: Final = "/var/run/fedkube/client-tokens"
#: where spec.combiners.tls.secretName is mounted (tls.crt, tls.key, ca.crt)
TLS_MOUNT: Final = "/etc/fedkube/tls"
TLS_SERVER_KEYS: Final = ("tls.crt", "tls.key")  # what a combiner mounts of it
TLS_CA_KEYS: Final = ("ca.crt",)  # what the reducer and the clients mount


class BuildError(ValueError):
    """The job cannot run on Kubernetes as specified; the message names the field."""


@dataclass(frozen=True)
class StorageDefaults:
    """The S3 and MongoDB a job gets when it names none (the Helm chart's storage).

    The Secrets live in the operator's namespace; the operator copies their
    values into Secret ``<job>-storage`` in the job's namespace (pods can only
    read Secrets of their own namespace).
    """

    s3_endpoint: str | None = None
    s3_bucket: str = "fedkube"
    s3_secure: bool = True
    s3_public_endpoint: str | None = None
    s3_secret: str | None = None  # keys names.S3_CREDENTIAL_KEYS
    mongodb_secret: str | None = None  # key names.MONGODB_URI_KEY
    mongodb_database: str = "fedkube"

    @property
    def s3(self) -> bool:
        return bool(self.s3_endpoint and self.s3_secret)

    @property
    def mongodb(self) -> bool:
        return bool(self.mongodb_secret)


@dataclass(frozen=True)
class OperatorSettings:
    default_image: str = "ghcr.io/fedkube/fedkube:0.1.0"
    log_level: str = "info"
    image_pull_policy: str | None = None
    default_client_image: str = "ghcr.io/fedkube/fedkube-client:0.1.0"
    storage: StorageDefaults = StorageDefaults()
    namespace: str | None = None  # the operator's own (where the default Secrets are)
    #: spec.combiners.tls.secretName of jobs naming none (a Secret in the job's namespace)
    combiner_tls_secret: str | None = None


def with_defaults(job: FederatedJob, settings: OperatorSettings) -> FederatedJob:
    """The job with the operator's default S3 and MongoDB filled in where it names
    neither (``spec.storage`` / ``spec.stateStore`` empty), pointing at Secret
    ``<job>-storage``, and the default combiner TLS Secret where it names none; a job
    that names its own is returned unchanged."""
    d = settings.storage
    spec = job.spec
    patch: dict[str, Any] = {}
    if d.s3 and spec.storage.s3 is None and spec.storage.local is None:
        patch["storage"] = spec.storage.model_copy(
            update={
                "s3": S3StorageSpec(
                    endpoint=d.s3_endpoint or "",
                    bucket=d.s3_bucket,
                    secure=d.s3_secure,
                    public_endpoint=d.s3_public_endpoint,
                    credentials_secret=names.storage_secret(job.name),
                )
            }
        )
    if d.mongodb and spec.state_store.mongodb is None and spec.state_store.sqlite is None:
        patch["state_store"] = spec.state_store.model_copy(
            update={
                "mongodb": MongoStateSpec(
                    uri_secret=names.storage_secret(job.name), database=d.mongodb_database
                )
            }
        )
    if settings.combiner_tls_secret and spec.combiners.tls is None:
        patch["combiners"] = spec.combiners.model_copy(
            update={"tls": CombinerTlsSpec(secret_name=settings.combiner_tls_secret)}
        )
    if not patch:
        return job
    return job.model_copy(update={"spec": spec.model_copy(update=patch)})


def uses_default_storage(job: FederatedJob) -> bool:
    """True if the job (after `with_defaults`) reads Secret ``<job>-storage``."""
    own = names.storage_secret(job.name)
    s3 = job.spec.storage.s3
    mongo = job.spec.state_store.mongodb
    return (s3 is not None and s3.credentials_secret == own) or (
        mongo is not None and mongo.uri_secret == own
    )


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
            "spec.storage.s3 is required on Kubernetes (pods share no local directory), "
            "unless the operator has default storage (the Helm chart's storage values)"
        )
    if not s3.credentials_secret:
        raise BuildError(
            "spec.storage.s3.credentialsSecret is required on Kubernetes: the pods read "
            f"{' and '.join(names.S3_CREDENTIAL_KEYS)} from that Secret"
        )
    mongo = spec.state_store.mongodb
    if mongo is None:
        raise BuildError(
            "spec.stateStore.mongodb is required on Kubernetes (pods share no local directory), "
            "unless the operator has default storage (the Helm chart's storage values)"
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
    if job.metadata.uid:
        # part of the job key (fedkube.spec.job_key): the pods' state and objects
        manifest["metadata"]["uid"] = job.metadata.uid
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


def _field_env(env: str, path: str) -> dict[str, Any]:
    """An environment variable from the pod's own fields (the downward API)."""
    return {"name": env, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


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


def _tls_secret(job: FederatedJob) -> str | None:
    tls = job.spec.combiners.tls
    return tls.secret_name if tls is not None else None


def _with_tls(job: FederatedJob, pod: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Mount the combiners' TLS Secret (only `keys` of it) into the pod's container."""
    secret = _tls_secret(job)
    if secret is None:
        return pod
    pod["volumes"].append(
        {
            "name": "tls",
            "secret": {
                "secretName": secret,
                "items": [{"key": k, "path": k} for k in keys],
                "defaultMode": 0o440,
            },
        }
    )
    pod["containers"][0]["volumeMounts"].append(
        {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}
    )
    pod.setdefault("securityContext", {})["fsGroup"] = CLIENT_FS_GROUP
    return pod


def tls_args(job: FederatedJob, role: str) -> list[str]:
    """TLS flags of a role's command when spec.combiners.tls is set: the combiner serves
    the certificate, the reducer and the clients verify it against ca.crt."""
    if _tls_secret(job) is None:
        return []
    if role == "combiner":
        return ["--tls-cert", f"{TLS_MOUNT}/tls.crt", "--tls-key", f"{TLS_MOUNT}/tls.key"]
    return ["--tls-ca", f"{TLS_MOUNT}/ca.crt"]


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
        "spec": _with_tls(
            job,
            _pod_spec(job, container),
            TLS_SERVER_KEYS if component == names.COMPONENT_COMBINER else TLS_CA_KEYS,
        ),
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
    return _secret(
        names.tokens_secret(job.name),
        job,
        namespace,
        uid,
        names.COMPONENT_TOKENS,
        {names.REDUCER_TOKEN_KEY: reducer_token},
    )


def _secret(
    name: str,
    job: FederatedJob,
    namespace: str,
    uid: str,
    component: str,
    values: Mapping[str, str],
) -> dict[str, Any]:
    """An Opaque Secret child holding `values` (plain text) base64-encoded in ``data``
    (see build_tokens_secret for why not ``stringData``), keys sorted."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(name, job, namespace, uid, component),
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(values.items())},
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
    """Headless Service ``<job>-combiner``: DNS ``<job>-combiner-<i>.<job>-combiner.<ns>.svc``
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


def reducer_command(job: FederatedJob, namespace: str, settings: OperatorSettings) -> list[str]:
    """The reducer container's command (no args)."""
    return [
        "fedkube",
        "reducer",
        "--job",
        JOB_FILE,
        "--combiner-template",
        names.combiner_template(job.name, job.spec.combiners.port, namespace),
        "--workdir",
        WORKDIR,
        "--health-port",
        str(REDUCER_HEALTH_PORT),
        # A finished reducer keeps serving /healthz instead of exiting: a
        # Deployment would restart an exited pod over and over.
        "--linger",
        *tls_args(job, "reducer"),
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
        *tls_args(job, "combiner"),
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
        "command": reducer_command(job, namespace, settings),
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
        _field_env("POD_NAME", "metadata.name"),
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


# ---------------------------------------------------------------- in-cluster clients


def build_storage_secret(
    job: FederatedJob, namespace: str, uid: str, data: Mapping[str, str]
) -> dict[str, Any]:
    """Secret ``<job>-storage``: the operator's default S3 credentials and MongoDB URI,
    copied from its own namespace (``data``: key -> plain value)."""
    return _secret(
        names.storage_secret(job.name), job, namespace, uid, names.COMPONENT_STORAGE, data
    )


def client_ids(job: FederatedJob) -> list[str]:
    """The ids of the in-cluster clients: their pod names ``<job>-client-<i>``."""
    tpl = job.spec.clients.template
    n = 0 if tpl is None else tpl.replicas
    return [names.client_pod(job.name, i) for i in range(n)]


def build_client_tokens_secret(
    job: FederatedJob, namespace: str, uid: str, tokens: Mapping[str, str]
) -> dict[str, Any]:
    """Secret ``<job>-client-tokens``: key = client id (its pod name), value = the token
    issued to that client alone (its digest is in the state store)."""
    missing = [c for c in client_ids(job) if not tokens.get(c)]
    if missing:
        raise BuildError(f"FederatedJob {job.name!r}: no token for client(s) {missing[:3]}")
    return _secret(
        names.client_tokens_secret(job.name),
        job,
        namespace,
        uid,
        names.COMPONENT_CLIENT,
        {c: tokens[c] for c in client_ids(job)},
    )


def client_args(job: FederatedJob) -> list[str]:
    """What the operator passes to ``fedkube client`` in a client pod (the template's own
    ``args`` follow)."""
    tpl = job.spec.clients.template
    assert tpl is not None
    return [
        "--connect",
        f"{names.clients_service(job.name)}:{job.spec.combiners.port}",
        "--job",
        JOB_FILE,
        "--job-dir",
        tpl.working_dir or ".",
        "--client-id",
        "$(POD_NAME)",
        "--token-file",
        f"{CLIENT_TOKENS_MOUNT}/$(POD_NAME)",
        "--client-index",
        "$(FEDKUBE_CLIENT_INDEX)",
        "--num-clients",
        str(tpl.replicas),
        "--workdir",
        WORKDIR,
        *tls_args(job, "client"),
        "--log-level",
        "info",
    ]


def _client_container(
    job: FederatedJob, tpl: ClientTemplateSpec, settings: OperatorSettings
) -> dict[str, Any]:
    """The client pods' container: the template's image, the operator's connection
    arguments, the pod's name as client id and its own token file."""
    env = [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("FEDKUBE_CLIENT_INDEX", f"metadata.labels['{POD_INDEX_LABEL}']"),
        *copy.deepcopy(tpl.env),
    ]
    container: dict[str, Any] = {
        "name": "client",
        "image": tpl.image or settings.default_client_image,
    }
    policy = tpl.image_pull_policy or settings.image_pull_policy
    if policy:
        container["imagePullPolicy"] = policy
    container.update(
        {
            "command": list(tpl.command) or ["fedkube", "client"],
            "args": [*client_args(job), *tpl.args],
            "env": env,
            "resources": copy.deepcopy(tpl.resources),
            "securityContext": _container_security(),
            "volumeMounts": [
                *_volume_mounts(),
                {"name": "client-tokens", "mountPath": CLIENT_TOKENS_MOUNT, "readOnly": True},
            ],
        }
    )
    if tpl.working_dir:
        container["workingDir"] = tpl.working_dir
    return container


def build_client_statefulset(
    job: FederatedJob, namespace: str, uid: str, settings: OperatorSettings
) -> dict[str, Any]:
    """StatefulSet ``<job>-client`` (spec.clients.template): pods ``<job>-client-<i>``.

    Each pod is client ``<job>-client-<i>`` and presents that client's own token, the
    file named after its pod in Secret ``<job>-client-tokens``. All pods share one pod
    template, so the whole Secret is mounted in each: the pods of one StatefulSet run one
    image in one namespace and form one trust domain, while the combiner still binds each
    token to its client id (clients outside the cluster get credentials of their own from
    ``fedkube clients issue``). Clients reach the combiners through ``<job>-clients``
    like clients outside the cluster, and never see the reducer token or the storage
    credentials.
    """
    tpl = job.spec.clients.template
    if tpl is None:
        raise BuildError(f"FederatedJob {job.name!r} has no spec.clients.template")
    container = _client_container(job, tpl, settings)
    pod = _with_tls(job, _pod_spec(job, container), TLS_CA_KEYS)
    pod["volumes"].append(
        {
            "name": "client-tokens",
            "secret": {
                "secretName": names.client_tokens_secret(job.name),
                "defaultMode": 0o440,
            },
        }
    )
    pod["securityContext"]["fsGroup"] = CLIENT_FS_GROUP
    if tpl.node_selector:
        pod["nodeSelector"] = dict(tpl.node_selector)
    if tpl.tolerations:
        pod["tolerations"] = copy.deepcopy(tpl.tolerations)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(
            names.client_statefulset(job.name), job, namespace, uid, names.COMPONENT_CLIENT
        ),
        "spec": {
            "replicas": 0 if job.spec.suspend else tpl.replicas,
            "serviceName": names.client_statefulset(job.name),
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": names.selector(job.name, names.COMPONENT_CLIENT)},
            "template": {
                "metadata": {
                    "labels": names.labels(job.name, names.COMPONENT_CLIENT),
                    "annotations": {CONFIG_HASH_ANNOTATION: config_hash(job, namespace)},
                },
                "spec": pod,
            },
        },
    }


def build_children(
    job: FederatedJob,
    namespace: str,
    uid: str,
    settings: OperatorSettings,
    *,
    reducer_token: str,
    storage: Mapping[str, str] | None = None,
    client_tokens: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every child of the job, in apply order: Secrets and ConfigMap, Services,
    StatefulSets, Deployment (what the pods mount and dial exists before the pods).

    ``reducer_token`` goes into ``<job>-tokens`` (the handlers keep an existing one);
    ``storage`` (the default storage's credentials) into ``<job>-storage`` when the job
    uses it; ``client_tokens`` (client id -> token) into ``<job>-client-tokens`` when the
    job has ``spec.clients.template``.
    """
    check_runnable(job)
    out = []
    if uses_default_storage(job):
        if not storage:
            raise BuildError(f"FederatedJob {job.name!r}: the default storage has no credentials")
        out.append(build_storage_secret(job, namespace, uid, storage))
    out += [
        build_config_map(job, namespace, uid),
        build_tokens_secret(job, namespace, uid, reducer_token),
    ]
    if job.spec.clients.template is not None:
        out.append(build_client_tokens_secret(job, namespace, uid, client_tokens or {}))
    out += [
        build_reducer_service(job, namespace, uid),
        build_combiner_headless_service(job, namespace, uid),
        build_clients_service(job, namespace, uid),
        build_combiner_statefulset(job, namespace, uid, settings),
        build_reducer_deployment(job, namespace, uid, settings),
    ]
    if job.spec.clients.template is not None:
        out.append(build_client_statefulset(job, namespace, uid, settings))
    return out
