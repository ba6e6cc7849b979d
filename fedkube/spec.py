"""The `FederatedJob` spec: one manifest for `kubectl apply` and `fedkube run`.

Pure module: pydantic models, defaults and validation. No I/O except the small
`load_job_file` helper that reads YAML from a path.

Kubernetes conventions are kept: field names are camelCase in the manifest and
numbers that are not integers (learning rates, ratios) are strings, for example
``learningRate: "0.01"``. In Python they are floats with snake_case names.
Durations (``*Seconds``) are integers.

A spec is bounded when it is read, so nothing accepted here fails later for its
size or type: a job file is at most `MAX_JOB_FILE_BYTES` and may not use YAML
anchors or aliases (an alias bomb of 1 KB expands to gigabytes); integers and
booleans are strict (`rounds: true` or `rounds: "3"` are refused); every
``*Seconds`` field has a floor and a ceiling; `train.config` is plain JSON of at
most `MAX_CONFIG_BYTES` and the whole spec at most `MAX_SPEC_BYTES` (checked by
parse_job: the apiserver cannot measure either, the operator refuses them when
it parses the CR). Every other bound is in the models, so the CRD generated from
them (`fedkube.operator.crd`) makes the apiserver refuse the same values.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import (
    AliasGenerator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from fedkube.errors import SpecError

API_VERSION: Final = "fedkube.dev/v1alpha1"
KIND: Final = "FederatedJob"
# Child objects are named "<job>-combiner-<n>", "<job>-reducer", ...; a
# Kubernetes Service name is a DNS-1035 label of at most 63 characters.
MAX_NAME_LENGTH = 40
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

# A job file (YAML) or manifest (JSON) larger than this is refused before it is
# parsed; the operator's ConfigMap with the job spec is limited to 1 MiB too.
MAX_JOB_FILE_BYTES: Final = 1024 * 1024
# Deepest nesting of maps and lists in a job file, and in train.config.
MAX_NESTING: Final = 64
# The whole spec as compact JSON. On Kubernetes the spec is kept twice in the
# object's annotations, which the apiserver limits to 256 KiB in all: by
# `kubectl apply` (last-applied-configuration) and by the operator (kopf's
# last-handled-configuration); a larger spec cannot be applied or handled.
MAX_SPEC_BYTES: Final = 96 * 1024
# train.config travels in every RoundPlan and Task message (config_json); its
# canonical JSON (`config_json`) must stay far below the control-message limit
# (fedkube.rpc.MAX_MESSAGE_BYTES, 4 MiB), and inside MAX_SPEC_BYTES.
MAX_CONFIG_BYTES: Final = 64 * 1024
MAX_ENV_ENTRIES: Final = 256
MAX_ENV_VALUE_LENGTH: Final = 32 * 1024
MAX_ANNOTATIONS: Final = 64
MAX_ANNOTATION_LENGTH: Final = 4096
# Bounds of durations, in seconds.
DAY: Final = 24 * 3600
MAX_TIMEOUT_SECONDS: Final = 7 * DAY  # roundTimeoutSeconds, waitTimeoutSeconds, ...
MIN_HEARTBEAT_SECONDS: Final = 1
MAX_HEARTBEAT_SECONDS: Final = 300
MAX_BACKOFF_SECONDS: Final = 3600
INT32_MAX: Final = 2**31 - 1
# Ceiling of the protocol's int64 fields (seed, maxBytes, num_examples): 2^53, the
# largest integer a JSON number holds exactly (the apiserver reads schema bounds as
# float64, so 2^63 - 1 would round up and overflow).
MAX_SAFE_INTEGER: Final = 2**53
# Clients per round, validation reports, ...: well inside the protocol's int32 quota.
MAX_CLIENTS: Final = 100_000
#: in-cluster client pods of one job (their tokens share one Secret, at most 1 MiB)
MAX_TEMPLATE_CLIENTS: Final = 1000


def _integer(value: Any) -> Any:
    """A whole number: 3, or 3.0 as the apiserver also accepts it; not true, "3" or 0.5."""
    if isinstance(value, bool):
        raise ValueError(f"must be an integer, not a boolean ({str(value).lower()})")
    if isinstance(value, str):
        raise ValueError(f"must be an integer, not a string ({value!r}): write it unquoted")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"must be an integer, not {value!r}")
        if not value.is_integer():
            raise ValueError(f"must be a whole number (an integer), not {value!r}")
        return int(value)
    return value


def _boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError(f"must be a boolean (true or false, unquoted), not {value!r}")
    return value


# An integer field: no booleans, strings or fractions (Kubernetes `type: integer`).
Integer = Annotated[int, BeforeValidator(_integer), Strict()]
# A boolean field: true or false only (not 1, or "true" as a string).
Boolean = Annotated[bool, BeforeValidator(_boolean), Strict()]


def _decimal(value: Any) -> Any:
    """Accept '0.01' (the manifest form) as well as 0.01; reject NaN and infinities."""
    if isinstance(value, bool):
        raise ValueError(f"not a number: {str(value).lower()}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError as exc:
            raise ValueError(f"not a number: {value!r}") from exc
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return value


class _FieldError(ValueError):
    """A model validator's error about one field, named as in the manifest (camelCase).

    parse_job appends `field` to the error location, so the message names the
    full manifest path, for example ``spec.clients.minUpdates``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# A float that is written as a string in the manifest.
Decimal = Annotated[
    float,
    BeforeValidator(_decimal),
    PlainSerializer(lambda v: repr(float(v)), return_type=str, when_used="json"),
]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class Metadata(_Model):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str
    namespace: str | None = None
    #: set on Kubernetes (the operator writes it into the pods' job file): part of the job key
    uid: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_name(self) -> Metadata:
        if len(self.name) > MAX_NAME_LENGTH:
            raise _FieldError(
                "name",
                f"{self.name!r} is {len(self.name)} characters; at most "
                f"{MAX_NAME_LENGTH} leave room for child object names",
            )
        if not _NAME_RE.fullmatch(self.name):
            raise _FieldError(
                "name",
                f"{self.name!r} must be a DNS-1035 label: lower-case letters, "
                "digits and '-', starting with a letter",
            )
        return self


class ModelSpec(_Model):
    """Where the seed (round 0) model comes from."""

    seed_uri: str | None = Field(
        default=None,
        description="Seed model: a path (relative to the job file), file:// URI or object key.",
    )
    init_command: list[str] | None = Field(
        default=None,
        description="Command run once by one client as `CMD OUT_MODEL` to create the seed.",
    )
    init_fn: str | None = Field(
        default=None,
        description="In-process seed function `package.module:function` returning tensors.",
    )
    max_bytes: Integer = Field(
        default=2 * 1024**3,
        gt=0,
        le=MAX_SAFE_INTEGER,
        description="Largest accepted model or update file in bytes.",
    )

    @model_validator(mode="after")
    def _one_seed(self) -> ModelSpec:
        given = [
            alias
            for alias, value in (
                ("seedUri", self.seed_uri),
                ("initCommand", self.init_command),
                ("initFn", self.init_fn),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise _FieldError(
                given[-1], f"set at most one of seedUri, initCommand, initFn (got {given})"
            )
        return self


class TrainSpec(_Model):
    """The client's training entrypoint (see the train entrypoint contract)."""

    command: list[str] | None = Field(
        default=None, description="Run as `COMMAND IN_MODEL OUT_MODEL` for each train task."
    )
    fn: str | None = Field(
        default=None, description="In-process train function `package.module:function`."
    )
    validate_command: list[str] | None = Field(
        default=None, description="Run as `COMMAND IN_MODEL OUT_JSON` for each validation task."
    )
    validate_fn: str | None = Field(
        default=None, description="In-process validate function `package.module:function`."
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form train config (plain JSON), passed as FEDKUBE_CONFIG; at most "
        f"{MAX_CONFIG_BYTES // 1024} KiB as compact JSON, since it travels in every task message.",
    )
    env: dict[str, Annotated[str, Field(max_length=MAX_ENV_VALUE_LENGTH)]] = Field(
        default_factory=dict,
        max_length=MAX_ENV_ENTRIES,
        description="Extra environment for the train command.",
    )

    @field_validator("config")
    @classmethod
    def _bounded_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        problem = _json_problem(config, "", 0)
        if problem is not None:
            raise ValueError(f"must be plain JSON: {problem}")
        size = len(config_json(config).encode())
        if size > MAX_CONFIG_BYTES:
            raise ValueError(
                f"is {size} bytes as JSON, over the limit of {MAX_CONFIG_BYTES} bytes "
                f"({MAX_CONFIG_BYTES // 1024} KiB): it travels in every task message; "
                "put large data in files the train code reads"
            )
        return config

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not name or "=" in name or "\0" in name:
                raise ValueError(f"{name!r} is not an environment variable name")
            if "\0" in value:
                raise ValueError(f"the value of {name} contains a NUL character")
        return env


class SimulationSpec(_Model):
    """Clients that `fedkube run` starts on this machine (ignored by the operator)."""

    clients: Integer = Field(
        default=0, ge=0, le=10_000, description="Simulated clients `fedkube run` starts locally."
    )
    in_process: Boolean = Field(
        default=True,
        description="Use the in-process train/validate functions when both forms are given.",
    )


class ClientServiceSpec(_Model):
    """How clients outside the job reach the combiners (Kubernetes only)."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP",
        description="Type of the client Service: ClusterIP, NodePort or LoadBalancer.",
    )
    node_port: Integer | None = Field(
        default=None, ge=30000, le=32767, description="Fixed node port (NodePort, LoadBalancer)."
    )
    annotations: dict[str, Annotated[str, Field(max_length=MAX_ANNOTATION_LENGTH)]] = Field(
        default_factory=dict,
        max_length=MAX_ANNOTATIONS,
        description="Annotations of the client Service (e.g. for a cloud LB).",
    )


class ClientTemplateSpec(_Model):
    """Client pods the operator runs in the job's namespace (a StatefulSet
    ``<job>-client``, so each pod's name ``<job>-client-<i>`` is a stable client id)."""

    replicas: Integer = Field(
        default=2,
        ge=0,
        le=MAX_TEMPLATE_CLIENTS,
        description="Number of client pods (at most 1000: their tokens share one Secret).",
    )
    image: str | None = Field(
        default=None,
        description="Image with the job's train code (default: the operator's client image).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Pull policy of that image."
    )
    command: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Entrypoint of the client container (default: `fedkube client`).",
    )
    args: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Extra arguments after the ones the operator passes (--connect, --job, "
        "--client-id, --token-file, ...).",
    )
    working_dir: str | None = Field(
        default=None,
        description="Directory holding the train code that spec.train names (default: the "
        "image's working directory).",
    )
    env: list[dict[str, Any]] = Field(
        default_factory=list, max_length=128, description="Extra environment (Kubernetes EnvVar)."
    )
    resources: dict[str, Any] = Field(
        default_factory=dict, description="Kubernetes ResourceRequirements of a client pod."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node selector of the client pods."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, max_length=64, description="Tolerations of the client pods."
    )


class ClientsSpec(_Model):
    """Client selection, quorum and deadlines of each round."""

    per_round: Integer = Field(
        default=2, ge=1, le=MAX_CLIENTS, description="Clients selected per round (total)."
    )
    min_updates: Integer = Field(
        default=1,
        ge=1,
        le=MAX_CLIENTS,
        description="Quorum: updates needed for a round to succeed.",
    )
    round_timeout_seconds: Integer = Field(
        default=300,
        ge=1,
        le=MAX_TIMEOUT_SECONDS,
        description="Deadline in seconds for train tasks of one round attempt (at most 7 days).",
    )
    wait_timeout_seconds: Integer = Field(
        default=120,
        ge=1,
        le=MAX_TIMEOUT_SECONDS,
        description="How long (seconds) a round waits for enough connected clients (at most "
        "7 days).",
    )
    heartbeat_seconds: Integer = Field(
        default=5,
        ge=MIN_HEARTBEAT_SECONDS,
        le=MAX_HEARTBEAT_SECONDS,
        description="Client heartbeat in seconds (1 to 300); combiners forget clients after 3 "
        "missed.",
    )
    simulation: SimulationSpec = Field(default_factory=SimulationSpec)
    service: ClientServiceSpec = Field(default_factory=ClientServiceSpec)
    template: ClientTemplateSpec | None = Field(
        default=None,
        description="In-cluster clients (Kubernetes): the operator runs `replicas` client pods "
        "from this template, each with its own credential.",
    )

    @model_validator(mode="after")
    def _quorum(self) -> ClientsSpec:
        if self.min_updates > self.per_round:
            raise _FieldError(
                "minUpdates",
                f"{self.min_updates} must be <= clients.perRound ({self.per_round})",
            )
        return self


class CombinerTlsSpec(_Model):
    """TLS on the combiners' gRPC port (Kubernetes)."""

    secret_name: str = Field(
        description="Secret in the job's namespace with tls.crt, tls.key and ca.crt (e.g. "
        "made by cert-manager); the certificate must name <job>-clients, "
        "*.<job>-combiner.<namespace>.svc and the address outside clients dial.",
        min_length=1,
        max_length=253,
    )


class CombinersSpec(_Model):
    """The combiners: the servers clients connect to; each aggregates its clients' updates."""

    replicas: Integer = Field(default=1, ge=1, le=256, description="Number of combiners.")
    port: Integer = Field(default=7070, ge=1, le=65535, description="gRPC port of each combiner.")
    resources: dict[str, Any] = Field(
        default_factory=dict, description="Kubernetes ResourceRequirements of a combiner pod."
    )
    tls: CombinerTlsSpec | None = Field(
        default=None,
        description="Serve TLS from this Secret; the reducer and in-cluster clients verify "
        "it with its ca.crt (Kubernetes).",
    )


class ReducerSpec(_Model):
    """The reducer: runs the round loop and combines the combiners' aggregates."""

    resources: dict[str, Any] = Field(
        default_factory=dict, description="Kubernetes ResourceRequirements of the reducer pod."
    )


class FedAvgAggregator(_Model):
    name: Literal["fedavg"] = "fedavg"


class MedianAggregator(_Model):
    name: Literal["median"]


class TrimmedMeanAggregator(_Model):
    name: Literal["trimmedmean"]
    trim_ratio: Annotated[
        Decimal, Field(ge=0.0, lt=0.5, description="Fraction trimmed at each end, in [0, 0.5).")
    ] = 0.1


AggregatorSpec = Annotated[
    FedAvgAggregator | MedianAggregator | TrimmedMeanAggregator, Field(discriminator="name")
]


class FedAvgOptimizer(_Model):
    name: Literal["fedavg"] = "fedavg"


class FedAvgMOptimizer(_Model):
    name: Literal["fedavgm"]
    learning_rate: Annotated[Decimal, Field(gt=0, description="Server learning rate.")] = 1.0
    momentum: Annotated[Decimal, Field(ge=0, lt=1, description="Server momentum.")] = 0.9


class _AdaptiveOptimizer(_Model):
    learning_rate: Annotated[Decimal, Field(gt=0, description="Server learning rate.")] = 0.01
    beta1: Annotated[Decimal, Field(ge=0, lt=1, description="First-moment decay.")] = 0.9
    beta2: Annotated[Decimal, Field(ge=0, lt=1, description="Second-moment decay.")] = 0.99
    tau: Annotated[Decimal, Field(gt=0, description="Adaptivity: added to sqrt(v).")] = 1e-3


class FedAdamOptimizer(_AdaptiveOptimizer):
    name: Literal["fedadam"]


class FedYogiOptimizer(_AdaptiveOptimizer):
    name: Literal["fedyogi"]


class FedAdagradOptimizer(_AdaptiveOptimizer):
    name: Literal["fedadagrad"]


ServerOptimizerSpec = Annotated[
    FedAvgOptimizer | FedAvgMOptimizer | FedAdamOptimizer | FedYogiOptimizer | FedAdagradOptimizer,
    Field(discriminator="name"),
]


class WeightsSpec(_Model):
    """Weight policy: bounds on the num_examples a client claims for an update.

    num_examples is self-reported by each client and weighs its update in FedAvg,
    so one client claiming 10^12 examples would otherwise be the whole step. The
    bounds apply before aggregation; unset (the default) means no bound.
    """

    max_examples: Integer | None = Field(
        default=None,
        ge=1,
        le=MAX_SAFE_INTEGER,
        description="Cap on the num_examples a client may claim for one update (num_examples "
        "is self-reported): larger claims are clipped to it before aggregation.",
    )
    max_median_multiple: Decimal | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Cap each claim of num_examples (self-reported) at this multiple of the "
        'median claim of the accepted updates of the previous committed round, e.g. "3"; '
        "round 1 has no previous round, so there only maxExamples applies.",
    )


class ValidationSpec(_Model):
    """Validation of the global model by the clients."""

    enabled: Boolean = Field(default=True, description="Ask clients to validate the global model.")
    every: Integer = Field(
        default=1, ge=1, le=100_000, description="Validate the global model every N rounds."
    )
    per_round: Integer | None = Field(
        default=None,
        ge=1,
        le=MAX_CLIENTS,
        description="Clients asked to validate (default: all connected).",
    )
    timeout_seconds: Integer = Field(
        default=120,
        ge=1,
        le=MAX_TIMEOUT_SECONDS,
        description="Deadline in seconds for validation tasks of one round (at most 7 days).",
    )
    min_reports: Integer = Field(
        default=1,
        ge=1,
        le=MAX_CLIENTS,
        description="Validation reports needed to record the round's metrics.",
    )


class RetrySpec(_Model):
    """Retries of a failed round."""

    max_attempts: Integer = Field(default=3, ge=1, le=100, description="Attempts per round.")
    backoff_seconds: Integer = Field(
        default=2,
        ge=0,
        le=MAX_BACKOFF_SECONDS,
        description="Seconds to wait before the next attempt of a failed round, doubled after "
        "each failure (at most 60 s), so a short outage (storage restart) costs a retry, not "
        "the job.",
    )


class LocalStorageSpec(_Model):
    """Model files in a local directory."""

    path: str = Field(default="store", description="Directory, relative to the workdir.")


class S3StorageSpec(_Model):
    """Model files in an S3-compatible object store."""

    endpoint: str = Field(description="host:port of the S3 endpoint (the in-cluster address).")
    bucket: str = Field(description="Bucket of the model files.")
    region: str | None = Field(default=None, description="Region of the bucket.")
    secure: Boolean = Field(default=True, description="Use HTTPS.")
    public_endpoint: str | None = Field(
        default=None,
        description="host:port clients outside the cluster use; presigned URLs are signed for it.",
    )
    credentials_secret: str | None = Field(
        default=None, description="Kubernetes Secret with AWS_ACCESS_KEY_ID/SECRET_ACCESS_KEY."
    )


class StorageSpec(_Model):
    """Where model files live: local (the default) or s3, at most one."""

    local: LocalStorageSpec | None = None
    s3: S3StorageSpec | None = None

    @model_validator(mode="after")
    def _one(self) -> StorageSpec:
        if self.local is not None and self.s3 is not None:
            raise _FieldError("s3", "set either local or s3, not both")
        return self


class SqliteStateSpec(_Model):
    """Round state in a SQLite file."""

    path: str = Field(default="state.db", description="File, relative to the workdir.")


class MongoStateSpec(_Model):
    """Round state in MongoDB."""

    uri_secret: str | None = Field(
        default=None, description="Kubernetes Secret whose key `uri` holds the MongoDB URI."
    )
    uri_env: str = Field(
        default="FEDKUBE_MONGODB_URI", description="Environment variable with the MongoDB URI."
    )
    database: str = Field(default="fedkube", description="Database name.")


class StateStoreSpec(_Model):
    """Where round state lives: sqlite (the default) or mongodb, at most one."""

    sqlite: SqliteStateSpec | None = None
    mongodb: MongoStateSpec | None = None

    @model_validator(mode="after")
    def _one(self) -> StateStoreSpec:
        if self.sqlite is not None and self.mongodb is not None:
            raise _FieldError("mongodb", "set either sqlite or mongodb, not both")
        return self


class JobSpec(_Model):
    """The job: rounds, clients, training entrypoint, aggregation, storage."""

    rounds: Integer = Field(ge=1, le=100_000, description="Number of federated rounds.")
    suspend: Boolean = Field(default=False, description="Pause the round loop between rounds.")
    seed: Integer = Field(
        default=0,
        ge=-MAX_SAFE_INTEGER,
        le=MAX_SAFE_INTEGER,
        description="Seed for client selection.",
    )
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    clients: ClientsSpec = Field(default_factory=ClientsSpec)
    combiners: CombinersSpec = Field(default_factory=CombinersSpec)
    reducer: ReducerSpec = Field(default_factory=ReducerSpec)
    image: str | None = Field(
        default=None, description="Container image of the reducer and combiners (Kubernetes)."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Pull policy of that image (Kubernetes)."
    )
    aggregator: AggregatorSpec = Field(
        default_factory=FedAvgAggregator,
        description="How a round's updates are combined: fedavg, median or trimmedmean.",
    )
    server_optimizer: ServerOptimizerSpec = Field(
        default_factory=FedAvgOptimizer,
        description="Server optimizer on the pseudo-gradient: fedavg, fedavgm, fedadam, "
        "fedyogi or fedadagrad.",
    )
    weights: WeightsSpec = Field(default_factory=WeightsSpec)
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    state_store: StateStoreSpec = Field(default_factory=StateStoreSpec)
    ttl_seconds_after_finished: Integer | None = Field(
        default=None,
        ge=0,
        le=INT32_MAX,
        description="Delete the job this many seconds after it finished (Kubernetes).",
    )


class FederatedJob(_Model):
    api_version: Literal["fedkube.dev/v1alpha1"] = Field(default=API_VERSION)
    kind: Literal["FederatedJob"] = KIND
    metadata: Metadata
    spec: JobSpec
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def key(self) -> str:
        """The job key: what the state store, the object keys, the client credentials and
        the metrics know this job by (see `job_key`)."""
        return job_key(self.metadata.name, self.metadata.namespace, self.metadata.uid)

    def to_manifest(self) -> dict[str, Any]:
        """The manifest form (camelCase, decimals as strings, no unset status)."""
        return self.model_dump(mode="json", by_alias=True, exclude={"status"}, exclude_none=True)


#: characters of the uid in a job key: enough to tell two incarnations of one name apart
JOB_KEY_UID_CHARS: Final = 8


def job_key(name: str, namespace: str | None = None, uid: str | None = None) -> str:
    """The job key.

    ``fedkube run`` (no uid): the job's name, as it always was. On Kubernetes:
    ``<namespace>/<name>-<first 8 characters of the uid>``, so two FederatedJobs of
    one name in two namespaces never share a record, a model or a credential, and a
    job deleted and created again under its old name starts afresh (continue from an
    old model with ``spec.model.seedUri``).
    """
    if not uid:
        return name
    return f"{namespace or 'default'}/{name}-{uid.replace('-', '')[:JOB_KEY_UID_CHARS]}"


# Fields holding a discriminated union: pydantic puts the tag into the location.
_TAGGED = {"aggregator", "serverOptimizer"}


def config_json(config: dict[str, Any]) -> str:
    """The canonical JSON of train.config (sorted keys, compact, ASCII): what its limit measures."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _json_problem(value: Any, where: str, depth: int) -> str | None:
    """Why `value` is not plain JSON (a YAML date, a set, NaN, a non-string key), or None."""
    if depth > MAX_NESTING:
        return f"{where or 'it'} is nested more than {MAX_NESTING} levels deep"
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where or 'a value'} is {value!r}"
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _json_problem(item, f"{where}[{i}]", depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"key {key!r}{' of ' + where if where else ''} is not a string"
            problem = _json_problem(item, f"{where}.{key}" if where else key, depth + 1)
            if problem is not None:
                return problem
        return None
    kind = type(value).__name__
    return f"{where or 'a value'} is a {kind} (quote it in YAML to pass a string)"


def _loc(err: Any) -> str:
    """The manifest path of a pydantic error, e.g. ``spec.clients.minUpdates``."""
    loc = tuple(err.get("loc", ()))
    parts: list[str] = []
    for i, p in enumerate(loc):
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        elif i == 2 and loc[0] == "spec" and loc[1] in _TAGGED:
            continue  # spec.aggregator.<tag>.field: the union tag is not a field
        else:
            parts.append(str(p))
    ctx = err.get("ctx") or {}
    if isinstance(ctx.get("error"), _FieldError):
        parts.append(ctx["error"].field)
    elif err.get("type") in {"union_tag_invalid", "union_tag_not_found"}:
        parts.append(str(ctx.get("discriminator", "name")).strip("'"))
    return ".".join(parts) or "<root>"


def parse_job(data: Any, *, source: str = "job") -> FederatedJob:
    """Validate a manifest (a mapping) into a FederatedJob.

    Raises SpecError whose message lists every bad field by its manifest path,
    for example ``spec.clients.minUpdates``.
    """
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}: a FederatedJob manifest must be a mapping, got {type(data).__name__}"
        )
    try:
        job = FederatedJob.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {_loc(err)}: {msg}")
        raise SpecError(f"{source}: invalid FederatedJob:\n" + "\n".join(lines)) from None
    problem = _spec_size_problem(job.to_manifest()["spec"])
    if problem is not None:
        raise SpecError(f"{source}: invalid FederatedJob:\n  spec: {problem}")
    return job


def _compact_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


def _spec_size_problem(manifest_spec: dict[str, Any]) -> str | None:
    """Why the spec (manifest form) is too large, naming its largest field, or None."""
    size = _compact_size(manifest_spec)
    if size <= MAX_SPEC_BYTES:
        return None
    parts: dict[str, int] = {}
    for key, value in manifest_spec.items():
        if isinstance(value, dict) and value:
            parts.update({f"spec.{key}.{k}": _compact_size(v) for k, v in value.items()})
        else:
            parts[f"spec.{key}"] = _compact_size(value)
    largest = max(parts, key=lambda k: parts[k])
    return (
        f"is {size} bytes as JSON, over the limit of {MAX_SPEC_BYTES} bytes "
        f"({MAX_SPEC_BYTES // 1024} KiB: on Kubernetes the spec is kept in annotations, "
        f"limited to 256 KiB); the largest part is {largest} ({parts[largest]} bytes)"
    )


def load_job_file(path: str | Path) -> FederatedJob:
    """Read and validate a FederatedJob YAML file (the first FederatedJob document).

    The file is bounded before it is parsed: at most MAX_JOB_FILE_BYTES, no YAML
    anchors or aliases (they can expand a 1 KB file to gigabytes), nesting at
    most MAX_NESTING deep.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_JOB_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{p}: cannot read job file: {exc.strerror}") from None
    if len(data) > MAX_JOB_FILE_BYTES:
        raise SpecError(
            f"{p}: the job file is larger than {MAX_JOB_FILE_BYTES} bytes (1 MiB), the limit"
        )
    try:
        _check_yaml_events(data, p)
        docs = [d for d in yaml.load_all(data, Loader=_YAML_LOADER) if d is not None]
    except yaml.YAMLError as exc:
        raise SpecError(f"{p}: not valid YAML: {exc}") from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if not jobs:
        raise SpecError(f"{p}: no document with kind: {KIND}")
    return parse_job(jobs[0], source=str(p))


# libyaml when present (fast); the pure-Python loader otherwise.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _check_yaml_events(data: bytes, path: Path) -> None:
    """Refuse anchors, aliases and deep nesting, scanning the parser's events (nothing
    is built yet, so a bomb costs no more than its size)."""
    depth = 0
    for event in yaml.parse(data, Loader=_YAML_LOADER):
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            line = event.start_mark.line + 1 if event.start_mark else "?"
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise SpecError(
                f"{path}: line {line}: YAML anchors and aliases ({sign}{anchor}) are not "
                "allowed in a job file; write the value out"
            )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise SpecError(f"{path}: line {line}: nested more than {MAX_NESTING} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def job_from_json(text: str) -> FederatedJob:
    """Validate a FederatedJob manifest given as JSON (at most MAX_JOB_FILE_BYTES)."""
    if len(text) > MAX_JOB_FILE_BYTES:
        raise SpecError(f"job: the JSON manifest is larger than {MAX_JOB_FILE_BYTES} bytes")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SpecError(f"job: not valid JSON: {exc}") from None
    return parse_job(data)
