from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_TRAIN: _ClassVar[TaskKind]
    TASK_KIND_VALIDATE: _ClassVar[TaskKind]
    TASK_KIND_INIT: _ClassVar[TaskKind]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_TRAIN: TaskKind
TASK_KIND_VALIDATE: TaskKind
TASK_KIND_INIT: TaskKind

class Hello(_message.Message):
    __slots__ = ("client_id", "job", "labels", "client_index", "num_clients")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    job: str
    labels: _containers.ScalarMap[str, str]
    client_index: int
    num_clients: int
    def __init__(self, client_id: _Optional[str] = ..., job: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., client_index: _Optional[int] = ..., num_clients: _Optional[int] = ...) -> None: ...

class Transfer(_message.Message):
    __slots__ = ("url", "path")
    URL_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    url: str
    path: str
    def __init__(self, url: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "kind", "job", "round", "attempt", "model", "upload", "config_json", "deadline_unix_ms", "max_bytes")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    kind: TaskKind
    job: str
    round: int
    attempt: int
    model: Transfer
    upload: Transfer
    config_json: str
    deadline_unix_ms: int
    max_bytes: int
    def __init__(self, task_id: _Optional[str] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., job: _Optional[str] = ..., round: _Optional[int] = ..., attempt: _Optional[int] = ..., model: _Optional[_Union[Transfer, _Mapping]] = ..., upload: _Optional[_Union[Transfer, _Mapping]] = ..., config_json: _Optional[str] = ..., deadline_unix_ms: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class Update(_message.Message):
    __slots__ = ("task_id", "client_id", "job", "round", "attempt", "num_examples", "metrics", "digest", "size", "error")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    client_id: str
    job: str
    round: int
    attempt: int
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    digest: str
    size: int
    error: str
    def __init__(self, task_id: _Optional[str] = ..., client_id: _Optional[str] = ..., job: _Optional[str] = ..., round: _Optional[int] = ..., attempt: _Optional[int] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class Validation(_message.Message):
    __slots__ = ("task_id", "client_id", "job", "round", "num_examples", "metrics", "error", "attempt")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    client_id: str
    job: str
    round: int
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    error: str
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., client_id: _Optional[str] = ..., job: _Optional[str] = ..., round: _Optional[int] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., error: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("client_id", "job", "task_id")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    job: str
    task_id: str
    def __init__(self, client_id: _Optional[str] = ..., job: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("accepted", "reason", "message")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    message: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RoundPlan(_message.Message):
    __slots__ = ("job", "round", "attempt", "kind", "model_key", "quota", "deadline_unix_ms", "config_json", "seed", "max_bytes", "weight_cap")
    JOB_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_CAP_FIELD_NUMBER: _ClassVar[int]
    job: str
    round: int
    attempt: int
    kind: TaskKind
    model_key: str
    quota: int
    deadline_unix_ms: int
    config_json: str
    seed: int
    max_bytes: int
    weight_cap: float
    def __init__(self, job: _Optional[str] = ..., round: _Optional[int] = ..., attempt: _Optional[int] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., model_key: _Optional[str] = ..., quota: _Optional[int] = ..., deadline_unix_ms: _Optional[int] = ..., config_json: _Optional[str] = ..., seed: _Optional[int] = ..., max_bytes: _Optional[int] = ..., weight_cap: _Optional[float] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("selected", "received", "rejected", "failed")
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    selected: int
    received: int
    rejected: int
    failed: int
    def __init__(self, selected: _Optional[int] = ..., received: _Optional[int] = ..., rejected: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...

class Partial(_message.Message):
    __slots__ = ("key", "weight", "n_updates", "metrics", "participants", "selected", "rejected", "failed", "num_examples", "timings", "weight_capped", "claims", "digest")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class TimingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    N_UPDATES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_CAPPED_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    key: str
    weight: float
    n_updates: int
    metrics: _containers.ScalarMap[str, float]
    participants: _containers.RepeatedScalarFieldContainer[str]
    selected: int
    rejected: int
    failed: int
    num_examples: int
    timings: _containers.ScalarMap[str, float]
    weight_capped: int
    claims: _containers.RepeatedScalarFieldContainer[int]
    digest: str
    def __init__(self, key: _Optional[str] = ..., weight: _Optional[float] = ..., n_updates: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., participants: _Optional[_Iterable[str]] = ..., selected: _Optional[int] = ..., rejected: _Optional[int] = ..., failed: _Optional[int] = ..., num_examples: _Optional[int] = ..., timings: _Optional[_Mapping[str, float]] = ..., weight_capped: _Optional[int] = ..., claims: _Optional[_Iterable[int]] = ..., digest: _Optional[str] = ...) -> None: ...

class RoundEvent(_message.Message):
    __slots__ = ("progress", "partial")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    partial: Partial
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., partial: _Optional[_Union[Partial, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CombinerStatus(_message.Message):
    __slots__ = ("name", "job", "connected", "busy", "round", "attempt")
    NAME_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    name: str
    job: str
    connected: int
    busy: int
    round: int
    attempt: int
    def __init__(self, name: _Optional[str] = ..., job: _Optional[str] = ..., connected: _Optional[int] = ..., busy: _Optional[int] = ..., round: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...
