"""Held-out digits for the example model, transformed exactly as in manifests/models/train_digits.py."""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAINING_SCRIPT = os.path.join(REPO, "manifests", "models", "train_digits.py")
MODEL_DIR = os.path.join(REPO, "manifests", "models", "tf-dnn-mnist")
SOURCE_DIR = os.path.join(REPO, "manifests", "src")


def training_module() -> ModuleType:
    """The training script as a module (its transform and split are the single source of truth)."""
    spec = importlib.util.spec_from_file_location("train_digits", TRAINING_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def held_out() -> tuple[np.ndarray, np.ndarray]:
    """(rows, labels) of the held-out split: rows are (n, 784) float32 in [0, 1]."""
    _x_train, x_test, _y_train, y_test = training_module().load_split()
    return x_test, y_test
