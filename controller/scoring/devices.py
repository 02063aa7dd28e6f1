"""Which device a replica's model runs on, as TensorFlow itself answers after ``init()``.

"Running on GPU" is observed, not assumed from ``CUDA_VISIBLE_DEVICES``: a CUDA library that
fails to load, a CPU-only TensorFlow wheel or a full device all leave TensorFlow on the CPU while
the replica was given a GPU. The answer, in order of how directly it speaks about the model:

* ``variables``: where the model's variables live (eager TensorFlow 2: a SavedModel the
  no-code scorer loaded, a Keras model an entry script built);
* ``probe``: where TensorFlow places a small op in this process (graph mode, as the
  walk-through's TF1 ``Session`` uses, whose variables carry no device until run: the
  session's ops follow the same placement);
* ``no-tensorflow``: the entry script did not import TensorFlow; nothing to say.

TensorFlow is never imported here: only a module the entry script already imported is asked.
"""

from __future__ import annotations

import gc
import re
import sys
from dataclasses import dataclass
from typing import Any

_SHORT = re.compile(r"device:([A-Za-z_]+:\d+)")
_MAX_VARIABLES = 64


@dataclass(frozen=True)
class DeviceReport:
    """The device a replica's model runs on (``GPU:0``, ``CPU:0``; ``none`` without TensorFlow)."""

    device: str
    source: str
    name: str = ""
    """TensorFlow's full device name, e.g. ``/job:localhost/replica:0/task:0/device:GPU:0``."""

    def to_status(self) -> dict[str, str]:
        """The fields the status file carries."""
        return {"device": self.device, "deviceSource": self.source, "deviceName": self.name}


def short_name(name: str) -> str:
    """``GPU:0`` from TensorFlow's ``/job:localhost/replica:0/task:0/device:GPU:0`` (upper-cased type)."""
    match = _SHORT.search(name)
    if match is None:
        return name or "unknown"
    kind, _, index = match.group(1).partition(":")
    return f"{kind.upper()}:{index}"


def observe_device() -> DeviceReport:
    """Ask the TensorFlow this process imported where the model runs (see the module docstring)."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return DeviceReport("none", "no-tensorflow")
    try:
        if tf.executing_eagerly():
            names = _variable_devices(tf)
            if names:
                # Several devices (a model split on purpose): report the accelerator if any holds a part.
                name = next((n for n in names if "GPU" in n.upper()), names[0])
                return DeviceReport(short_name(name), "variables", name)
            name = (tf.constant([1.0]) * 2.0).device
        else:
            name = _graph_probe(tf)
    except Exception as exc:  # a TF build that cannot answer must not fail readiness
        return DeviceReport("unknown", f"error: {type(exc).__name__}")
    return DeviceReport(short_name(name), "probe", name)


def _variable_devices(tf: Any) -> list[str]:
    variable = tf.Variable
    found: list[str] = []
    for obj in gc.get_objects():
        if isinstance(obj, variable):
            device = getattr(obj, "device", "")
            if device:
                found.append(str(device))
                if len(found) >= _MAX_VARIABLES:
                    break
    return found


def _graph_probe(tf: Any) -> str:
    """The device a multiply runs on in a fresh graph and session, read from the run's step stats."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, shape=(1,))
        y = x * 2.0
    metadata = v1.RunMetadata()
    with v1.Session(graph=graph) as session:
        session.run(y, feed_dict={x: [1.0]}, options=v1.RunOptions(trace_level=v1.RunOptions.FULL_TRACE),
                    run_metadata=metadata)
    placed = [d.device for d in metadata.step_stats.dev_stats
              if any(n.node_name == y.op.name for n in d.node_stats)]
    return placed[0] if placed else ""
