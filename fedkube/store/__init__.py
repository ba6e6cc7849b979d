"""Object storage for model files: local directory (embedded) or S3 (minio SDK)."""

from fedkube.store.base import (
    ObjectStore,
    model_key,
    optimizer_key,
    partial_key,
    update_key,
)
from fedkube.store.factory import open_object_store

__all__ = [
    "ObjectStore",
    "model_key",
    "open_object_store",
    "optimizer_key",
    "partial_key",
    "update_key",
]
