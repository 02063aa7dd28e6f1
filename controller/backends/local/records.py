"""What the local backend's record-only kinds share: a resource is a row of the store.

A workspace, a cluster, an environment and a model exist on this machine as their last-applied
spec plus what applying found out (a cluster's GPUs, an environment's interpreter, a model's
version); each kind's handler adds only that.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from controller.backends.base import ApplyContext
from controller.backends.local.machines import LocalMachine, Records
from controller.structs.logformats import event_logger
from controller.structs.manifests import Kind
from controller.structs.plans import Change
from controller.structs.states import ActualResource, Condition, ConditionType, DesiredResource, ResourceId

log = event_logger(__name__)


def recorded(kind: Kind, name: str, rec: dict[str, Any]) -> ActualResource:
    """A stored row as the backend reports it."""
    return ActualResource(ResourceId(kind, name), dict(rec["spec"]), dict(rec["tags"]),
                          tuple(Condition.from_json(c) for c in rec["conditions"]), dict(rec["details"]))


class RecordedKind:
    """A kind whose resources are rows: read lists them, create and update write one, delete forgets it."""

    kind: Kind
    replace_fields: frozenset[str] = frozenset()

    def __init__(self, machine: LocalMachine) -> None:
        self.machine = machine

    def read(self) -> Iterable[ActualResource]:
        """Every recorded resource of this kind."""
        return self.observe(self.machine.records())

    def observe(self, records: Records) -> list[ActualResource]:
        """This kind's resources in a snapshot of the store."""
        return [recorded(self.kind, name, rec) for name, rec in records.resources.get(self.kind, [])]

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Apply and record ``resource`` (idempotent: an existing record is brought to the spec)."""
        conditions, details = self.apply(resource, ctx)
        self.machine.record(resource, ctx, [Condition(ConditionType.READY, True, "Succeeded"), *conditions], details)
        log.info("resource.applied", kind=resource.manifest.kind, name=resource.manifest.name)

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> None:
        """The same as create: a record has no state beyond its spec."""
        self.create(resource, ctx)

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Forget the record; missing is fine."""
        self.machine.forget(id.kind, id.name)

    def apply(self, resource: DesiredResource, ctx: ApplyContext) -> tuple[list[Condition], dict[str, Any]]:
        """What applying ``resource`` found out: conditions besides Ready, and details."""
        return [], {}
