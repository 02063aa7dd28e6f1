"""Dispatching the Backend protocol to per-kind handlers: every backend is one handler per kind
(the local backend's, and azureml's per API generation), as a Terraform provider has one
implementation per resource type."""

from __future__ import annotations

from collections.abc import Mapping

from controller.backends.base import ApplyContext, KindHandler
from controller.structs.logformats import event_logger
from controller.structs.manifests import KIND_ORDER, Kind
from controller.structs.plans import Change
from controller.structs.states import ActualResource, ActualState, DesiredResource, ResourceId

log = event_logger(__name__)


def replace_fields_of(handlers: Mapping[Kind, type[KindHandler]] | Mapping[Kind, KindHandler], kind: Kind) -> frozenset[str]:
    """What ``kind``'s handler declares cannot change in place (nothing for a kind without a handler)."""
    handler = handlers.get(kind)
    return handler.replace_fields if handler is not None else frozenset()


class HandlerBackend:
    """read / create / update / delete, each handed to the handler of the resource's kind."""

    name: str
    handlers: Mapping[Kind, KindHandler]

    def read(self) -> ActualState:
        """Each kind's handler lists its records: requests proportional to the number of kinds."""
        found: dict[ResourceId, ActualResource] = {}
        for kind in KIND_ORDER:
            handler = self.handlers.get(kind)
            if handler is None:
                continue
            for resource in handler.read():
                found.setdefault(resource.id, resource)
        return ActualState(found)

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> str | None:
        """Create ``resource`` through its kind's handler (its note for the history, if any)."""
        return self.handlers[resource.id.kind].create(resource, ctx)

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> str | None:
        """Update ``resource`` through its kind's handler (its note for the history, if any)."""
        return self.handlers[resource.id.kind].update(resource, change, ctx)

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Delete ``id`` through its kind's handler; already gone is fine."""
        self.handlers[id.kind].delete(id, ctx)
        log.info("resource.deleted", kind=id.kind.value, name=id.name)

    def replace_fields(self, kind: Kind) -> frozenset[str]:
        """What ``kind``'s handler declares cannot change in place."""
        return replace_fields_of(self.handlers, kind)
