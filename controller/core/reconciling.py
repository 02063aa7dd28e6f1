"""Reconciling: one pass of the Flux-style pipeline from a folder of manifests to actual state.

load + validate → read actual → plan → (detect only? stop) → (held? stop) → apply (prune is part
of the plan) → record. Waiting for health is the backend's job: its create and update return when
the resource is ready. The pass is level-triggered and idempotent: it trusts only the state it
reads, so running it twice in a row writes nothing the second time.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from controller.backends.base import ApplyContext, Backend, ProgressFn, no_progress
from controller.core.connecting import BackendFor, Targets, targets_for
from controller.core.executing import ProgressCallback, RetryPolicy, execute
from controller.core.planning import plan as make_plan
from controller.core.recording import ResourceStatus
from controller.sources.loading import load_desired_state
from controller.sources.revisions import revision_of
from controller.structs.errors import BackendError, TransientError, ValidationFailed
from controller.structs.logformats import event_logger
from controller.structs.manifests import Kind
from controller.structs.plans import Action, Change, Plan
from controller.structs.results import ChangeOutcome, ChangeStatus, ReconcileOutcome, ReconcileStatus
from controller.structs.states import (
    ActualResource,
    ActualState,
    Condition,
    ConditionType,
    DesiredResource,
    DesiredState,
    ResourceId,
)

log = event_logger(__name__)


class RecorderLike(Protocol):
    """What ``reconcile`` needs of a recorder (``recording.Recorder`` is the real one)."""

    def record(self, outcome: ReconcileOutcome) -> int:
        """Store one outcome; return its history id."""
        ...

    def resource_status(self) -> Mapping[ResourceId, ResourceStatus]:
        """Recorded status of every resource."""
        ...

    def begin(self, revision: str, started: datetime, plan: Plan, digests: Mapping[ResourceId, str]) -> int:
        """Note an apply about to start (so an interrupted one is known after a crash); its history id."""
        ...


@dataclass
class PlanMemo:
    """The last plan with the inputs it was made from.

    Planning is a pure function of desired and actual state: a pass that loads the same desired
    state (reused for an unchanged revision) and reads an equal actual state gets the same plan,
    so an idle controller does not re-plan thousands of resources every interval.
    """

    desired: DesiredState | None = None
    actual: ActualState | None = None
    plan: Plan | None = None


@dataclass(frozen=True)
class ReconcileOptions:
    """Knobs of one reconcile.

    ``detect_only`` plans without applying (drift detection); ``allow_mass_delete`` lifts the
    mass-delete hold; ``progress`` receives executor events; ``backend_progress`` receives the
    backends' own messages (``3/5 replicas ready``).
    """

    controller_name: str = "amlops"
    # The source applying (``structs.states.source_id``): its inventory is what it may prune.
    source: str = ""
    detect_only: bool = False
    allow_mass_delete: bool = False
    parallelism: int = 4
    progress: ProgressCallback | None = None
    backend_progress: ProgressFn = no_progress
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Shown the plan before anything is applied; False stops the pass (``amlops apply`` asks a human).
    confirm: Callable[[Plan], bool] | None = None
    # The source's revisions name content (Git commits, folder hashes): reuse an unchanged load.
    reuse_desired: bool = False
    # Kept across passes by a long-lived controller (see PlanMemo).
    plan_memo: PlanMemo | None = None
    # Set on shutdown: changes in flight finish, nothing new starts (see executing.execute).
    stop: threading.Event | None = None


def _now() -> datetime:
    return datetime.now(UTC)


# --- the steps ----------------------------------------------------------------------------------


def load_step(root: str | Path, path: str, revision: str, reuse: bool = False) -> DesiredState:
    """Load and validate everything at once, so a broken commit is refused before anything is touched."""
    return load_desired_state(root, path, revision=revision, reuse=reuse)


def target_step(desired: DesiredState, backend_for: BackendFor) -> Targets:
    """Pick each declared resource's backend from its workspace, so one repo can span backends."""
    return targets_for(desired, backend_for)


def _read_with_retries(backend: Backend, retry: RetryPolicy) -> ActualState:
    """One backend's actual state; throttling and 5xx on a list call are retried like changes are."""
    started = time.monotonic()
    attempt = 1
    while True:
        try:
            return backend.read()
        except TransientError as exc:
            delay = retry.delay(attempt, exc.retry_after, random.random)
            if attempt >= retry.max_attempts or time.monotonic() - started + delay > retry.max_total_s:
                raise
            log.warning("read.retrying", backend=backend.name, attempt=attempt, delay_s=round(delay, 2))
            time.sleep(delay)
            attempt += 1


def read_step(targets: Targets, retry: RetryPolicy | None = None) -> ActualState:
    """Read actual state from every backend in use: the plan is made from what is, not from events."""
    merged: dict[ResourceId, ActualResource] = {}
    for backend in targets.backends:
        for resource in _read_with_retries(backend, retry or RetryPolicy()):
            # Two generations of one workspace may both report a service: its own backend's report wins.
            if resource.id not in merged or targets.owner.get(resource.id) is backend:
                merged[resource.id] = resource
                targets.owner.setdefault(resource.id, backend)
    return ActualState(merged)


def plan_step(desired: DesiredState, actual: ActualState, targets: Targets, options: ReconcileOptions) -> Plan:
    """Diff desired against actual, asking each resource's own backend what forces a replace."""
    fallback = targets.backends[0]

    def replace_fields(kind: Kind) -> frozenset[str]:
        # Fields are per kind; the union over backends in use is the cautious answer.
        fields: frozenset[str] = frozenset()
        for backend in targets.backends or [fallback]:
            fields |= backend.replace_fields(kind)
        return fields

    return make_plan(
        desired,
        actual,
        controller_name=options.controller_name,
        replace_fields=replace_fields,
        allow_mass_delete=options.allow_mass_delete,
        source=options.source,
    )


def resume_step(plan: Plan, desired: DesiredState, statuses: Mapping[ResourceId, ResourceStatus]) -> Plan:
    """Apply again what an interrupted pass was applying: its outcome was never seen.

    A controller killed while a change was in flight leaves the resource at the new input (the
    backend wrote it) but nobody learnt whether it became healthy. The plan then says "in sync";
    applying it again is idempotent and waits for health, so the outcome gets recorded.
    """
    changes = []
    resumed = False
    for change in plan.changes:
        resource = desired.resources.get(change.id)
        status = statuses.get(change.id)
        if (change.action is Action.NOOP and not change.reason and resource is not None and status is not None
                and status.interrupted_on(resource.digest)):
            change = Change(change.id, Action.UPDATE, (), f"resume: the apply of revision {status.last_attempted_revision} "
                            "was interrupted before its outcome was known", change.manifest_file, change.depends_on)
            resumed = True
        changes.append(change)
    return replace(plan, changes=tuple(changes)) if resumed else plan


def _live_stall(change: Change, resource: DesiredResource | None, live: ActualResource | None) -> Condition | None:
    """The Stalled condition the backend reports for a resource already at its desired input."""
    if resource is None or live is None or live.digest != resource.digest:
        return None
    stalled = live.condition(ConditionType.STALLED)
    return stalled if stalled is not None and stalled.status else None


def stall_step(plan: Plan, desired: DesiredState, actual: ActualState,
               statuses: Mapping[ResourceId, ResourceStatus]) -> tuple[Plan, dict[ResourceId, Condition]]:
    """Hold back changes that already failed permanently on the same input, and list what is blocked.

    Flux's split: a permanent error (invalid spec, quota, Unschedulable, replicas that crash at
    start) stalls the resource until its manifest or the files it deploys change (its digest),
    instead of failing every pass. A stalled resource is not retried, but neither is it applied:
    it is returned as blocked (as are refused replaces and resources another source claims), so
    the pass is recorded as degraded and the revision never as applied.
    """
    changes = []
    blocked: dict[ResourceId, Condition] = {}
    held_back = False
    for change in plan.changes:
        resource = desired.resources.get(change.id)
        status = statuses.get(change.id)
        if change.action is Action.NOOP and change.reason.startswith(("refused", "conflict")):
            reason = "ReplaceRefused" if change.reason.startswith("refused") else "OwnershipConflict"
            blocked[change.id] = Condition(ConditionType.STALLED, True, reason, change.reason)
        elif change.action is not Action.DELETE and (change.action is not Action.NOOP or not change.reason):
            recorded = status.stalled_on(resource.digest) if resource is not None and status is not None else None
            stalled = recorded or _live_stall(change, resource, actual.resources.get(change.id))
            if stalled is not None:
                first_line = stalled.message.splitlines()[0] if stalled.message else ""
                change = Change(change.id, Action.NOOP, (), f"stalled: {stalled.reason}: {first_line} "
                                "(not retried until the manifest or its files change)", change.manifest_file)
                blocked[change.id] = Condition(ConditionType.STALLED, True, stalled.reason, stalled.message)
                held_back = True
        changes.append(change)
    return (replace(plan, changes=tuple(changes)) if held_back else plan), blocked


def apply_step(plan: Plan, desired: DesiredState, targets: Targets, options: ReconcileOptions) -> tuple[ChangeOutcome, ...]:
    """Apply the plan in dependency order, retrying what may pass and isolating what will not."""
    ctx = ApplyContext(options.controller_name, desired.revision, desired.root, desired, options.backend_progress,
                       options.source)
    fallback = targets.backends[0]
    return execute(
        plan,
        desired,
        lambda rid: targets.owner.get(rid, fallback),
        ctx,
        parallelism=options.parallelism,
        retry=options.retry,
        progress=options.progress,
        stop=options.stop,
    )


def begin_step(recorder: RecorderLike, revision: str, started: datetime, plan: Plan,
               digests: Mapping[ResourceId, str]) -> None:
    """Note the apply before it starts: if the controller dies mid-apply, the next one knows."""
    try:
        recorder.begin(revision, started, plan, digests)
    except Exception:  # a full disk must not stop an apply; the outcome is still recorded after it
        log.exception("reconcile.begin_failed", revision=revision)


def record_step(recorder: RecorderLike, outcome: ReconcileOutcome) -> ReconcileOutcome:
    """Record every pass, good or bad, so status and history answer "what happened at revision X"."""
    try:
        recorder.record(outcome)
    except Exception:  # a full disk must not turn an applied revision into a crash loop
        log.exception("reconcile.record_failed", revision=outcome.revision)
    log.info("reconcile.finished", revision=outcome.revision, status=outcome.status.value,
             changes=len(outcome.changes), errors=len(outcome.errors))
    return outcome


# --- the pipeline -------------------------------------------------------------------------------


def reconcile(
    root: str | Path,
    path: str,
    revision: str,
    backend_for: BackendFor,
    recorder: RecorderLike,
    options: ReconcileOptions | None = None,
) -> ReconcileOutcome:
    """Converge actual state on the manifests under ``root/path`` at ``revision``; record and return the outcome.

    Never raises for bad input or backend failures: they become the outcome's status and errors.
    """
    options = options or ReconcileOptions()
    started = _now()
    durations: dict[str, float] = {}
    digests: dict[ResourceId, str] = {}
    observed: list[ActualState] = []

    def finish(status: ReconcileStatus, plan: Plan | None = None, changes: tuple[ChangeOutcome, ...] = (),
               errors: tuple[str, ...] = (), blocked: Mapping[ResourceId, Condition] | None = None,
               requeue_after: float | None = None) -> ReconcileOutcome:
        outcome = ReconcileOutcome(revision, status, started, _now(), plan, changes, errors, dict(durations), digests,
                                   observed[0] if observed else None, dict(blocked or {}), requeue_after)
        return record_step(recorder, outcome)

    mark = time.monotonic()
    try:
        desired = load_step(root, path, revision, options.reuse_desired)
    except ValidationFailed as exc:
        durations["load"] = time.monotonic() - mark
        log.warning("reconcile.invalid", revision=revision, errors=len(exc.errors))
        return finish(ReconcileStatus.INVALID, errors=tuple(str(e) for e in exc.errors))
    durations["load"] = time.monotonic() - mark

    mark = time.monotonic()
    try:
        targets = target_step(desired, backend_for)
        actual = read_step(targets, options.retry)
        observed.append(actual)
    except BackendError as exc:
        durations["read"] = time.monotonic() - mark
        return finish(ReconcileStatus.FAILED, errors=(f"reading actual state: {exc}",))
    durations["read"] = time.monotonic() - mark

    mark = time.monotonic()
    digests.update({r.id: r.digest for r in desired})
    memo = options.plan_memo
    if memo is not None and memo.plan is not None and memo.desired is desired and memo.actual == actual:
        planned = memo.plan
    else:
        planned = plan_step(desired, actual, targets, options)
        if memo is not None:
            memo.desired, memo.actual, memo.plan = desired, actual, planned
    statuses = recorder.resource_status()
    plan, blocked = stall_step(resume_step(planned, desired, statuses), desired, actual, statuses)
    durations["plan"] = time.monotonic() - mark
    log.info("reconcile.planned", revision=revision, changes=len(plan.effective), held=bool(plan.held))
    # What keeps this revision from being applied though nothing fails in this pass.
    blocked_errors = tuple(f"{c.id}: {c.reason}" for c in plan.changes if c.id in blocked)

    if options.detect_only:
        return finish(ReconcileStatus.DETECTED, plan)
    if plan.held:
        return finish(ReconcileStatus.HELD, plan, errors=(plan.held,))
    if not plan.has_changes:
        status = ReconcileStatus.DEGRADED if blocked else ReconcileStatus.NO_CHANGES
        return finish(status, plan, errors=blocked_errors, blocked=blocked)
    if options.confirm is not None and not options.confirm(plan):
        return finish(ReconcileStatus.HELD, plan, errors=("not confirmed: nothing applied",))

    mark = time.monotonic()
    begin_step(recorder, revision, started, plan, digests)
    changes = apply_step(plan, desired, targets, options)
    durations["apply"] = time.monotonic() - mark
    failed = [c for c in changes if c.status not in (ChangeStatus.SUCCEEDED, ChangeStatus.PROGRESSING)]
    errors = tuple(f"{c.id}: {c.error}" for c in failed if c.error) + blocked_errors
    # A rollout under way is a requeue, controller-runtime style: the pass ends, the next one is due soon.
    waits = [c.requeue_after for c in changes if c.status is ChangeStatus.PROGRESSING and c.requeue_after is not None]
    status = (ReconcileStatus.FAILED if failed else ReconcileStatus.DEGRADED if blocked
              else ReconcileStatus.PROGRESSING if waits else ReconcileStatus.APPLIED)
    return finish(status, plan, changes, errors, blocked, min(waits) if waits else None)


# --- once, from a folder the user has checked out (amlops plan, amlops apply) ----------------------


def plan_once(root: str | Path, path: str, backend_for: BackendFor, options: ReconcileOptions | None = None) -> Plan:
    """What applying the manifests under ``root/path`` would change now; nothing is applied or recorded.

    The pipeline's load, target, read and plan steps, at the folder's revision (its Git commit,
    ``+dirty`` with edits). Raises ``ValidationFailed`` (invalid manifests) or ``BackendError`` (a
    backend that cannot be read).
    """
    options = options or ReconcileOptions()
    desired = load_step(root, path, revision_of(Path(root)))
    targets = target_step(desired, backend_for)
    return plan_step(desired, read_step(targets), targets, options)


def apply_once(root: str | Path, path: str, backend_for: BackendFor, recorder: RecorderLike,
               options: ReconcileOptions | None = None) -> ReconcileOutcome:
    """Reconcile the manifests under ``root/path`` at the folder's revision, as one apply.

    A rollout the pass starts is carried on, pass after pass, until it ends; ``options.confirm``
    is asked on the first pass only (the change it confirmed is what the later passes finish).
    """
    options = options or ReconcileOptions()
    revision = revision_of(Path(root))
    outcome = reconcile(root, path, revision, backend_for, recorder, options)
    while outcome.status is ReconcileStatus.PROGRESSING and outcome.requeue_after is not None:
        time.sleep(outcome.requeue_after)
        outcome = reconcile(root, path, revision, backend_for, recorder, replace(options, confirm=None))
    return outcome
