"""Ordering: what references what, the global order of a plan, and each change's ``depends_on``.

Global order of a plan (and of applying it):

1. deletes, in reverse dependency order (webservices → models → environments → clusters), so
   services stop before what they run on goes, and GPUs are freed before new services ask for
   them;
2. creates, updates and replaces, in dependency order (workspace → cluster → environment →
   model → webservice);
3. no-ops last (they are shown for their reasons: suspended, retained).

Within one kind, changes are ordered by name so plans are stable.
"""

from __future__ import annotations

from dataclasses import replace

from controller.core.diffing import model_ref
from controller.structs.manifests import KIND_ORDER, AnyManifest, Kind, WebserviceManifest
from controller.structs.plans import Action, Change
from controller.structs.states import ActualResource, ActualState, DesiredState, ResourceId

# --- what references what ---------------------------------------------------------------------


def references(manifest: AnyManifest) -> tuple[ResourceId, ...]:
    """Resources ``manifest`` needs before it can be created: its workspace, cluster, environment, models."""
    refs: list[ResourceId] = []
    workspace = getattr(manifest.spec, "workspace", None)
    if workspace:
        refs.append(ResourceId(Kind.WORKSPACE, workspace))
    if isinstance(manifest, WebserviceManifest):
        refs.append(ResourceId(Kind.AKS_CLUSTER, manifest.spec.cluster))
        if manifest.spec.environment:
            refs.append(ResourceId(Kind.ENVIRONMENT, manifest.spec.environment))
        refs.extend(ResourceId(Kind.MODEL, m.name) for m in manifest.spec.models)
    return tuple(refs)


def observed_references(resource: ActualResource) -> set[ResourceId]:
    """What an existing resource uses, from its last-applied spec (for ordering deletes)."""
    spec = resource.spec
    refs: set[ResourceId] = set()
    if isinstance(spec.get("workspace"), str):
        refs.add(ResourceId(Kind.WORKSPACE, spec["workspace"]))
    if isinstance(spec.get("cluster"), str):
        refs.add(ResourceId(Kind.AKS_CLUSTER, spec["cluster"]))
    if isinstance(spec.get("environment"), str):
        refs.add(ResourceId(Kind.ENVIRONMENT, spec["environment"]))
    for model in spec.get("models") or ():
        ref = model_ref(model)
        if isinstance(ref, dict) and isinstance(ref.get("name"), str):
            refs.add(ResourceId(Kind.MODEL, ref["name"]))
    return refs


def plan_order(change: Change) -> tuple[int, int, str]:
    """Sort key of a change in a plan: deletes (reverse dependency order), then the rest, then no-ops."""
    order = change.id.order()
    if change.action is Action.DELETE:
        return (0, len(KIND_ORDER) - order, change.id.name)
    if change.action is Action.NOOP:
        return (2, order, change.id.name)
    return (1, order, change.id.name)


def with_dependencies(changes: list[Change], desired: DesiredState, actual: ActualState) -> list[Change]:
    """Fill ``depends_on``: creates wait for what they reference, deletes for what references them."""
    effective = {c.id: c for c in changes if c.action is not Action.NOOP}
    result: list[Change] = []
    for change in changes:
        deps: set[ResourceId] = set()
        if change.action is Action.DELETE:
            for other in effective.values():
                if other.action is Action.DELETE and other.id != change.id:
                    found = actual.resources.get(other.id)
                    if found is not None and change.id in observed_references(found):
                        deps.add(other.id)
        elif change.action is not Action.NOOP:
            resource = desired.resources.get(change.id)
            if resource is not None:
                deps = {ref for ref in references(resource.manifest) if ref in effective and ref != change.id}
        ordered = tuple(sorted(deps, key=lambda r: (r.order(), r.name)))
        result.append(replace(change, depends_on=ordered))
    return result
