"""Names and labels of a FederatedJob's child objects, and the keys inside its
Secrets. Pure module.

One FederatedJob ``<job>`` owns (the README's "Kubernetes" section lists them
too):

=====================  ==================  ===========
object                 name                component
=====================  ==================  ===========
ConfigMap              ``<job>-job``       config
Secret                 ``<job>-tokens``    tokens
Deployment + Service   ``<job>-reducer``   reducer
StatefulSet            ``<job>-combiner``  combiner
headless Service       ``<job>-combiner``  combiner
client Service         ``<job>-clients``   combiner
StatefulSet            ``<job>-client``    client      (spec.clients.template only)
Secret                 ``<job>-client-tokens``  client (spec.clients.template only)
Secret                 ``<job>-storage``   storage     (the operator's default storage only)
=====================  ==================  ===========

The StatefulSet's pods are ``<job>-combiner-0 .. <job>-combiner-<N-1>``; the
reducer reaches pod ``i`` at ``<job>-combiner-<i>.<job>-combiner.<ns>.svc:<port>``
through the headless Service.

Length budget: a job name has at most ``fedkube.spec.MAX_NAME_LENGTH`` (40) characters.
Service names and pod names are DNS-1035/1123 labels (at most 63), and a
StatefulSet's pods carry the label ``controller-revision-hash:
<statefulset>-<hash>`` whose value is at most 63 characters with a hash of up
to 10, so a StatefulSet name has at most 52 characters
(kubernetes/kubernetes#64023: a longer one is accepted but never gets a pod).
``check_lengths`` asserts all of this for a name.

Secret keys: the operator writes ``REDUCER_TOKEN_KEY`` (the bearer token the
reducer and the combiners share) into ``<job>-tokens``, and nothing else:
clients have credentials of their own, issued per client with ``fedkube
clients issue`` into the job's state store, where the combiners check them
(``fedkube.identity``). ``LEGACY_CLIENT_TOKEN_KEY`` is the shared client token
an older operator kept there; the operator removes it from a Secret it finds
it in. The user's Secrets that the spec names hold ``S3_CREDENTIAL_KEYS``
(``spec.storage.s3.credentialsSecret``) and ``MONGODB_URI_KEY``
(``spec.stateStore.mongodb.uriSecret``). The pods read them as environment
variables and the operator reads the reducer token and the URI back.
"""

from __future__ import annotations

from typing import Final

# Labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_JOB: Final = "fedkube.dev/job"

APP_NAME: Final = "fedkube"
MANAGED_BY: Final = "fedkube-operator"

COMPONENT_REDUCER: Final = "reducer"
COMPONENT_COMBINER: Final = "combiner"
COMPONENT_CONFIG: Final = "config"
COMPONENT_TOKENS: Final = "tokens"
COMPONENT_CLIENT: Final = "client"
COMPONENT_STORAGE: Final = "storage"
COMPONENTS: Final = (
    COMPONENT_REDUCER,
    COMPONENT_COMBINER,
    COMPONENT_CONFIG,
    COMPONENT_TOKENS,
    COMPONENT_CLIENT,
    COMPONENT_STORAGE,
)

# Keys of the Secrets (see the module docstring).
REDUCER_TOKEN_KEY: Final = "reducer-token"
# Written by operators before per-client credentials; removed when found.
LEGACY_CLIENT_TOKEN_KEY: Final = "client-token"
# Each key is also the name of the pods' environment variable (fedkube.store reads them).
S3_CREDENTIAL_KEYS: Final = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MONGODB_URI_KEY: Final = "uri"

# Kubernetes limits.
DNS_LABEL_MAX: Final = 63
LABEL_VALUE_MAX: Final = 63
# controller-revision-hash = "<statefulset>-" + a hash of at most 10 characters.
REVISION_HASH_MAX: Final = 10
STATEFULSET_NAME_MAX: Final = LABEL_VALUE_MAX - 1 - REVISION_HASH_MAX  # 52
# spec.combiners.replicas has le=256, so the highest pod ordinal is 255.
MAX_COMBINER_ORDINAL: Final = 255
# spec.clients.template.replicas has le=fedkube.spec.MAX_TEMPLATE_CLIENTS (1000)
MAX_CLIENT_ORDINAL: Final = 999


def config_map(job: str) -> str:
    """The ConfigMap holding ``job.yaml`` (the job manifest the pods read)."""
    return f"{job}-job"


def tokens_secret(job: str) -> str:
    """The Secret with the key ``reducer-token`` (``REDUCER_TOKEN_KEY``), the token the
    reducer and the combiners share. Clients' tokens are not in it (``fedkube clients``)."""
    return f"{job}-tokens"


def client_statefulset(job: str) -> str:
    """The in-cluster clients (spec.clients.template): pods ``<job>-client-<i>``."""
    return f"{job}-client"


def client_pod(job: str, index: int) -> str:
    """Pod ``index`` of the client StatefulSet; its name is that client's id."""
    return f"{client_statefulset(job)}-{index}"


def client_tokens_secret(job: str) -> str:
    """Secret with one key per in-cluster client: its id, holding its own token."""
    return f"{job}-client-tokens"


def storage_secret(job: str) -> str:
    """The operator's copy of its default S3 and MongoDB credentials, in the job's namespace."""
    return f"{job}-storage"


def reducer(job: str) -> str:
    """The reducer Deployment and its Service (port 8080, /healthz)."""
    return f"{job}-reducer"


def combiner(job: str) -> str:
    """The combiners' StatefulSet and its headless Service (same name, as StatefulSets want)."""
    return f"{job}-combiner"


def combiner_pod(job: str, index: int) -> str:
    """Pod ``index`` of the combiner StatefulSet, also the combiner's name in the job."""
    return f"{combiner(job)}-{index}"


def reducer_deployment(job: str) -> str:
    return reducer(job)


def reducer_service(job: str) -> str:
    return reducer(job)


def combiner_statefulset(job: str) -> str:
    return combiner(job)


def combiner_headless_service(job: str) -> str:
    return combiner(job)


def clients_service(job: str) -> str:
    """The Service clients connect to; it spreads connections over the combiners."""
    return f"{job}-clients"


def combiner_host_suffix(job: str, namespace: str) -> str:
    """What follows a combiner pod's name in its DNS name: ``<job>-combiner.<ns>.svc``
    (the headless Service). With the namespace, so a TLS certificate can name all
    combiners as ``*.<job>-combiner.<ns>.svc``: gRPC refuses a wildcard over a single
    label (``*.<job>-combiner``: "Invalid toplevel subdomain")."""
    return f"{combiner(job)}.{namespace}.svc"


def combiner_address(job: str, index: int, port: int, namespace: str) -> str:
    """host:port of combiner ``index`` (headless Service DNS, any cluster domain)."""
    return f"{combiner_pod(job, index)}.{combiner_host_suffix(job, namespace)}:{port}"


def combiner_template(job: str, port: int, namespace: str) -> str:
    """The reducer's ``--combiner-template``: ``NAME=HOST:PORT`` with ``{i}`` left in.

    For job ``mnist`` in namespace ``ml`` and port 7070:
    ``mnist-combiner-{i}=mnist-combiner-{i}.mnist-combiner.ml.svc:7070``.
    """
    pod = f"{combiner(job)}-{{i}}"
    return f"{pod}={pod}.{combiner_host_suffix(job, namespace)}:{port}"


def labels(job: str, component: str) -> dict[str, str]:
    """The labels of every child object and pod template."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r} (expected one of {COMPONENTS})")
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: job,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_JOB: job,
    }


def selector(job: str, component: str) -> dict[str, str]:
    """matchLabels of a workload / Service selector: name + instance + component.

    Selectors of Deployments and StatefulSets are immutable, so they hold the
    labels that never change for a job's component; app.kubernetes.io/name
    keeps them from matching another application's pods with the same
    instance and component labels.
    """
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r} (expected one of {COMPONENTS})")
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: job, LABEL_COMPONENT: component}


def selector_string(job: str, component: str) -> str:
    """The label selector as a string, e.g. for the scale subresource's labelSelectorPath."""
    return ",".join(f"{k}={v}" for k, v in selector(job, component).items())


def child_names(job: str) -> dict[str, str]:
    """Every object name the operator creates for ``job``, keyed by a short description."""
    return {
        "configmap": config_map(job),
        "secret": tokens_secret(job),
        "deployment": reducer_deployment(job),
        "reducer-service": reducer_service(job),
        "statefulset": combiner_statefulset(job),
        "headless-service": combiner_headless_service(job),
        "clients-service": clients_service(job),
        "last-combiner-pod": combiner_pod(job, MAX_COMBINER_ORDINAL),
        "client-statefulset": client_statefulset(job),
        "last-client-pod": client_pod(job, MAX_CLIENT_ORDINAL),
        "client-tokens-secret": client_tokens_secret(job),
        "storage-secret": storage_secret(job),
    }


def check_lengths(job: str) -> list[str]:
    """Problems with the child names of ``job`` (empty when every name fits)."""
    problems = []
    for what, name in child_names(job).items():
        if len(name) > DNS_LABEL_MAX:
            problems.append(f"{what} name {name!r} is longer than {DNS_LABEL_MAX} characters")
    sts = combiner_statefulset(job)
    if len(sts) > STATEFULSET_NAME_MAX:
        problems.append(
            f"statefulset name {sts!r} is longer than {STATEFULSET_NAME_MAX} characters "
            "(its pods' controller-revision-hash label would exceed 63)"
        )
    return problems
