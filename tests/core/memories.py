"""An in-memory backend for core tests: a real, dict-backed implementation of the Backend protocol.

It is a test double of a *dependency* (the backend), never of the planner or executor under test.
``failures`` lets a test script errors per resource: each write pops the next exception, if any.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from controller.backends.base import ApplyContext
from controller.structs.manifests import Kind
from controller.structs.plans import Change
from controller.structs.states import (
    ActualResource,
    ActualState,
    DesiredResource,
    ResourceId,
    ownership_tags,
)


class MemoryBackend:
    """Resources in a dict; every write call is counted in ``writes``."""

    name = "memory"

    def __init__(self, replace: dict[Kind, frozenset[str]] | None = None) -> None:
        self.resources: dict[ResourceId, ActualResource] = {}
        self.writes: list[tuple[str, str]] = []
        self.failures: dict[ResourceId, list[Exception]] = {}
        self.read_failures: list[Exception] = []
        self.replace = replace or {Kind.WEBSERVICE: frozenset({"cluster"})}
        self.closed = False
        self._lock = threading.Lock()

    def seed(self, resources: Iterable[ActualResource]) -> None:
        for r in resources:
            self.resources[r.id] = r

    def _maybe_fail(self, id: ResourceId) -> None:
        queue = self.failures.get(id)
        if queue:
            raise queue.pop(0)

    def read(self) -> ActualState:
        with self._lock:
            if self.read_failures:
                raise self.read_failures.pop(0)
            return ActualState(dict(self.resources))

    def _put(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        spec: dict[str, Any] = resource.manifest.spec.model_dump(mode="json")
        tags = ownership_tags(ctx.controller_name, ctx.source, ctx.revision, resource)
        with self._lock:
            self.resources[resource.id] = ActualResource(resource.id, spec, tags)

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        with self._lock:
            self.writes.append(("create", str(resource.id)))
        self._maybe_fail(resource.id)
        self._put(resource, ctx)

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> None:
        with self._lock:
            self.writes.append(("update", str(resource.id)))
        self._maybe_fail(resource.id)
        self._put(resource, ctx)

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        with self._lock:
            self.writes.append(("delete", str(id)))
        self._maybe_fail(id)
        with self._lock:
            self.resources.pop(id, None)

    def replace_fields(self, kind: Kind) -> frozenset[str]:
        return self.replace.get(kind, frozenset())

    def close(self) -> None:
        self.closed = True
