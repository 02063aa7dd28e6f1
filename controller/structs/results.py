"""Outcomes as frozen data: what applying one change did, and what one reconcile did.

The executor produces ``ChangeOutcome``s, the reconcile pipeline wraps them in a
``ReconcileOutcome``; the recorder stores both and the CLI renders them. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from controller.structs.plans import Action, Plan
from controller.structs.states import ActualState, Condition, ResourceId


class ChangeStatus(StrEnum):
    """How applying one change ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    # A rollout under way: neither done nor failed; the next pass carries it on.
    PROGRESSING = "progressing"


class ReconcileStatus(StrEnum):
    """How one reconcile ended, from the most to the least reassuring."""

    NO_CHANGES = "no-changes"
    APPLIED = "applied"
    PROGRESSING = "progressing"
    DETECTED = "detected"
    HELD = "held"
    # Nothing failed in this pass, but some resource of the revision is stalled (it failed before
    # on the same input and is not retried) or claimed by another source: the revision is not applied.
    DEGRADED = "degraded"
    INVALID = "invalid"
    FAILED = "failed"
    # Written before the first change is applied and replaced by the outcome; one still there
    # after the controller stops was interrupted (it is closed as failed by the next leader).
    APPLYING = "applying"


@dataclass(frozen=True)
class ChangeOutcome:
    """The result of applying one change.

    ``reason`` is machine-readable, Flux-style (``Unschedulable``, ``RetriesExhausted``,
    ``DependencyFailed``); ``error`` is the message a user reads.
    """

    id: ResourceId
    action: Action
    status: ChangeStatus
    attempts: int = 0
    duration_s: float = 0.0
    error: str | None = None
    reason: str | None = None
    # A rollout's progress: where it stands, when to look again, and each passed step's figures.
    message: str | None = None
    requeue_after: float | None = None
    rollout: tuple[dict[str, Any], ...] = ()
    # The change was a rollout that ended rolled back: the live version serves, the new one is gone.
    rolled_back: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain data for JSON output and the history database."""
        data: dict[str, Any] = {
            "kind": self.id.kind.value,
            "name": self.id.name,
            "action": self.action.value,
            "status": self.status.value,
            "attempts": self.attempts,
            "duration_s": round(self.duration_s, 3),
            "error": self.error,
            "reason": self.reason,
        }
        if self.message is not None:
            data["message"] = self.message
        if self.rollout:
            data["rollout"] = list(self.rollout)
        return data


class ExecutionPhase(StrEnum):
    """Moments the executor reports to a progress callback."""

    STARTED = "started"
    RETRYING = "retrying"
    PROGRESSING = "progressing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class ExecutionEvent:
    """One progress report: which change, what just happened, and on which attempt."""

    id: ResourceId
    action: Action
    phase: ExecutionPhase
    attempt: int = 0
    message: str = ""


@dataclass(frozen=True)
class ReconcileOutcome:
    """Everything one reconcile did: its plan, each change's outcome, errors and timings.

    ``errors`` are user-facing strings; validation errors keep their ``file:line`` prefix.
    ``durations`` holds seconds per pipeline phase (``load``, ``read``, ``plan``, ``apply``).
    ``digests`` holds the desired digest of each planned resource, so a permanent failure can be
    tied to the exact input that caused it (and not retried until that input changes).
    """

    revision: str
    status: ReconcileStatus
    started: datetime
    finished: datetime
    plan: Plan | None = None
    changes: tuple[ChangeOutcome, ...] = ()
    errors: tuple[str, ...] = ()
    durations: dict[str, float] = field(default_factory=dict)
    digests: dict[ResourceId, str] = field(default_factory=dict)
    # Actual state as this pass read it (before applying), for status pages that need no second read.
    actual: ActualState | None = None
    # Resources of this revision that did not converge without failing in this pass: stalled on an
    # input that failed before, refused, or claimed by another source. Each with the condition to record.
    blocked: Mapping[ResourceId, Condition] = field(default_factory=dict)
    # Set while a rollout is under way: the next pass is due this many seconds from now.
    requeue_after: float | None = None

    @property
    def ok(self) -> bool:
        """Whether the reconcile left actual state as Git says (or was told only to look)."""
        return self.status in (ReconcileStatus.APPLIED, ReconcileStatus.NO_CHANGES, ReconcileStatus.DETECTED)

    def failed_changes(self) -> tuple[ChangeOutcome, ...]:
        """Outcomes that did not succeed."""
        return tuple(c for c in self.changes if c.status is not ChangeStatus.SUCCEEDED)
