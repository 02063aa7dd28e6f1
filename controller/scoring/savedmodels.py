"""The no-code scorer: serve the one TensorFlow SavedModel under the model dir without a score.py.

Request: ``{"data": [[...], ...]}`` (one row per example) or a bare list of rows.
Response: a JSON list with, for each row, the argmax class index when the model's output is
2-D with more than one column (a classifier's logits or probabilities, like the walk-through's
score.py), else the raw output row. The model must have a serving signature with exactly one
input tensor; with several outputs the first one in key order is used.

Speed: ``signatures["serving_default"]`` re-validates and re-structures arguments on every call.
The scorer instead calls the signature's underlying atomic function (the traced graph with its
captured variables) with one flat tensor, checked once at ``init()`` against the public signature;
if that private path is missing in some TensorFlow version, it falls back to the signature.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from controller.scoring.importing import EntryPoint
from controller.scoring.reporting import log_event


def find_saved_model(model_dir: str) -> str:
    """The folder of the single ``saved_model.pb`` under ``model_dir``."""
    found = sorted(
        root
        for root, _dirs, files in os.walk(model_dir)
        if "saved_model.pb" in files or "saved_model.pbtxt" in files
    )
    if len(found) != 1:
        raise FileNotFoundError(
            f"expected exactly one SavedModel (saved_model.pb) under {model_dir}, found {len(found)}"
        )
    return found[0]


def parse_rows(raw: str | bytes) -> np.ndarray:
    """Rows of a ``{"data": [...]}`` (or bare list) request body as a 2-D float32 array."""
    document = orjson.loads(raw)
    rows = document["data"] if isinstance(document, dict) else document
    array = np.asarray(rows, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    return array


def summarise(output: np.ndarray) -> list[Any]:
    """Argmax class indices for a classifier output, else the raw rows."""
    if output.ndim == 2 and output.shape[1] > 1:
        return output.argmax(axis=1).tolist()  # type: ignore[no-any-return]
    return output.tolist()  # type: ignore[no-any-return]


class SavedModelScorer:
    """Loads the SavedModel at ``init()`` and scores rows through its fastest callable."""

    def __init__(self, model_dir: str) -> None:
        self._model_dir = model_dir
        self._predict: Callable[[np.ndarray], np.ndarray] | None = None
        self._loaded: Any = None

    def init(self) -> None:
        """Find, load and warm up the model."""
        import tensorflow as tf

        path = find_saved_model(self._model_dir)
        self._loaded = tf.saved_model.load(path)
        signatures = self._loaded.signatures
        if not signatures:
            raise ValueError(f"SavedModel {path} has no serving signature")
        name = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
        signature = signatures[name]
        inputs = signature.structured_input_signature[1]
        if len(inputs) != 1 or signature.structured_input_signature[0]:
            raise ValueError(f"signature {name} of {path} must take exactly one tensor, takes {inputs}")
        (input_name, spec), = inputs.items()
        output_key = sorted(signature.structured_outputs)[0]

        def via_signature(rows: np.ndarray) -> np.ndarray:
            return signature(**{input_name: tf.constant(rows, dtype=spec.dtype)})[output_key].numpy()  # type: ignore[no-any-return]

        self._predict = via_signature
        fast = _atomic_call(signature, sorted(signature.structured_outputs).index(output_key), spec.dtype)
        width = spec.shape[-1] if spec.shape.rank and spec.shape[-1] is not None else 1
        probe = np.zeros((2, width), dtype=np.float32)
        expected = via_signature(probe)
        if fast is not None and _agrees(fast, probe, expected):
            self._predict = fast
        log_event("savedmodel_loaded", path=path, signature=name, input=input_name,
                  output=output_key, fast_path=self._predict is fast)

    def run(self, raw: str) -> list[Any]:
        """Score one request body."""
        assert self._predict is not None, "init() was not called"
        return summarise(self._predict(parse_rows(raw)))

    def run_batch(self, raws: list[str]) -> list[list[Any]]:
        """Score several request bodies with one model call."""
        assert self._predict is not None, "init() was not called"
        arrays = [parse_rows(raw) for raw in raws]
        output = self._predict(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
        results, start = [], 0
        for array in arrays:
            results.append(summarise(output[start : start + len(array)]))
            start += len(array)
        return results

    def entry_point(self) -> EntryPoint:
        """This scorer in the shape of a loaded entry script."""
        return EntryPoint(init=self.init, run=self.run, run_batch=self.run_batch, module=None)


def _agrees(predict: Callable[[np.ndarray], np.ndarray], probe: np.ndarray, expected: np.ndarray) -> bool:
    try:
        return bool(np.allclose(predict(probe), expected))
    except Exception:  # a private TF path that fails is simply not used
        return False


def _atomic_call(signature: Any, output_index: int, dtype: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """The signature's traced function called with flat tensors, or None if TF hides it."""
    import tensorflow as tf

    atomic = getattr(signature, "_inference_function", None)
    captured: Sequence[Any] = tuple(getattr(signature, "captured_inputs", ()))
    if atomic is None or not hasattr(atomic, "call_flat"):
        return None
    call_flat = atomic.call_flat
    constant = tf.constant

    def fast(rows: np.ndarray) -> np.ndarray:
        return call_flat(constant(rows, dtype=dtype), *captured)[output_index].numpy()  # type: ignore[no-any-return]

    return fast
