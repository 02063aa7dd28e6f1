"""The embedded local backend: Azure ML played out on this machine.

Services are real scoring processes under one supervisor each (``supervising``), state lives in
SQLite (``stores``), models in a content-addressed registry (``registries``), environments are
resolved to interpreters or cached venvs (``environments``) and GPUs are placed one per replica
(``gpus``). ``backend`` is the Backend protocol over all of them.
"""

from controller.backends.local.backend import LocalBackend
from controller.backends.local.supervising import FAILURE_LIMIT

__all__ = ["FAILURE_LIMIT", "LocalBackend"]
