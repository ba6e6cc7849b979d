"""fedkube: Kubernetes-native federated learning.

The public surface is re-exported here; everything else is private layers.
"""

from fedkube.errors import (
    AuthError,
    FedkubeError,
    ModelFileError,
    ObjectNotFound,
    SpecError,
    StateError,
    StoreError,
    TaskError,
    UpdateRejected,
)
from fedkube.model import from_torch, load_model, load_torch, save_model, save_torch, to_torch
from fedkube.spec import FederatedJob, load_job_file, parse_job
from fedkube.task import TaskContext, TrainResult, ValidationResult

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "FederatedJob",
    "FedkubeError",
    "ModelFileError",
    "ObjectNotFound",
    "SpecError",
    "StateError",
    "StoreError",
    "TaskContext",
    "TaskError",
    "TrainResult",
    "UpdateRejected",
    "ValidationResult",
    "__version__",
    "from_torch",
    "load_job_file",
    "load_model",
    "load_torch",
    "parse_job",
    "save_model",
    "save_torch",
    "to_torch",
]
