"""The embedded local backend: Azure ML played out on this machine, one handler per kind.

``backend`` is the Backend protocol: it hands each kind to its handler (``workspaces``,
``clusters``, ``environments``, ``models``, ``services``), which share one ``machines.LocalMachine``
(state folder, SQLite store from ``stores``, GPUs from ``gpus``, the supervisors it started).
Services are real scoring processes under one supervisor each (``supervising``, over ``processes``
and the state folder's ``layouts``), models live in a content-addressed registry (``registries``),
canaries follow a split file (``splitting``).
"""

from controller.backends.local.backend import LocalBackend
from controller.backends.local.supervising import FAILURE_LIMIT

__all__ = ["FAILURE_LIMIT", "LocalBackend"]
