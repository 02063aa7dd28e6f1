"""Request bodies built from scikit-learn's digits, transformed exactly as the example model was trained.

``/16``, nearest-neighbour upsample 8x8 -> 28x28 (pixel (r, c) takes (r*8//28, c*8//28)), flattened to
784 floats: see ``manifests/models/train_digits.py``.
"""

from __future__ import annotations

import json

import numpy as np

INDEX = np.arange(28) * 8 // 28


def rows(count: int) -> np.ndarray:
    """The first ``count`` digits (from the end of the set, i.e. not the first training images) as (count, 784) float32."""
    from sklearn.datasets import load_digits

    images = load_digits().images[-count:]
    scaled = images.astype(np.float32) / 16.0
    return np.ascontiguousarray(scaled[:, INDEX][:, :, INDEX].reshape(len(images), 784))


def body(count: int) -> bytes:
    """A ``{"data": [[784 floats], ...]}`` request body of ``count`` rows (the walk-through's format)."""
    values = [[round(float(v), 4) for v in row] for row in rows(count)]
    return json.dumps({"data": values}, separators=(",", ":")).encode()
