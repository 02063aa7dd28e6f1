"""Reporting: what ``amlops status``, the status page, ``/api/status`` and notifications say about
resources and reconciles, in one place so they say it in the same words.

A resource's *row* is plain JSON-ready data: its conditions (live ones from the backend, recorded
ones from the history database), the revisions applied and attempted, and for a service the URI,
replicas and model versions. Its *state word* (``Ready``, ``NotReady (reason)``, ``Stalled (reason)``,
``Unknown``), the out-of-sync marking after an invalid or held revision, and the one-line summary
of a reconcile's outcome (the same for a recorded one: history is core's, one database) are
computed here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from controller.backends.base import Backend
from controller.core.recording import HistoryEntry, Recorder, ResourceStatus, SourceStatus
from controller.core.rendering import plan_to_json
from controller.structs.errors import BackendError
from controller.structs.manifests import Kind
from controller.structs.results import ReconcileOutcome, ReconcileStatus
from controller.structs.states import ActualResource, ResourceId

# Outcomes after which what runs is not the latest revision: nothing of it was applied.
_NOT_APPLIED: Final = {"invalid": "ValidationFailed", "held": "PlanHeld"}


def state_word(conditions: Iterable[Mapping[str, Any]], recorded: Iterable[Mapping[str, Any]] = ()) -> str:
    """One word (and a reason) for a resource: ``Stalled (reason)``, ``Ready``, ``NotReady (reason)`` or ``Unknown``.

    ``conditions`` are the live (or merged) ones, ``recorded`` those of the history database; a
    permanent failure is recorded, not observed (the previous version may well be Ready meanwhile).
    """
    recorded = list(recorded)
    live = [c for c in conditions if c["type"] != "Synced"]  # Synced is shown on its own
    by_type = {c["type"]: c for c in live or recorded}
    by_type.setdefault("Stalled", next((c for c in recorded if c["type"] == "Stalled"), {}))
    if by_type.get("Stalled", {}).get("status"):
        return f"Stalled ({by_type['Stalled']['reason']})"
    ready = by_type.get("Ready")
    if ready is None:
        return "Unknown"
    return "Ready" if ready["status"] else f"NotReady ({ready['reason']})"


def mark_sync(entry: dict[str, Any], last: Mapping[str, Any]) -> None:
    """Say whether ``entry`` runs the latest revision (``inSync``); when the latest was invalid or held,
    add a false ``Synced`` condition (naming the resource's own errors, if any) and mark its status."""
    reason = _NOT_APPLIED.get(str(last.get("status")))
    entry["inSync"] = reason is None
    if reason is None:
        return
    own = [e for e in last.get("errors") or [] if f"{entry['kind']} {entry['name']}:" in str(e)]
    running = entry.get("lastAppliedRevision") or "an earlier revision"
    message = (f"revision {last.get('revision')} was not applied ({last.get('status')}); still running {running}"
               + (f": {own[0]}" if own else ""))
    entry["conditions"] = [*entry["conditions"], {"type": "Synced", "status": False, "reason": reason, "message": message}]
    entry["status"] = f"{entry['status']}, out of sync"


# --- amlops status ------------------------------------------------------------------------------


def status_row(resource: ActualResource, backend: Backend, controller_name: str,
               record: ResourceStatus | None) -> dict[str, Any]:
    """A resource as ``amlops status`` shows it: live conditions, recorded ones, revisions, service details."""
    row: dict[str, Any] = {
        "kind": resource.id.kind.value,
        "name": resource.id.name,
        "backend": backend.name,
        "managed": resource.owned_by(controller_name),
        "conditions": [c.to_json() for c in resource.conditions],
        "recordedConditions": record.to_json()["conditions"] if record else [],
        "lastAppliedRevision": record.last_applied_revision if record else resource.tags.get("amlops.dev/revision"),
        "lastAttemptedRevision": record.last_attempted_revision if record else None,
    }
    if resource.id.kind is Kind.WEBSERVICE:
        # The local backend counts replicas; Azure ML (SDK v1) reports a state and the desired count only.
        replicas = resource.details.get("replicas") or {}
        row["scoringUri"] = resource.details.get("scoringUri")
        row["replicas"] = {"ready": replicas.get("ready"), "desired": replicas.get("desired", resource.spec.get("replicas"))}
        row["modelVersions"] = list(resource.details.get("modelVersions") or resource.details.get("modelIds") or [])
        if "state" in resource.details:
            row["state"] = resource.details["state"]
        if isinstance(resource.details.get("traffic"), dict):  # Azure ML v2: the endpoint's deployments and shares
            row["traffic"] = dict(resource.details["traffic"])
        if resource.details.get("placement"):
            row["placement"] = resource.details["placement"]  # which replica runs on which GPU (local backend)
        if isinstance(resource.details.get("rollout"), dict):
            row["rollout"] = resource.details["rollout"]
    return row


@dataclass(frozen=True)
class StatusReport:
    """What ``amlops status`` prints: the source's revisions and a row per resource, plus read errors."""

    source: SourceStatus
    rows: list[dict[str, Any]]
    errors: list[str]


def status_report(backends: Iterable[Backend], recorder: Recorder, controller_name: str) -> StatusReport:
    """Rows from every backend in use (a resource two backends report shows once, from the first), each with
    its state word and out-of-sync marking, and the read errors (a backend that could not be read)."""
    recorded = recorder.resource_status()
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    seen: set[ResourceId] = set()
    for backend in backends:
        try:
            actual = backend.read()
        except BackendError as exc:
            errors.append(f"reading the {backend.name} backend failed: {exc}")
            continue
        for resource in actual:
            if resource.id not in seen:
                seen.add(resource.id)
                rows.append(status_row(resource, backend, controller_name, recorded.get(resource.id)))
    source = recorder.source_status()
    # The same out-of-sync marking as the status page: an invalid or held latest revision ran nowhere.
    last = {"status": source.last_status, "revision": source.last_attempted_revision, "errors": list(source.last_errors)}
    for row in rows:
        row["status"] = state_word(row["conditions"], row["recordedConditions"])
        mark_sync(row, last)
    return StatusReport(source, rows, errors)


# --- the status page and /api/status ------------------------------------------------------------


def resource_details(resource: ActualResource) -> dict[str, Any]:
    """The few live details worth showing per resource: endpoint, replicas, model versions."""
    details = resource.details
    shown: dict[str, Any] = {}
    if details.get("scoringUri"):
        shown["scoringUri"] = details["scoringUri"]
    replicas = details.get("replicas")
    if isinstance(replicas, dict) and "ready" in replicas:
        shown["replicas"] = f"{replicas.get('ready')}/{replicas.get('desired', '?')}"
    for key in ("modelVersions", "models", "version", "gpus", "placement"):
        if details.get(key):
            shown[key] = details[key]
    if isinstance(details.get("rollout"), dict):
        shown["rollout"] = details["rollout"]
    return shown


def published_resources(statuses: Mapping[ResourceId, ResourceStatus], observed: Mapping[ResourceId, ActualResource],
                        last: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-resource status for the page, the API and the gauges: the recorded conditions, overlaid with
    what the backend sees live (a dead replica, a missing GPU, a substitution); ``last`` is the last reconcile."""
    resources = []
    for status in sorted(statuses.values(), key=lambda s: (s.id.order(), s.id.name)):
        entry = status.to_json()
        recorded = list(entry["conditions"])
        live = observed.get(status.id)
        conflict = status.condition("Stalled")
        if conflict is not None and conflict.status and conflict.reason == "OwnershipConflict":
            live = None  # what runs is another source's: its health says nothing about this one's manifest
        if live is not None:
            merged = {c["type"]: c for c in entry["conditions"]}
            merged.update({c.type: c.to_json() for c in live.conditions})
            entry["conditions"] = list(merged.values())
            entry["details"] = resource_details(live)
        entry["status"] = state_word(entry["conditions"], recorded)
        mark_sync(entry, last)
        resources.append(entry)
    return resources


# --- reconcile outcomes -------------------------------------------------------------------------


def plan_counts(summary: Mapping[str, int]) -> str:
    """A plan's counts (its JSON ``summary``) as ``+add ~change -/+replace -destroy``."""
    return f"+{summary['add']} ~{summary['change']} -/+{summary['replace']} -{summary['destroy']}"


def _summary(errors: Sequence[str], held: str | None, counts: Mapping[str, int] | None) -> str:
    if errors:
        return errors[0] if len(errors) == 1 else f"{errors[0]} (+{len(errors) - 1} more)"
    if held:
        return f"held: {held}"
    if counts is not None and any(counts.values()):
        return plan_counts(counts)
    return "in sync"


def outcome_summary(outcome: ReconcileOutcome) -> str:
    """One line for a reconcile: its first error, why it was held, its counts of changes, or ``in sync``."""
    plan = outcome.plan
    return _summary(outcome.errors, plan.held if plan is not None else None,
                    plan_to_json(plan)["summary"] if plan is not None else None)


def history_rows(entries: Iterable[HistoryEntry]) -> list[dict[str, Any]]:
    """Recorded reconciles as the status page lists them, each with the same one-line summary as its outcome had."""
    return [{"id": e.id, "revision": e.revision, "status": e.status,
             "finishedAt": datetime.fromisoformat(e.finished).timestamp(),
             "summary": _summary(e.errors, (e.plan or {}).get("held"), (e.plan or {}).get("summary"))}
            for e in entries]


def change_entries(outcome: ReconcileOutcome) -> list[dict[str, Any]]:
    """Each effective change of a reconcile with what became of it (for the status page's last reconcile)."""
    results = {c.id: c for c in outcome.changes}
    entries = []
    for change in outcome.plan.effective if outcome.plan is not None else ():
        result = results.get(change.id)
        entries.append(
            {
                "id": str(change.id),
                "action": change.action.value,
                "symbol": change.action.symbol,
                "reason": change.reason,
                "file": change.manifest_file,
                "outcome": result.status.value
                if result
                else ("planned" if outcome.status is ReconcileStatus.DETECTED else "not applied"),
                "message": (result.error if result else None),
            }
        )
    return entries
