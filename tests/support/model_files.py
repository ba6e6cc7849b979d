"""Numbered model files in a test's directory (the `files` fixture of tests/unit)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedkube.model import save_model


class ModelFiles:
    """``write(tensors)`` saves the next ``m0001.safetensors``, ... and returns its path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def write(self, tensors: Mapping[str, np.ndarray]) -> Path:
        self.n += 1
        path = self.root / f"m{self.n:04d}.safetensors"
        save_model(path, tensors)
        return path
