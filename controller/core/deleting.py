"""Deleting on request (``amlops delete``): one resource, or everything a folder of manifests declares.

Not a reconcile: nothing is desired any more, so nothing is created. The rules are pruning's:
workspaces are never deleted (they hold what other repos deploy), ``deletionPolicy: Retain`` keeps
a resource from a folder-wide delete (naming it, or ``include_retained``, deletes it), what this
controller did not create is left alone unless forced, and the deletes run in the planner's
dependency order (services before what they run on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller.backends.base import ApplyContext, Backend
from controller.core.connecting import BackendFor, targets_for
from controller.core.executing import ProgressCallback, execute
from controller.core.planning import plan_deletion
from controller.core.recording import Recorder
from controller.sources.loading import load_desired_state
from controller.sources.revisions import revision_of
from controller.structs.manifests import Kind
from controller.structs.plans import Plan
from controller.structs.results import ChangeOutcome, ChangeStatus
from controller.structs.states import ActualResource, ActualState, DesiredState, ResourceId


@dataclass(frozen=True)
class Deletion:
    """What a delete did: its plan (None when nothing was there to delete), whether it was confirmed, each outcome."""

    plan: Plan | None
    confirmed: bool = False
    outcomes: tuple[ChangeOutcome, ...] = ()

    @property
    def failed(self) -> tuple[ChangeOutcome, ...]:
        """The deletes that did not succeed."""
        return tuple(o for o in self.outcomes if o.status is not ChangeStatus.SUCCEEDED)


def delete(target: ResourceId | tuple[Path, str], backend_for: BackendFor, recorder: Recorder, *,
           controller_name: str, confirm: Callable[[Plan], bool], force: bool = False,
           include_retained: bool = False, progress: ProgressCallback | None = None,
           note: Callable[[str], None] = lambda _: None) -> Deletion:
    """Delete ``target``: one resource (on the local backend) or the resources of the manifests at ``(root, path)``.

    ``note`` hears what is kept and why (retained, not found, not ours) before ``confirm`` is shown
    the plan; nothing is deleted unless it returns True. Deleted resources leave the recorded status.
    Raises ``ValidationFailed`` for invalid manifests.
    """
    owners: dict[ResourceId, Backend]
    if isinstance(target, ResourceId):
        desired = DesiredState("delete", str(Path.cwd()), {})
        owners = {target: backend_for(None)}
    else:
        root, path = target
        desired = load_desired_state(root, path, revision=revision_of(root))
        owners = {rid: b for rid, b in targets_for(desired, backend_for).owner.items() if rid.kind is not Kind.WORKSPACE}
        for rid in sorted(owners, key=lambda r: (r.order(), r.name)):
            resource = desired.resources[rid]
            if getattr(resource.manifest.spec, "deletionPolicy", "Delete") == "Retain" and not include_retained:
                note(f"{rid}: kept (deletionPolicy: Retain; --include-retained deletes it too)")
                del owners[rid]
    the_plan, notes = plan_deletion(owners, _read(owners), controller_name=controller_name,
                                    revision=desired.revision, force=force)
    for line in notes:
        note(line)
    if not the_plan.changes:
        return Deletion(None)
    if not confirm(the_plan):
        return Deletion(the_plan)
    ctx = ApplyContext(controller_name, desired.revision, desired.root, desired)
    outcomes = execute(the_plan, desired, owners.__getitem__, ctx, progress=progress)
    for outcome in outcomes:
        if outcome.status is ChangeStatus.SUCCEEDED:
            recorder.forget(outcome.id)
    return Deletion(the_plan, True, tuple(outcomes))


def _read(owners: dict[ResourceId, Backend]) -> ActualState:
    """Each resource as its own backend reports it (every backend read once)."""
    seen: dict[int, ActualState] = {}
    found: dict[ResourceId, ActualResource] = {}
    for rid, backend in owners.items():
        if id(backend) not in seen:
            seen[id(backend)] = backend.read()
        resource = seen[id(backend)].resources.get(rid)
        if resource is not None:
            found[rid] = resource
    return ActualState(found)
