"""Executing a plan: changes in dependency order, independent ones in parallel, each retried.

Deletes run first, in reverse dependency order, then creates/updates/replaces in dependency order
(see ``planning``). Inside each phase a change starts as soon as everything it depends on has
succeeded, on a bounded thread pool. A ``TransientError`` is retried with exponential backoff and
full jitter (capped in attempts and total time, and never sooner than the backend's
``retry_after``); a ``PermanentError`` or an unexpected exception fails that change and skips the
changes that depend on it, while unrelated changes carry on.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from controller.backends.base import ApplyContext, Backend, TrafficSplitting
from controller.core import rolling_out
from controller.structs.errors import PermanentError, TransientError
from controller.structs.logformats import event_logger
from controller.structs.plans import Action, Change, Plan
from controller.structs.results import ChangeOutcome, ChangeStatus, ExecutionEvent, ExecutionPhase
from controller.structs.states import DesiredState, ResourceId

log = event_logger(__name__)

ProgressCallback = Callable[[ExecutionEvent], None]
BackendOf = Callable[[ResourceId], Backend]


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one change: at most ``max_attempts`` tries within ``max_total_s`` seconds."""

    max_attempts: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    max_total_s: float = 600.0

    def delay(self, attempt: int, retry_after: float | None, rng: Callable[[], float]) -> float:
        """Seconds to wait after failed ``attempt`` (1-based): full jitter, at least ``retry_after``."""
        ceiling = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        jittered = rng() * ceiling
        return float(max(jittered, retry_after or 0.0))


def _no_progress(event: ExecutionEvent) -> None:
    """A progress sink that drops everything."""


@dataclass
class _Runner:
    """Applies single changes with retries; shared by the pool's threads (it holds no mutable state)."""

    desired: DesiredState
    backend_of: BackendOf
    ctx: ApplyContext
    retry: RetryPolicy
    progress: ProgressCallback
    sleep: Callable[[float], None]
    rng: Callable[[], float]
    stop: threading.Event = field(default_factory=threading.Event)

    def apply_once(self, change: Change) -> rolling_out.Progress | str | None:
        """Apply ``change`` once: a rollout's progress, the backend's note for the history, or None."""
        backend = self.backend_of(change.id)
        if change.action is Action.DELETE:
            backend.delete(change.id, self.ctx)
            return None
        resource = self.desired.resources.get(change.id)
        if resource is None:
            raise PermanentError(f"{change.id} is not in the desired state at {self.desired.revision}", reason="NotDeclared")
        if change.action is Action.CREATE:
            return backend.create(resource, self.ctx)
        elif change.action is Action.UPDATE and rolling_out.applies(backend, resource):
            # A new version goes out step by step: one short step per pass, never a wait inside it.
            assert isinstance(backend, TrafficSplitting)
            return rolling_out.advance(backend, resource, self.ctx)
        elif change.action is Action.UPDATE:
            return backend.update(resource, change, self.ctx)
        elif change.action is Action.REPLACE:
            # Some fields cannot change in place: Azure ML needs the old one gone first.
            backend.delete(change.id, self.ctx)
            return backend.create(resource, self.ctx)
        return None

    def run(self, change: Change) -> ChangeOutcome:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            self.progress(ExecutionEvent(change.id, change.action, ExecutionPhase.STARTED, attempt))
            try:
                applied = self.apply_once(change)
            except TransientError as exc:
                elapsed = time.monotonic() - started
                delay = self.retry.delay(attempt, exc.retry_after, self.rng)
                if attempt >= self.retry.max_attempts or elapsed + delay > self.retry.max_total_s:
                    log.warning("change.failed", resource=str(change.id), attempts=attempt, reason="RetriesExhausted")
                    return self._failed(change, attempt, started, f"gave up after {attempt} attempts: {exc}", "RetriesExhausted")
                if self.stop.is_set():  # shutting down: report the failure now rather than retry later
                    return self._failed(change, attempt, started, f"interrupted while retrying: {exc}", "Interrupted")
                log.info("change.retrying", resource=str(change.id), attempt=attempt, delay_s=round(delay, 3))
                self.progress(ExecutionEvent(change.id, change.action, ExecutionPhase.RETRYING, attempt, f"{exc} (retrying in {delay:.1f}s)"))
                self.sleep(delay)
                continue
            except PermanentError as exc:
                log.warning("change.failed", resource=str(change.id), attempts=attempt, reason=exc.reason)
                return self._failed(change, attempt, started, str(exc), exc.reason,
                                    rolled_back=isinstance(exc, rolling_out.RolledBack))
            except Exception as exc:  # a backend bug must fail one change, not the whole reconcile
                log.exception("change.crashed", resource=str(change.id), attempts=attempt)
                return self._failed(change, attempt, started, f"{type(exc).__name__}: {exc}", "Unexpected")
            duration = time.monotonic() - started
            # A backend's note (a migrated service's new scoring URI) is kept as the change's message.
            note = applied if isinstance(applied, str) else None
            progress = applied if isinstance(applied, rolling_out.Progress) else None
            if progress is not None and not progress.done:
                self.progress(ExecutionEvent(change.id, change.action, ExecutionPhase.PROGRESSING, attempt, progress.message))
                return ChangeOutcome(change.id, change.action, ChangeStatus.PROGRESSING, attempt, duration,
                                     reason="RolloutInProgress", message=progress.message,
                                     requeue_after=progress.requeue_after)
            log.info("change.succeeded", resource=str(change.id), action=change.action.value, attempts=attempt)
            self.progress(ExecutionEvent(change.id, change.action, ExecutionPhase.SUCCEEDED, attempt))
            steps = tuple(s.to_json() for s in progress.steps) if progress is not None else ()
            return ChangeOutcome(change.id, change.action, ChangeStatus.SUCCEEDED, attempt, duration,
                                 message=progress.message if progress is not None and steps else note, rollout=steps)

    def _failed(self, change: Change, attempt: int, started: float, message: str, reason: str, *,
                rolled_back: bool = False) -> ChangeOutcome:
        self.progress(ExecutionEvent(change.id, change.action, ExecutionPhase.FAILED, attempt, message))
        return ChangeOutcome(change.id, change.action, ChangeStatus.FAILED, attempt, time.monotonic() - started, message, reason,
                             rolled_back=rolled_back)


def _run_phase(
    changes: Sequence[Change],
    runner: _Runner,
    pool: ThreadPoolExecutor,
    done: dict[ResourceId, ChangeOutcome],
) -> None:
    """Run ``changes`` as a DAG over ``depends_on``; fill ``done`` with every change's outcome."""
    pending = {c.id: c for c in changes}
    running: dict[Future[ChangeOutcome], Change] = {}
    while pending or running:
        for change in list(pending.values()):
            if runner.stop.is_set():
                # Shutting down: changes in flight finish; nothing new starts.
                del pending[change.id]
                done[change.id] = ChangeOutcome(change.id, change.action, ChangeStatus.SKIPPED, 0, 0.0,
                                                "skipped: the controller is shutting down", "Interrupted")
                continue
            deps = [d for d in change.depends_on if d in done or d in pending or any(c.id == d for c in running.values())]
            broken = [d for d in deps if d in done and done[d].status is not ChangeStatus.SUCCEEDED]
            if broken:
                del pending[change.id]
                message = f"skipped: {broken[0]} did not succeed"
                runner.progress(ExecutionEvent(change.id, change.action, ExecutionPhase.SKIPPED, 0, message))
                log.info("change.skipped", resource=str(change.id), dependency=str(broken[0]))
                done[change.id] = ChangeOutcome(change.id, change.action, ChangeStatus.SKIPPED, 0, 0.0, message, "DependencyFailed")
                continue
            if all(d in done for d in deps):
                del pending[change.id]
                running[pool.submit(runner.run, change)] = change
        if not running:
            if pending:  # a cycle: cannot happen with kind-ordered dependencies, but never hang
                for change in pending.values():
                    done[change.id] = ChangeOutcome(change.id, change.action, ChangeStatus.SKIPPED, 0, 0.0,
                                                    "skipped: dependency cycle", "DependencyCycle")
                pending.clear()
            break
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            change = running.pop(future)
            done[change.id] = future.result()


def execute(
    plan: Plan,
    desired: DesiredState,
    backend_of: BackendOf,
    ctx: ApplyContext,
    *,
    parallelism: int = 4,
    retry: RetryPolicy | None = None,
    progress: ProgressCallback | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
    stop: threading.Event | None = None,
) -> tuple[ChangeOutcome, ...]:
    """Apply every effective change of ``plan``; return one outcome per change, in plan order.

    ``backend_of`` names the backend that owns each resource (workspaces may live on different
    backends). ``sleep`` and ``rng`` are the clock and dice of the backoff, injectable so tests
    need not wait. Once ``stop`` is set, changes in flight finish and no new change starts (the
    rest are skipped with reason ``Interrupted``), so a shutdown records a consistent outcome.
    """
    runner = _Runner(desired, backend_of, ctx, retry or RetryPolicy(), progress or _no_progress, sleep, rng,
                     stop or threading.Event())
    effective = plan.effective
    deletes = [c for c in effective if c.action is Action.DELETE]
    others = [c for c in effective if c.action is not Action.DELETE]
    done: dict[ResourceId, ChangeOutcome] = {}
    with ThreadPoolExecutor(max_workers=max(1, parallelism), thread_name_prefix="amlops-apply") as pool:
        _run_phase(deletes, runner, pool, done)
        _run_phase(others, runner, pool, done)
    return tuple(done[c.id] for c in effective)


def outcomes_by_id(outcomes: Sequence[ChangeOutcome]) -> Mapping[ResourceId, ChangeOutcome]:
    """Outcomes keyed by resource id."""
    return {o.id: o for o in outcomes}
