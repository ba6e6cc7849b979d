"""The `FederatedJob` spec: one manifest for `kubectl apply` and `fedkube run`.

Pure module: pydantic models, defaults and validation. No I/O except the small
`load_job_file` helper that reads YAML from a path.

Kubernetes conventions are kept: field names are camelCase in the manifest and
numbers that are not integers (learning rates, ratios) are strings, for example
``learningRate: "0.01"``. In Python they are floats with snake_case names.
"""

from __future__ import annotations

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
    ValidationError,
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


def _decimal(value: Any) -> Any:
    """Accept '0.01' (the manifest form) as well as 0.01; reject NaN and infinities."""
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
    max_bytes: int = Field(
        default=2 * 1024**3, gt=0, description="Largest accepted model or update file in bytes."
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
        default_factory=dict, description="Free-form train config, passed as FEDKUBE_CONFIG."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment for the train command."
    )


class SimulationSpec(_Model):
    """Clients that `fedkube run` starts on this machine (ignored by the operator)."""

    clients: int = Field(
        default=0, ge=0, le=10_000, description="Simulated clients `fedkube run` starts locally."
    )
    in_process: bool = Field(
        default=True,
        description="Use the in-process train/validate functions when both forms are given.",
    )


class ClientServiceSpec(_Model):
    """How clients outside the job reach the combiners (Kubernetes only)."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP",
        description="Type of the client Service: ClusterIP, NodePort or LoadBalancer.",
    )
    node_port: int | None = Field(
        default=None, ge=30000, le=32767, description="Fixed node port (NodePort, LoadBalancer)."
    )
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations of the client Service (e.g. for a cloud LB)."
    )


class ClientsSpec(_Model):
    """Client selection, quorum and deadlines of each round."""

    per_round: int = Field(default=2, ge=1, description="Clients selected per round (total).")
    min_updates: int = Field(
        default=1, ge=1, description="Quorum: updates needed for a round to succeed."
    )
    round_timeout_seconds: float = Field(
        default=300.0, gt=0, description="Deadline for train tasks of one round attempt."
    )
    wait_timeout_seconds: float = Field(
        default=120.0, gt=0, description="How long a round waits for enough connected clients."
    )
    heartbeat_seconds: float = Field(
        default=5.0, gt=0, description="Client heartbeat; combiners forget clients after 3 missed."
    )
    simulation: SimulationSpec = Field(default_factory=SimulationSpec)
    service: ClientServiceSpec = Field(default_factory=ClientServiceSpec)

    @model_validator(mode="after")
    def _quorum(self) -> ClientsSpec:
        if self.min_updates > self.per_round:
            raise _FieldError(
                "minUpdates",
                f"{self.min_updates} must be <= clients.perRound ({self.per_round})",
            )
        return self


class CombinersSpec(_Model):
    """The combiners: the servers clients connect to; each aggregates its clients' updates."""

    replicas: int = Field(default=1, ge=1, le=256, description="Number of combiners.")
    port: int = Field(default=7070, ge=1, le=65535, description="gRPC port of each combiner.")
    resources: dict[str, Any] = Field(
        default_factory=dict, description="Kubernetes ResourceRequirements of a combiner pod."
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


class ValidationSpec(_Model):
    """Validation of the global model by the clients."""

    enabled: bool = Field(default=True, description="Ask clients to validate the global model.")
    every: int = Field(default=1, ge=1, description="Validate the global model every N rounds.")
    per_round: int | None = Field(
        default=None, ge=1, description="Clients asked to validate (default: all connected)."
    )
    timeout_seconds: float = Field(
        default=120.0, gt=0, description="Deadline for validation tasks of one round."
    )
    min_reports: int = Field(
        default=1, ge=1, description="Validation reports needed to record the round's metrics."
    )


class RetrySpec(_Model):
    """Retries of a failed round."""

    max_attempts: int = Field(default=3, ge=1, le=100, description="Attempts per round.")
    backoff_seconds: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="Wait before the next attempt of a failed round, doubled after each "
        "failure (at most 60 s), so a short outage (storage restart) costs a retry, not the job.",
    )


class LocalStorageSpec(_Model):
    """Model files in a local directory."""

    path: str = Field(default="store", description="Directory, relative to the workdir.")


class S3StorageSpec(_Model):
    """Model files in an S3-compatible object store."""

    endpoint: str = Field(description="host:port of the S3 endpoint (the in-cluster address).")
    bucket: str = Field(description="Bucket of the model files.")
    region: str | None = Field(default=None, description="Region of the bucket.")
    secure: bool = Field(default=True, description="Use HTTPS.")
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

    rounds: int = Field(ge=1, le=100_000, description="Number of federated rounds.")
    suspend: bool = Field(default=False, description="Pause the round loop between rounds.")
    seed: int = Field(default=0, description="Seed for client selection.")
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
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    state_store: StateStoreSpec = Field(default_factory=StateStoreSpec)
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the job this long after it finished (Kubernetes)."
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

    def to_manifest(self) -> dict[str, Any]:
        """The manifest form (camelCase, decimals as strings, no unset status)."""
        return self.model_dump(mode="json", by_alias=True, exclude={"status"}, exclude_none=True)


# Fields holding a discriminated union: pydantic puts the tag into the location.
_TAGGED = {"aggregator", "serverOptimizer"}


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
        return FederatedJob.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {_loc(err)}: {msg}")
        raise SpecError(f"{source}: invalid FederatedJob:\n" + "\n".join(lines)) from None


def load_job_file(path: str | Path) -> FederatedJob:
    """Read and validate a FederatedJob YAML file (the first FederatedJob document)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError(f"{p}: cannot read job file: {exc.strerror}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise SpecError(f"{p}: not valid YAML: {exc}") from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if not jobs:
        raise SpecError(f"{p}: no document with kind: {KIND}")
    return parse_job(jobs[0], source=str(p))


def job_from_json(text: str) -> FederatedJob:
    import json

    return parse_job(json.loads(text))
