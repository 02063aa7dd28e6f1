"""Recording: every reconcile's outcome and each resource's status, in SQLite (WAL) in the state dir.

This is Flux's status subresource and history for a controller without Kubernetes: the runtime,
the CLI and a second controller process read and write the same file, so every call opens its
own short connection (WAL lets readers go on while one writer commits) and every write is one
``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from controller.core.rendering import plan_to_json
from controller.databases import Database
from controller.structs.manifests import Kind
from controller.structs.plans import Action, Plan
from controller.structs.results import ChangeStatus, ReconcileOutcome, ReconcileStatus
from controller.structs.states import Condition, ResourceId

HISTORY_FILE: Final = "history.sqlite"
HISTORY_KEPT: Final = 1000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS reconciles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    revision TEXT NOT NULL, status TEXT NOT NULL,
    started TEXT NOT NULL, finished TEXT NOT NULL,
    plan TEXT, changes TEXT NOT NULL, errors TEXT NOT NULL, durations TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reconciles_status ON reconciles (status, id);
CREATE TABLE IF NOT EXISTS resource_status (
    kind TEXT NOT NULL, name TEXT NOT NULL,
    conditions TEXT NOT NULL,
    last_applied_revision TEXT, last_attempted_revision TEXT,
    attempted_digest TEXT,
    updated TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);
"""

# A reconcile that left actual state as its revision says: its revision is a "good" one.
_GOOD: Final = (ReconcileStatus.APPLIED.value, ReconcileStatus.NO_CHANGES.value)
# Stalls the planner finds afresh every pass: they clear when the world changes, not only the input.
_REEVALUATED: Final = frozenset({"OwnershipConflict", "ReplaceRefused"})
# The reason of the conditions written before a change is applied (see ``Recorder.begin``).
APPLYING_REASON: Final = "Applying"
INTERRUPTED: Final = ("interrupted: the controller stopped while applying this revision; "
                      "the next pass applies again what it was changing and records the outcome")


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded reconcile."""

    id: int
    revision: str
    status: str
    started: str
    finished: str
    plan: dict[str, Any] | None
    changes: list[dict[str, Any]]
    errors: list[str]
    durations: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``amlops history --output json``."""
        return {
            "id": self.id,
            "revision": self.revision,
            "status": self.status,
            "started": self.started,
            "finished": self.finished,
            "plan": self.plan,
            "changes": self.changes,
            "errors": self.errors,
            "durations": self.durations,
        }


@dataclass(frozen=True)
class ResourceStatus:
    """Flux-style status of one resource: conditions and the revisions last applied and attempted."""

    id: ResourceId
    conditions: tuple[Condition, ...]
    last_applied_revision: str | None
    last_attempted_revision: str | None
    updated: str
    attempted_digest: str | None = None

    def stalled_on(self, digest: str) -> Condition | None:
        """The Stalled condition if applying this resource failed permanently on exactly ``digest``."""
        stalled = self.condition("Stalled")
        if stalled is None or not stalled.status or stalled.reason in _REEVALUATED:
            return None
        return stalled if self.attempted_digest == digest else None

    def interrupted_on(self, digest: str) -> bool:
        """Whether an apply of exactly ``digest`` began and never recorded its outcome (the controller stopped)."""
        progressing = self.condition("Progressing")
        return (progressing is not None and progressing.reason == APPLYING_REASON
                and self.attempted_digest == digest)

    def condition(self, type_: str) -> Condition | None:
        """The condition of ``type_``, if recorded."""
        return next((c for c in self.conditions if c.type == type_), None)

    def to_json(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return {
            "kind": self.id.kind.value,
            "name": self.id.name,
            "conditions": [c.to_json() for c in self.conditions],
            "lastAppliedRevision": self.last_applied_revision,
            "lastAttemptedRevision": self.last_attempted_revision,
            "updated": self.updated,
        }


@dataclass(frozen=True)
class SourceStatus:
    """Status of the whole source (the repo path the controller follows)."""

    last_applied_revision: str | None
    last_attempted_revision: str | None
    last_status: str | None
    last_errors: tuple[str, ...]


def _conditions_from(data: str) -> tuple[Condition, ...]:
    return tuple(Condition.from_json(d) for d in json.loads(data))


def _history_plan(plan: Plan) -> dict[str, Any]:
    """The plan as history keeps it: every change that did something, and how many did not."""
    data = plan_to_json(plan, no_ops=False)
    data["unchanged"] = len(plan.changes) - len(data["changes"])
    return data


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Recorder:
    """Reconcile history and per-resource status, in ``<state_dir>/history.sqlite``."""

    def __init__(self, state_dir: str | Path, filename: str = HISTORY_FILE, keep: int = HISTORY_KEPT) -> None:
        self.path = Path(state_dir) / filename
        self.keep = keep
        self._db = Database(self.path, _SCHEMA)
        self._connect = self._db.connect
        self._transaction = self._db.transaction
        # The history text of the last plan recorded: an idle controller reuses one plan object
        # (PlanMemo) pass after pass, and serialising thousands of changes each time was most of
        # an idle pass's CPU.
        self._last_plan: tuple[Plan, str] | None = None
        # The ``applying`` row ``begin`` wrote for the pass in flight: (history id, revision).
        self._open: tuple[int, str] | None = None

    # --- writing ------------------------------------------------------------------------------

    def begin(self, revision: str, started: datetime, plan: Plan, digests: Mapping[ResourceId, str]) -> int:
        """Write down an apply before it starts, so a controller killed in the middle leaves a trace.

        The history gets an ``applying`` row (``record`` replaces it with the outcome) and every
        resource about to be created, updated or replaced a ``Progressing/Applying`` condition with
        the digest being applied. A later pass that finds such a condition on a digest that is
        already in place knows the apply was interrupted and applies it again to learn its outcome.
        """
        now = _now()
        with self._transaction() as conn:
            self._close_interrupted(conn)
            last = conn.execute("SELECT id, status, revision FROM reconciles ORDER BY id DESC LIMIT 1").fetchone()
            reopened = (last is not None and last[1] == ReconcileStatus.PROGRESSING.value and last[2] == revision)
            if reopened:
                # A rollout is one entry per revision while it runs (a pass each half second would
                # otherwise push the whole history out): each pass reopens it and ``record`` updates it.
                conn.execute("UPDATE reconciles SET status = ?, plan = ? WHERE id = ?",
                             (ReconcileStatus.APPLYING.value, self._plan_text(plan), last[0]))
                row_id = int(last[0])
            else:
                cursor = conn.execute(
                    "INSERT INTO reconciles (revision, status, started, finished, plan, changes, errors, durations)"
                    " VALUES (?, ?, ?, ?, ?, '[]', '[]', '{}')",
                    (revision, ReconcileStatus.APPLYING.value, started.isoformat(timespec="milliseconds"), now,
                     self._plan_text(plan)),
                )
                row_id = int(cursor.lastrowid or 0)
            message = f"applying revision {revision}"
            conditions = json.dumps([Condition("Ready", False, APPLYING_REASON, message).to_json(),
                                     Condition("Progressing", True, APPLYING_REASON, message).to_json()])
            for change in plan.effective:
                if change.action is Action.DELETE:
                    continue  # a delete cut short is planned again: the resource is still there
                conn.execute(
                    "INSERT INTO resource_status (kind, name, conditions, last_applied_revision, last_attempted_revision,"
                    " attempted_digest, updated) VALUES (?, ?, ?, NULL, ?, ?, ?) ON CONFLICT (kind, name) DO UPDATE SET"
                    " conditions = excluded.conditions, last_attempted_revision = excluded.last_attempted_revision,"
                    " attempted_digest = excluded.attempted_digest, updated = excluded.updated",
                    (change.id.kind.value, change.id.name, conditions, revision, digests.get(change.id), now),
                )
        self._open = (row_id, revision)
        return row_id

    def close_interrupted(self) -> int:
        """Mark every ``applying`` row as failed (interrupted); the number closed.

        Only the leader lock's holder writes history, so when it calls this no pass is in flight.
        """
        with self._transaction() as conn:
            return self._close_interrupted(conn)

    def _close_interrupted(self, conn: sqlite3.Connection) -> int:
        cursor = conn.execute(
            "UPDATE reconciles SET status = ?, errors = ?, finished = ? WHERE status = ?",
            (ReconcileStatus.FAILED.value, json.dumps([INTERRUPTED]), _now(), ReconcileStatus.APPLYING.value),
        )
        return cursor.rowcount

    def record(self, outcome: ReconcileOutcome) -> int:
        """Store one reconcile and fold its change outcomes into resource status; return its history id."""
        values = (
            outcome.revision,
            outcome.status.value,
            outcome.started.isoformat(timespec="milliseconds"),
            outcome.finished.isoformat(timespec="milliseconds"),
            self._plan_text(outcome.plan),
            json.dumps([c.to_json() for c in outcome.changes]),
            json.dumps(list(outcome.errors)),
            json.dumps({k: round(v, 4) for k, v in outcome.durations.items()}),
        )
        opened, self._open = self._open, None
        with self._transaction() as conn:
            updated = 0
            if opened is not None and opened[1] == outcome.revision:
                updated = conn.execute(
                    "UPDATE reconciles SET revision = ?, status = ?, started = ?, finished = ?, plan = ?, changes = ?,"
                    " errors = ?, durations = ? WHERE id = ? AND status = ?",
                    (*values, opened[0], ReconcileStatus.APPLYING.value),
                ).rowcount
            if updated:
                row_id = opened[0] if opened is not None else 0
            else:
                cursor = conn.execute(
                    "INSERT INTO reconciles (revision, status, started, finished, plan, changes, errors, durations)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    values,
                )
                row_id = int(cursor.lastrowid or 0)
            self._fold_status(conn, outcome)
            # A pass a minute for a year would be half a million plans: keep the recent ones.
            conn.execute("DELETE FROM reconciles WHERE id <= ?", (row_id - self.keep,))
            return row_id

    def _plan_text(self, plan: Plan | None) -> str | None:
        if plan is None:
            return None
        last = self._last_plan
        if last is not None and last[0] is plan:
            return last[1]
        text = json.dumps(_history_plan(plan), default=str)
        self._last_plan = (plan, text)
        return text

    def _fold_status(self, conn: sqlite3.Connection, outcome: ReconcileOutcome) -> None:
        """Per-resource conditions: only a reconcile that applied (or tried to) says anything new."""
        if outcome.plan is None or outcome.status not in (ReconcileStatus.APPLIED, ReconcileStatus.NO_CHANGES,
                                                          ReconcileStatus.DEGRADED, ReconcileStatus.FAILED,
                                                          ReconcileStatus.PROGRESSING):
            return
        now = _now()
        revision = outcome.revision
        results = {c.id: c for c in outcome.changes}
        # One read of every row, and writes only for rows that change: an idle controller's
        # no-op pass over thousands of resources then writes nothing here.
        existing = {
            (kind, name): (conditions, applied, attempted, digest)
            for kind, name, conditions, applied, attempted, digest in conn.execute(
                "SELECT kind, name, conditions, last_applied_revision, last_attempted_revision, attempted_digest"
                " FROM resource_status")
        }
        for change in outcome.plan.changes:
            result = results.get(change.id)
            key = (change.id.kind.value, change.id.name)
            if change.action is Action.DELETE and result is not None and result.status is ChangeStatus.SUCCEEDED:
                conn.execute("DELETE FROM resource_status WHERE kind = ? AND name = ?", key)
                continue
            previous = existing.get(key)
            last_applied = previous[1] if previous else None
            conditions: tuple[Condition, ...]
            blocked = outcome.blocked.get(change.id)
            if blocked is not None:
                if previous is not None and previous[3] == outcome.digests.get(change.id) and any(
                        c.type == blocked.type and c.status and c.reason == blocked.reason
                        for c in _conditions_from(previous[0])):
                    continue  # still blocked the same way on the same input: keep the recorded failure as it is
                conditions = (Condition("Ready", False, blocked.reason, blocked.message), blocked)
            elif change.action is Action.NOOP:
                if change.reason == "suspended":
                    conditions = (Condition("Ready", False, "Suspended", "reconciliation suspended by annotation"),)
                elif change.reason.startswith("retained"):
                    conditions = (Condition("Ready", True, "Retained", change.reason),)
                else:
                    conditions = (Condition("Ready", True, "ReconciliationSucceeded", f"at revision {revision}"),)
                    last_applied = revision
            elif result is None:
                continue
            elif result.status is ChangeStatus.SUCCEEDED:
                conditions = (Condition("Ready", True, "ReconciliationSucceeded", f"{change.action.value} at revision {revision}"),)
                last_applied = revision
            elif result.status is ChangeStatus.PROGRESSING:
                conditions = (
                    Condition("Ready", False, "RolloutInProgress", result.message or ""),
                    Condition("Progressing", True, "RolloutInProgress", result.message or ""),
                )
            elif result.status is ChangeStatus.SKIPPED:
                conditions = (
                    Condition("Ready", False, result.reason or "DependencyFailed", result.error or ""),
                    Condition("Progressing", True, "DependencyNotReady", result.error or ""),
                )
            elif result.reason == "RetriesExhausted":
                # Transient: the next reconcile tries again, so this is progress, not a stall.
                conditions = (
                    Condition("Ready", False, "RetriesExhausted", result.error or ""),
                    Condition("Progressing", True, "RetriesExhausted", result.error or ""),
                )
            else:
                conditions = (
                    Condition("Ready", False, result.reason or "Failed", result.error or ""),
                    Condition("Stalled", True, result.reason or "Failed", result.error or ""),
                )
            row = (json.dumps([c.to_json() for c in conditions]), last_applied, revision,
                   outcome.digests.get(change.id))
            if previous == row:
                continue
            conn.execute(
                "INSERT INTO resource_status (kind, name, conditions, last_applied_revision, last_attempted_revision,"
                " attempted_digest, updated) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, name) DO UPDATE SET"
                " conditions = excluded.conditions, last_applied_revision = excluded.last_applied_revision,"
                " last_attempted_revision = excluded.last_attempted_revision,"
                " attempted_digest = excluded.attempted_digest, updated = excluded.updated",
                (*key, *row, now),
            )

    def forget(self, id: ResourceId) -> None:
        """Drop the status of a resource deleted outside a reconcile (``amlops delete``)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM resource_status WHERE kind = ? AND name = ?", (id.kind.value, id.name))

    # --- reading ------------------------------------------------------------------------------

    def history(self, limit: int = 20) -> list[HistoryEntry]:
        """The latest ``limit`` reconciles, newest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, revision, status, started, finished, plan, changes, errors, durations"
                " FROM reconciles ORDER BY id DESC LIMIT ?",
                (max(0, limit),),
            ).fetchall()
        return [
            HistoryEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else None,
                         json.loads(r[6]), json.loads(r[7]), json.loads(r[8]))
            for r in rows
        ]

    def last_good_revision(self) -> str | None:
        """The revision of the newest reconcile that applied cleanly (or found nothing to do)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT revision FROM reconciles WHERE status IN (?, ?) ORDER BY id DESC LIMIT 1", _GOOD
            ).fetchone()
        return str(row[0]) if row else None

    def source_status(self) -> SourceStatus:
        """``lastAppliedRevision`` / ``lastAttemptedRevision`` of the source, and the last errors."""
        with self._connect() as conn:
            row = conn.execute("SELECT revision, status, errors FROM reconciles ORDER BY id DESC LIMIT 1").fetchone()
        good = self.last_good_revision()
        if row is None:
            return SourceStatus(good, None, None, ())
        return SourceStatus(good, str(row[0]), str(row[1]), tuple(json.loads(row[2])))

    def resource_status(self) -> dict[ResourceId, ResourceStatus]:
        """Recorded status of every resource, keyed by id."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT kind, name, conditions, last_applied_revision, last_attempted_revision, updated, attempted_digest"
                " FROM resource_status"
            ).fetchall()
        result: dict[ResourceId, ResourceStatus] = {}
        for kind, name, conditions, applied, attempted, updated, digest in rows:
            try:
                rid = ResourceId(Kind(kind), name)
            except ValueError:
                continue
            result[rid] = ResourceStatus(rid, _conditions_from(conditions), applied, attempted, updated, digest)
        return result

