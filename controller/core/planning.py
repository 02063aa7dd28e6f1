"""Planning: diff desired state against actual state into a ``Plan``. Pure functions, no I/O.

Only what the manifest says is compared. A field the user left out is the backend's business
(Azure fills in defaults), so reporting it would be Argo CD's false *OutOfSync*. Values are
normalised before comparing (``2`` vs ``2.0``, base-image aliases, ``"model"`` vs
``{name: model}``), following Terraform's ``objchange`` habit of comparing meaning, not spelling.

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

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Final

from pydantic import BaseModel

from controller.core.connecting import declared_replace_fields
from controller.core.rendering import describe_rollout, describe_rollout_state
from controller.structs.manifests import (
    ALLOW_MASS_DELETE_ANNOTATION,
    KIND_ORDER,
    AnyManifest,
    Kind,
    WebserviceManifest,
    WorkspaceManifest,
    canonical_base_image,
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

_MISSING: Final = object()


def static_replace_fields(kind: Kind) -> frozenset[str]:
    """Replace-forcing fields of ``kind`` when no backend is at hand (``amlops plan --base/--head``):
    the union of what every backend's handler declares, asked of the declarations themselves."""
    return declared_replace_fields(kind)


# --- what the user set ------------------------------------------------------------------------


def user_set(value: Any) -> Any:
    """Plain data holding only what the user wrote: pydantic fields in ``model_fields_set``, recursively.

    Free-form mappings and lists the user wrote are kept whole (every key is the user's).
    """
    if isinstance(value, BaseModel):
        return {name: user_set(getattr(value, name)) for name in sorted(value.model_fields_set)}
    if isinstance(value, Mapping):
        return {str(k): user_set(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [user_set(v) for v in value]
    if hasattr(value, "value") and isinstance(getattr(value, "value", None), str):  # enums
        return value.value
    return value


def _field_default(model: type[BaseModel] | None, name: str) -> Any:
    if model is None or name not in model.model_fields:
        return _MISSING
    info = model.model_fields[name]
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    if info.is_required():
        return _MISSING
    return info.default


def _submodel(model: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    """The pydantic model a field holds, when it holds exactly one (``resources: Resources``)."""
    if model is None or name not in model.model_fields:
        return None
    annotation = model.model_fields[name].annotation
    candidates = getattr(annotation, "__args__", (annotation,))
    found = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return found[0] if len(found) == 1 else None


# --- normalising ------------------------------------------------------------------------------


def _normalise(path: tuple[str, ...], value: Any) -> Any:
    """One value in comparable form: numbers as floats, image aliases resolved, model refs as dicts."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if path and path[-1] == "baseImage" and isinstance(value, str):
        return canonical_base_image(value)
    if len(path) >= 1 and path[-1] == "models" and isinstance(value, list):
        return [_model_ref(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _normalise((*path, str(k)), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(path, v) for v in value]
    if isinstance(value, str):
        return value.strip()
    return value


def _model_ref(value: Any) -> Any:
    if isinstance(value, str):
        name, sep, version = value.partition(":")
        return {"name": name.strip(), "version": float(version)} if sep and version.isdigit() else {"name": name.strip()}
    if isinstance(value, Mapping):
        return {str(k): _normalise((str(k),), v) for k, v in value.items() if v is not None}
    return value


def _equal(path: tuple[str, ...], desired: Any, actual: Any) -> bool:
    if desired == actual:  # equal values normalise alike: most fields of a no-op plan stop here
        return True
    a, b = _normalise(path, desired), _normalise(path, actual)
    if path and path[-1] == "models" and isinstance(a, list) and isinstance(b, list):
        # A model the user did not pin matches whatever version the backend resolved.
        return len(a) == len(b) and all(
            isinstance(x, dict) and isinstance(y, dict) and all(y.get(k) == v for k, v in x.items())
            for x, y in zip(a, b, strict=True)
        )
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


# --- diffing ----------------------------------------------------------------------------------


def diff_spec(
    desired: BaseModel,
    actual: Mapping[str, Any],
    replace_fields: frozenset[str] = frozenset(),
) -> tuple[FieldDiff, ...]:
    """Field diffs between the fields the user set in ``desired`` and the backend's ``actual`` spec.

    Nested models are compared field by field (``spec.resources.cpu``); free-form mappings key by
    key; lists as a whole. A field missing from ``actual`` is a difference only when the user's
    value is not the default the backend would have applied.
    """
    diffs: list[FieldDiff] = []
    _diff_model(desired, actual, ("spec",), type(desired), replace_fields, diffs)
    return tuple(diffs)


def _forces(path: tuple[str, ...], replace_fields: frozenset[str]) -> bool:
    dotted = ".".join(path[1:])  # relative to spec
    return any(dotted == f or dotted.startswith(f + ".") or f == "spec." + dotted for f in replace_fields)


def _diff_model(
    desired: BaseModel,
    actual: Mapping[str, Any],
    path: tuple[str, ...],
    model: type[BaseModel] | None,
    replace_fields: frozenset[str],
    out: list[FieldDiff],
) -> None:
    for name in sorted(desired.model_fields_set):
        value = getattr(desired, name)
        here = (*path, name)
        observed = actual.get(name, _MISSING) if isinstance(actual, Mapping) else _MISSING
        if observed is _MISSING:
            default = _field_default(model, name)
            if default is not _MISSING and _equal(here, user_set(default), user_set(value)):
                continue
            out.append(FieldDiff(".".join(here), None, user_set(value), _forces(here, replace_fields)))
            continue
        if isinstance(value, BaseModel) and isinstance(observed, Mapping):
            _diff_model(value, observed, here, type(value), replace_fields, out)
            continue
        wanted = user_set(value)
        if _model_list(value) and _same_models(value, observed, here):
            continue  # a list of models (rollout steps) equal field by field, defaults included
        if isinstance(wanted, dict) and isinstance(observed, Mapping) and here[-1] != "models":
            _diff_mapping(wanted, observed, here, replace_fields, out)
            continue
        if not _equal(here, wanted, observed):
            out.append(FieldDiff(".".join(here), _plain(observed), wanted, _forces(here, replace_fields)))


def _model_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, BaseModel) for v in value)


def _same_models(desired: list[BaseModel], observed: Any, path: tuple[str, ...]) -> bool:
    """Whether an observed list matches a list of models, each key either set alike or left at its default."""
    if not isinstance(observed, list) or len(observed) != len(desired):
        return False
    for wanted, seen in zip(desired, observed, strict=True):
        if not isinstance(seen, Mapping):
            return False
        nested: list[FieldDiff] = []
        _diff_model(wanted, seen, path, type(wanted), frozenset(), nested)
        if nested:
            return False
        for key, value in seen.items():
            if key in wanted.model_fields_set:
                continue
            default = _field_default(type(wanted), str(key))
            if default is _MISSING or not _equal((*path, str(key)), user_set(default), value):
                return False
    return True


def _diff_mapping(
    wanted: Mapping[str, Any],
    observed: Mapping[str, Any],
    path: tuple[str, ...],
    replace_fields: frozenset[str],
    out: list[FieldDiff],
) -> None:
    for key in sorted(set(wanted) | {str(k) for k in observed}):
        here = (*path, key)
        a = wanted.get(key, _MISSING)
        b = observed.get(key, _MISSING)
        if a is _MISSING or b is _MISSING or not _equal(here, a, b):
            out.append(
                FieldDiff(
                    ".".join(here),
                    None if b is _MISSING else _plain(b),
                    None if a is _MISSING else a,
                    _forces(here, replace_fields),
                )
            )


def _plain(value: Any) -> Any:
    """JSON-friendly copy of an observed value (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))


# --- references -------------------------------------------------------------------------------


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


def _observed_references(resource: ActualResource) -> set[ResourceId]:
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
        ref = _model_ref(model)
        if isinstance(ref, dict) and isinstance(ref.get("name"), str):
            refs.add(ResourceId(Kind.MODEL, ref["name"]))
    return refs


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


def _sort_key(change: Change) -> tuple[int, int, str]:
    order = change.id.order()
    if change.action is Action.DELETE:
        return (0, len(KIND_ORDER) - order, change.id.name)
    if change.action is Action.NOOP:
        return (2, order, change.id.name)
    return (1, order, change.id.name)


def _with_dependencies(changes: list[Change], desired: DesiredState, actual: ActualState) -> list[Change]:
    """Fill ``depends_on``: creates wait for what they reference, deletes for what references them."""
    effective = {c.id: c for c in changes if c.action is not Action.NOOP}
    result: list[Change] = []
    for change in changes:
        deps: set[ResourceId] = set()
        if change.action is Action.DELETE:
            for other in effective.values():
                if other.action is Action.DELETE and other.id != change.id:
                    found = actual.resources.get(other.id)
                    if found is not None and change.id in _observed_references(found):
                        deps.add(other.id)
        elif change.action is not Action.NOOP:
            resource = desired.resources.get(change.id)
            if resource is not None:
                deps = {ref for ref in references(resource.manifest) if ref in effective and ref != change.id}
        ordered = tuple(sorted(deps, key=lambda r: (r.order(), r.name)))
        result.append(replace(change, depends_on=ordered))
    return result


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
    changes.sort(key=_sort_key)
    changes = _with_dependencies(changes, desired, actual)
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
    changes.sort(key=_sort_key)
    changes = _with_dependencies(changes, DesiredState(revision, "", {}), actual)
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
