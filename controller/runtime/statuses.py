"""The controller's status, shared between the loop (writer) and the HTTP threads (readers).

Fields follow Flux's: ``lastAttemptedRevision``, ``lastAppliedRevision``, the last reconcile's
outcome with its errors (file:line), and per-resource conditions.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from typing import Any


class StatusBoard:
    """A lock-guarded JSON-ready document; the loop updates it, readers get deep copies."""

    def __init__(self, controller_name: str, source: dict[str, Any], detect_only: bool) -> None:
        self._lock = threading.Lock()
        self._doc: dict[str, Any] = {
            "controller": controller_name,
            "pid": os.getpid(),
            "role": "starting",
            "detectOnly": detect_only,
            "startedAt": time.time(),
            "source": {**source, "reachable": None, "lastFetchError": None, "lastFetchedRevision": None},
            "lastAttemptedRevision": None,
            "lastAppliedRevision": None,
            "lastReconcile": None,
            "reconciles": 0,
            "nextReconcileAt": None,
            "resources": [],
            "history": [],
        }

    def snapshot(self) -> dict[str, Any]:
        """A copy of the whole document."""
        with self._lock:
            return copy.deepcopy(self._doc)

    def update(self, **fields: Any) -> None:
        """Set top-level fields."""
        with self._lock:
            self._doc.update(fields)

    def update_source(self, **fields: Any) -> None:
        """Set fields of the ``source`` section."""
        with self._lock:
            self._doc["source"].update(fields)

    def get(self, key: str) -> Any:
        """One top-level field (a copy)."""
        with self._lock:
            return copy.deepcopy(self._doc.get(key))

    def readiness(self) -> tuple[bool, str]:
        """Ready once this process leads, has attempted a reconcile, the source answered last time, and
        the last pass did not leave the revision degraded (stalled or conflicting resources)."""
        with self._lock:
            role = self._doc["role"]
            if role != "leader":
                return False, role
            if self._doc["lastReconcile"] is None:
                return False, "first reconcile not attempted yet"
            if (self._doc.get("stateDir") or {}).get("error"):
                return False, str(self._doc["stateDir"]["error"])
            if self._doc["source"]["reachable"] is False:
                return False, "source unreachable: " + str(self._doc["source"]["lastFetchError"])
            last = self._doc["lastReconcile"]
            if last.get("status") == "degraded":
                # Resources stalled on this revision (or claimed by another source): it is not applied.
                errors = last.get("errors") or []
                return False, "degraded: " + (str(errors[0]) if errors else "revision not applied")
            return True, "ready"
