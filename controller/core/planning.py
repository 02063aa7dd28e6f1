"""Planning: desired state against actual state into a ``Plan``. Pure functions, no I/O.

Each resource gets one change (create, update, replace, no-op) with its reason; what no manifest
declares is pruned, retained or left alone; conflicts between sources and mass deletes are held.
How fields are compared lives in ``diffing``; the order of a plan and its dependencies in
``ordering``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from controller.core.connecting import declared_replace_fields
from controller.core.diffing import diff_spec, user_set
from controller.core.ordering import plan_order, references, with_dependencies
from controller.core.rendering import describe_rollout, describe_rollout_state
from controller.structs.manifests import (
    ALLOW_MASS_DELETE_ANNOTATION,
    AnyManifest,
    Kind,
    WebserviceManifest,
    WorkspaceManifest,
)
from controller.structs.migrations import carried_values
from controller.structs.plans import Action, Change, FieldDiff, Plan
from controller.structs.rollouts import ROLLOUT_DIGEST_PREFIX
from controller.structs.states import (
    MANAGED_BY_TAG,
    MANIFEST_PATH_TAG,
    ActualResource,
    ActualState,
    DesiredResource,
    DesiredState,
    ResourceId,
    ownership_tags,
    workspace_of,
)

ReplaceFields = Callable[[Kind], frozenset[str]]

# What a removed manifest's resource gets when its last-applied spec names no policy. Clusters
# are billed while they exist and are slow to recreate, so they stay unless told otherwise.
DEFAULT_DELETION_POLICY: Final[Mapping[Kind, str]] = {
    Kind.AKS_CLUSTER: "Retain",
    Kind.ENVIRONMENT: "Delete",
    Kind.MODEL: "Delete",
    Kind.WEBSERVICE: "Delete",
}


def static_replace_fields(kind: Kind) -> frozenset[str]:
    """Replace-forcing fields of ``kind`` when no backend is at hand (``amlops plan --base/--head``):
    the union of what every backend's handler declares, asked of the declarations themselves."""
    return declared_replace_fields(kind)


# --- reasons ----------------------------------------------------------------------------------


def _short(digest: str | None) -> str:
    if not digest:
        return "none"
    algo, _, hexa = digest.partition(":")
    return f"{algo}:{hexa[:12]}…" if hexa else digest[:12] + "…"


def _content_label(key: str) -> str:
    if key.startswith("model:"):
        return f"model {key.partition(':')[2]}"
    if key == "environment":
        return "environment"
    return f"spec.{key}"


def _content_reason(desired: DesiredResource, actual: ActualResource) -> str:
    """Why a resource whose fields all match still needs an update: which referenced content changed."""
    observed = actual.details.get("content_digests")
    if isinstance(observed, Mapping):
        changed = [
            f"content of {_content_label(key)} changed ({_short(observed.get(key))} → {_short(value)})"
            for key, value in sorted(desired.content_digests.items())
            if observed.get(key) != value
        ]
        if changed:
            return "; ".join(changed)
    if desired.content_digests:
        keys = ", ".join(_content_label(k) for k in sorted(desired.content_digests))
        return f"content changed (digest {_short(actual.digest)} → {_short(desired.digest)}; covers {keys})"
    return f"manifest changed (digest {_short(actual.digest)} → {_short(desired.digest)})"


def _drift_reason(diffs: tuple[FieldDiff, ...], actual: ActualResource) -> str:
    """Why a resource already at this digest differs: someone or something changed it outside Git."""
    for diff in diffs:
        if diff.path == "spec.replicas" and isinstance(diff.before, int | float) and isinstance(diff.after, int):
            return f"drift: {int(diff.before)} of {diff.after} replicas running"
    return "drift: " + ", ".join(d.path for d in diffs) + " changed outside Git"


def _replica_drift(manifest: AnyManifest, actual: ActualResource) -> tuple[FieldDiff, ...]:
    """Missing replicas of a service whose count the user left to autoscale: drift all the same."""
    if not isinstance(manifest, WebserviceManifest) or "replicas" in manifest.spec.model_fields_set:
        return ()
    observed = actual.spec.get("replicas")
    wanted = manifest.spec.min_replicas()
    if isinstance(observed, int) and not isinstance(observed, bool) and observed < wanted:
        return (FieldDiff("spec.replicas", observed, wanted),)
    return ()


# --- planning one resource --------------------------------------------------------------------


def plan_resource(
    desired: DesiredResource,
    actual: ActualResource | None,
    *,
    controller_name: str,
    replace_fields: frozenset[str],
    source: str = "",
) -> Change:
    """The change that brings ``actual`` (or nothing) to ``desired``."""
    manifest = desired.manifest
    if manifest.suspended:
        return Change(desired.id, Action.NOOP, reason="suspended", manifest_file=desired.origin.file)
    if actual is None:
        wanted = user_set(manifest.spec)
        created = tuple(FieldDiff(f"spec.{name}", None, value) for name, value in wanted.items())
        return Change(desired.id, Action.CREATE, created, reason="not found in actual state", manifest_file=desired.origin.file)
    owner = actual.tags.get(MANAGED_BY_TAG)
    if owner and owner != controller_name:
        # Another controller instance owns it; fighting over it would flap forever.
        return Change(desired.id, Action.NOOP, reason=f"managed by {owner!r}; left alone", manifest_file=desired.origin.file)
    if owner and source and actual.source and actual.source != source:
        # Another source's inventory holds it. The same content is simply shared; other content is
        # a conflict to report: taking it over would make the two sources undo each other forever.
        if actual.digest == desired.digest:
            return Change(desired.id, Action.NOOP, reason=f"shared: applied with the same content by {actual.source}",
                          manifest_file=desired.origin.file)
        return Change(desired.id, Action.NOOP, manifest_file=desired.origin.file,
                      reason=f"conflict: {desired.id} is applied by another source, {actual.source} (from "
                             f"{actual.tags.get(MANIFEST_PATH_TAG, '?')}), with other content; left as it is. Rename it "
                             "or remove it from one of the two sources")
    diffs = diff_spec(manifest.spec, actual.spec, replace_fields) + _replica_drift(manifest, actual)
    forced = [d for d in diffs if d.forces_replace]
    if forced:
        names = ", ".join(d.path for d in forced)
        # A replace deletes first: never for something amlops did not create, nor for what the
        # user asked to keep. The change is refused and shown, and a human decides.
        if not actual.owned_by(controller_name):
            return Change(desired.id, Action.NOOP, diffs, manifest_file=desired.origin.file,
                          reason=f"refused: {names} cannot change in place, and replacing would delete a resource "
                                 "amlops did not create; change it by hand or rename the manifest")
        if getattr(manifest.spec, "deletionPolicy", None) == "Retain":
            return Change(desired.id, Action.NOOP, diffs, manifest_file=desired.origin.file,
                          reason=f"refused: {names} cannot change in place, and deletionPolicy is Retain; set "
                                 "deletionPolicy: Delete to allow the replacement, or delete it with amlops delete")
        return Change(desired.id, Action.REPLACE, diffs, reason=f"{names} cannot change in place (forces replacement)",
                      manifest_file=desired.origin.file)
    if (actual.digest or "").startswith(ROLLOUT_DIGEST_PREFIX):
        rollout = actual.details.get("rollout") or {}
        return Change(desired.id, Action.UPDATE, diffs, manifest_file=desired.origin.file,
                      reason=f"rollout in progress: {describe_rollout_state(rollout)}")
    if diffs:
        if actual.digest == desired.digest:
            reason = _drift_reason(diffs, actual)
        else:
            reason = "manifest changed: " + ", ".join(d.path for d in diffs)
        return Change(desired.id, Action.UPDATE, diffs, reason=reason, manifest_file=desired.origin.file,
                      rollout=_rollout_of(manifest, diffs))
    if not actual.owned_by(controller_name):
        return Change(desired.id, Action.UPDATE, reason="adopt: exists but carries no ownership tags yet",
                      manifest_file=desired.origin.file)
    if source and not actual.source and desired.id.kind is not Kind.WORKSPACE:
        # Applied before sources were recorded: stamp it, so it is pruned when its manifest goes.
        # (A workspace is never created nor pruned by amlops: it needs no inventory entry.)
        return Change(desired.id, Action.UPDATE, reason=f"adopt: recorded without a source; now in the inventory of {source}",
                      manifest_file=desired.origin.file)
    if actual.digest != desired.digest:
        return Change(desired.id, Action.UPDATE, reason=_content_reason(desired, actual), manifest_file=desired.origin.file,
                      rollout=_rollout_of(manifest, ()))
    return Change(desired.id, Action.NOOP, manifest_file=desired.origin.file)


def effective_api(desired: DesiredState, resource: DesiredResource) -> str | None:
    """The Azure ML API generation a resource lives in (a Webservice's own ``api``, else its workspace's)."""
    manifest = resource.manifest
    if isinstance(manifest, WorkspaceManifest):
        return None
    workspace = workspace_of(desired, resource)
    if workspace is None or workspace.spec.backend != "azureml":
        return None
    own = manifest.spec.api if isinstance(manifest, WebserviceManifest) else None
    return own or workspace.spec.api


_V2_RECORD: Final = {Kind.AKS_CLUSTER: "KubernetesCompute attachment", Kind.ENVIRONMENT: "environment asset version",
                     Kind.MODEL: "model asset version"}


def plan_migration(desired: DesiredResource, actual: ActualResource, change: Change) -> Change:
    """A service found as a v1 web service whose manifest now says v2: shown as a migration, with every
    value the manifest carries where v2's default differs (v1's defaults are the manifest's)."""
    assert isinstance(desired.manifest, WebserviceManifest)
    carried = carried_values(desired.manifest.spec)
    diffs = [FieldDiff("spec.api", "v1", "v2")]
    diffs += [FieldDiff(f"v2.{c.v2_field}", f"{c.v2_default} (v2 default)", c.value) for c in carried]
    kept = ", ".join(f"{c.field}={c.value} (v2 default {c.v2_default})" for c in carried) or "none differ"
    keep = desired.manifest.metadata.annotations.get("amlops.dev/keep-v1", "").lower() == "true"
    reason = (f"migrate: v1 AKS web service → v2 online endpoint (create endpoint + deployment, wait Succeeded, "
              f"compare the sample request with v1, carry the keys, publish the new URI, then "
              f"{'keep the v1 service (amlops.dev/keep-v1)' if keep else 'delete the v1 service'}); "
              f"values carried over: {kept}")
    return Change(desired.id, Action.UPDATE, tuple(diffs), reason=reason, manifest_file=change.manifest_file)


# Fields a service changes in place, without a new version: no rollout for a change of only these.
_IN_PLACE_PREFIXES: Final = ("spec.replicas", "spec.autoscale", "spec.tags", "spec.description", "spec.rollout",
                             "spec.deletionPolicy")


def _rollout_of(manifest: AnyManifest, diffs: tuple[FieldDiff, ...]) -> str:
    """How the change reaches traffic, for a service whose strategy is not replica by replica."""
    if not isinstance(manifest, WebserviceManifest) or manifest.spec.rollout.strategy == "rolling":
        return ""
    if diffs and all(d.path.startswith(_IN_PLACE_PREFIXES) for d in diffs):
        return ""
    return describe_rollout(manifest.spec.rollout)


def plan_removal(actual: ActualResource, *, controller_name: str, source: str = "") -> Change | None:
    """What to do with a resource no manifest declares: prune it, retain it, or (not ours) nothing.

    Ours means in this source's inventory: created by this controller name *from this source*. What
    another source applied (or what was applied before sources were recorded) is never pruned.
    """
    if not actual.claimed_by(controller_name, source):
        return None  # never ours: never touched, never listed
    source = actual.tags.get(MANIFEST_PATH_TAG, "the repository")
    if actual.id.kind is Kind.WORKSPACE:
        return Change(actual.id, Action.NOOP, reason="retained (workspaces are never deleted)", manifest_file=source)
    policy = actual.spec.get("deletionPolicy") or DEFAULT_DELETION_POLICY.get(actual.id.kind, "Delete")
    if policy != "Delete":
        return Change(actual.id, Action.NOOP, reason=f"retained (deletionPolicy: {policy})", manifest_file=source)
    return Change(actual.id, Action.DELETE, reason=f"manifest removed from {source}", manifest_file=source)


# --- the whole plan ---------------------------------------------------------------------------


def _conflicting_dependencies(changes: list[Change], desired: DesiredState) -> list[Change]:
    """A change that needs a resource another source claims waits too: it would run on the other's content."""
    conflicts = {c.id for c in changes if c.action is Action.NOOP and c.reason.startswith("conflict")}
    if not conflicts:
        return changes
    result = []
    for change in changes:
        resource = desired.resources.get(change.id)
        if change.action is not Action.NOOP and change.action is not Action.DELETE and resource is not None:
            needed = [str(ref) for ref in references(resource.manifest) if ref in conflicts]
            if needed:
                change = Change(change.id, Action.NOOP, change.diffs, manifest_file=change.manifest_file,
                                reason=f"conflict: needs {', '.join(needed)}, which another source applied with other "
                                       "content; not applied until that conflict is resolved")
        result.append(change)
    return result


def _mass_delete_hold(changes: list[Change], desired: DesiredState, actual: ActualState, controller_name: str,
                      source: str = "") -> str | None:
    """Hold a plan that would delete more than half (or all) of what this controller owns.

    A bad merge or an emptied folder must not wipe production; a human confirms with
    ``--allow-mass-delete`` or the ``amlops.dev/allow-mass-delete: "true"`` annotation on any
    manifest that remains.
    """
    deletes = sum(1 for c in changes if c.action is Action.DELETE)
    if deletes == 0:
        return None
    owned = sum(1 for r in actual if r.claimed_by(controller_name, source) and r.id.kind is not Kind.WORKSPACE)
    if deletes < owned and deletes * 2 <= owned:
        return None
    if any(r.manifest.metadata.annotations.get(ALLOW_MASS_DELETE_ANNOTATION, "").lower() == "true" for r in desired):
        return None
    scope = "all" if deletes >= owned else "more than half"
    return (
        f"would delete {deletes} of {owned} resources managed by {controller_name} ({scope}); "
        f"rerun with --allow-mass-delete or annotate a manifest with {ALLOW_MASS_DELETE_ANNOTATION}: \"true\""
    )


def plan(
    desired: DesiredState,
    actual: ActualState,
    *,
    controller_name: str,
    replace_fields: ReplaceFields,
    base_revision: str | None = None,
    allow_mass_delete: bool = False,
    source: str = "",
) -> Plan:
    """The ordered changes that bring ``actual`` to ``desired`` (see the module docstring for the order).

    ``source`` names the source applying (``structs.states.source_id``): only its own inventory
    is pruned, and what another source applied with other content is a conflict, never taken over.
    """
    changes: list[Change] = []
    for resource in desired:
        found = actual.resources.get(resource.id)
        change = plan_resource(resource, found, controller_name=controller_name,
                               replace_fields=replace_fields(resource.id.kind), source=source)
        api = effective_api(desired, resource)
        if found is not None and found.details.get("api") == "v1" and not resource.manifest.suspended \
                and found.claimed_by(controller_name, source) and api == "v2":
            if resource.id.kind is Kind.WEBSERVICE:
                change = plan_migration(resource, found, change)
            else:
                # v2 keeps its own record of a cluster (a Kubernetes attachment) and of assets.
                created = tuple(FieldDiff(f"spec.{n}", None, v) for n, v in user_set(resource.manifest.spec).items())
                change = Change(resource.id, Action.CREATE, created, manifest_file=change.manifest_file,
                                reason=f"new in Azure ML v2 ({_V2_RECORD[resource.id.kind]}); the v1 record stays")
        changes.append(change)
    unmanaged = foreign = 0
    for existing in actual:
        if existing.id in desired.resources:
            continue
        removal = plan_removal(existing, controller_name=controller_name, source=source)
        if removal is not None:
            changes.append(removal)
        elif existing.owned_by(controller_name):
            foreign += 1
        else:
            unmanaged += 1
    changes = _conflicting_dependencies(changes, desired)
    changes.sort(key=plan_order)
    changes = with_dependencies(changes, desired, actual)
    warnings: list[str] = []
    if unmanaged:
        warnings.append(f"{unmanaged} resource(s) not declared in Git and not managed by {controller_name} are left alone")
    if foreign:
        warnings.append(f"{foreign} resource(s) managed by {controller_name} but applied by another source (or before "
                        "sources were recorded) are left alone: only what this source applied is pruned")
    held = None if allow_mass_delete else _mass_delete_hold(changes, desired, actual, controller_name, source)
    return Plan(desired.revision, tuple(changes), base_revision=base_revision, held=held, warnings=tuple(warnings))


def plan_deletion(ids: Iterable[ResourceId], actual: ActualState, *, controller_name: str, revision: str,
                  force: bool = False) -> tuple[Plan, tuple[str, ...]]:
    """Deleting ``ids`` on request (``amlops delete``), in the same order as pruning, and notes on what is left.

    As in pruning, what ``controller_name`` did not create is not its to delete (``force`` deletes
    it anyway); an id ``actual`` does not hold is noted as not found.
    """
    notes: list[str] = []
    changes: list[Change] = []
    for rid in sorted(ids, key=lambda r: (r.order(), r.name)):
        found = actual.resources.get(rid)
        if found is None:
            notes.append(f"{rid}: not found")
        elif not found.owned_by(controller_name) and not force:
            notes.append(f"{rid}: not created by controller {controller_name!r}; skipped (--force deletes it anyway)")
        else:
            changes.append(Change(rid, Action.DELETE, reason="amlops delete"))
    changes.sort(key=plan_order)
    changes = with_dependencies(changes, DesiredState(revision, "", {}), actual)
    return Plan(revision, tuple(changes)), tuple(notes)


def as_applied(desired: DesiredState, *, controller_name: str, source: str = "") -> ActualState:
    """The actual state a backend would report had ``desired`` been applied by ``controller_name`` from ``source``.

    Lets ``amlops plan --base --head`` show what merging would change without touching a backend.
    """
    resources: dict[ResourceId, ActualResource] = {}
    for resource in desired:
        spec = resource.manifest.spec.model_dump(mode="json")
        tags = ownership_tags(controller_name, source, desired.revision, resource)
        details: dict[str, Any] = {"content_digests": dict(resource.content_digests)}
        api = effective_api(desired, resource)
        if api is not None:
            details["api"] = api
        resources[resource.id] = ActualResource(resource.id, spec, tags, details=details)
    return ActualState(resources)
