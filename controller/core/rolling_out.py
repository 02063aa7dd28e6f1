"""Rolling out: a new version of a service reaches traffic step by step, judged by its own metrics.

A rollout is a small state machine driven one short step per reconcile pass, never by sleeping
inside one: each pass reads where it stands (stored by the backend, next to the split it
describes), does at most one thing, stores the new state, and asks to be looked at again soon
(``Progress.requeue_after``, controller-runtime's ``RequeueAfter``). A controller killed at any
point resumes from the stored state on its next pass.

    starting ── candidate ready, sample request answered as expected ──▶ step 1 … step n ──▶ promoting ──▶ done
        │                                                                   │                    │
        └──────── fails to start / wrong answer ──── any failed check ──────┴── abort ───────────┴──▶ rolled back

``blueGreen`` has no steps: once the candidate is ready and answers its sample request, it gets
all traffic at once and is promoted. Rolling back returns all traffic to the live version at
once, removes the candidate and raises ``PermanentError`` with the figure that failed: the
resource is Stalled on that input until its manifest or files change.

The analysis (``judge``) is a pure function of the two versions' counters over the same window:
each replica's counters now less those at the step's start, or, on a backend whose metrics are
asked for over a time span (``TrafficWindows``: Azure Monitor), the span from the step's start.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, NoReturn

from controller.backends.base import ApplyContext, Backend, TrafficSplitting, TrafficWindows
from controller.structs.errors import PermanentError
from controller.structs.logformats import event_logger
from controller.structs.manifests import Analysis, Rollout, RolloutStep, SampleRequest, WebserviceManifest
from controller.structs.plans import Action, Change
from controller.structs.rollouts import (
    ROLLOUT_ANNOTATION,
    Counters,
    Phase,
    RolloutState,
    StepFigures,
    VersionFigures,
    window,
)
from controller.structs.states import DesiredResource

log = event_logger(__name__)

POLL_S: Final = 0.5
"""How soon a pass looks at a rollout under way again (a weight change takes effect within 0.1 s)."""
START_TIMEOUT_S: Final = 600.0
"""How long a candidate may take to become ready before the rollout gives up on it."""
LIVE_REFERENCE_MIN: Final = 10
"""Live requests a window needs before its p99 is a fair reference for ``maxP99Ratio``."""

Clock = Callable[[], float]


@dataclass(frozen=True)
class Progress:
    """What one pass did to a rollout: finished (``done``), or to be looked at again after ``requeue_after``."""

    done: bool
    message: str
    requeue_after: float | None = None
    steps: tuple[StepFigures, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """A step's analysis: ``passed`` True / False, or None while the step has not seen enough."""

    passed: bool | None
    message: str
    candidate: VersionFigures
    live: VersionFigures


# --- the analysis (pure) ------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _percent(value: float) -> str:
    return f"{value * 100:.1f} %"


def judge(analysis: Analysis | None, step: RolloutStep, candidate: Counters | VersionFigures,
          live: Counters | VersionFigures, elapsed_s: float, live_reference_p99_ms: float | None = None) -> Verdict:
    """Judge one step over one window: the candidate's counters against the limits and the live version.

    Checks run as soon as the candidate has answered the step's minimum of requests (at least one),
    so a bad version fails early; a step passes only once its pause is also over. ``maxP99Ratio``
    compares with the live version over the same window, or with ``live_reference_p99_ms`` (an
    earlier step's) when the live version saw too few requests in this one (at weight 100).
    """
    analysis = analysis or Analysis()
    cand, live_figures = _figures_of(candidate), _figures_of(live)
    needed = max(1, analysis.minRequests, step.minRequests or 0)
    pause = step.pauseSeconds or 0.0
    if candidate.requests < needed:
        return Verdict(None, f"waiting for requests: {candidate.requests}/{needed}, {elapsed_s:.0f}/{pause:.0f} s",
                       cand, live_figures)
    over = f"over {candidate.requests} requests"
    if analysis.maxErrorRate is not None and candidate.error_rate > analysis.maxErrorRate:
        return Verdict(False, f"error rate {_percent(candidate.error_rate)} > {_percent(analysis.maxErrorRate)} {over}",
                       cand, live_figures)
    p99 = candidate.p99_ms
    if analysis.maxP99Ms is not None and p99 is not None and p99 > analysis.maxP99Ms:
        return Verdict(False, f"p99 {_ms(p99)} > {_ms(analysis.maxP99Ms)} {over}", cand, live_figures)
    if analysis.maxP99Ratio is not None and p99 is not None:
        reference = live.p99_ms if live.requests >= LIVE_REFERENCE_MIN else live_reference_p99_ms
        if reference is not None and p99 > analysis.maxP99Ratio * reference:
            return Verdict(False, f"p99 {_ms(p99)} > {analysis.maxP99Ratio:g} × live p99 {_ms(reference)} {over}",
                           cand, live_figures)
    if elapsed_s < pause:
        return Verdict(None, f"checks pass {over}; pausing {elapsed_s:.0f}/{pause:.0f} s", cand, live_figures)
    return Verdict(True, f"passed {over}", cand, live_figures)


def _figures_of(value: Counters | VersionFigures) -> VersionFigures:
    return value if isinstance(value, VersionFigures) else VersionFigures.of(value)


def step_label(index: int, weight: int) -> str:
    """``step 2 (50 %)``: how users read a step (1-based)."""
    return f"step {index + 1} ({weight} %)"


# --- driving one rollout ------------------------------------------------------------------------


def applies(backend: Backend, resource: DesiredResource) -> bool:
    """Whether updating ``resource`` goes through a rollout (a service on a backend that can split traffic)."""
    manifest = resource.manifest
    if not isinstance(manifest, WebserviceManifest) or not isinstance(backend, TrafficSplitting):
        return False
    return manifest.spec.rollout.strategy != "rolling" or backend.rollout_state(manifest.name) is not None


class RolledBack(PermanentError):
    """The rollout was rolled back: all traffic is on the live version, the candidate is gone."""


def advance(backend: TrafficSplitting, resource: DesiredResource, ctx: ApplyContext, now: Clock = time.time) -> Progress:
    """Carry ``resource``'s rollout one step further; raise ``PermanentError`` once it is rolled back.

    A permanent failure of any step rolls back too: a stalled resource is not looked at again
    until its input changes, so no split may be left behind it.
    """
    try:
        return _advance(backend, resource, ctx, now)
    except RolledBack:
        raise
    except PermanentError:
        name = resource.manifest.name
        if backend.rollout_state(name) is not None:
            backend.discard_candidate(name)
            backend.save_rollout(name, None)
        raise


def _advance(backend: TrafficSplitting, resource: DesiredResource, ctx: ApplyContext, now: Clock) -> Progress:
    manifest = resource.manifest
    assert isinstance(manifest, WebserviceManifest)
    name, rollout = manifest.name, manifest.spec.rollout
    state = backend.rollout_state(name)
    annotation = manifest.metadata.annotations.get(ROLLOUT_ANNOTATION, "").strip().lower()
    if state is not None and state.target != resource.digest and annotation != "abort":
        # Git moved on while a rollout was under way: that version is no longer wanted.
        log.info("rollout.superseded", service=name, revision=state.revision)
        backend.discard_candidate(name)
        backend.save_rollout(name, None)
        state = None
    if state is None:
        return _begin(backend, resource, ctx, rollout, annotation, now)
    request = state.request or annotation or None
    if request == "abort" and state.phase != Phase.PROMOTING:  # once promoting, the new version is already live
        who = "amlops rollout abort" if state.request == "abort" else f"annotation {ROLLOUT_ANNOTATION}=abort"
        _roll_back(backend, state, f"rollout aborted by {who} at {_where(state)}", "RolloutAborted")
    if state.phase == Phase.STARTING:
        return _starting(backend, resource, ctx, rollout, state, request, now)
    if state.phase == Phase.STEPPING:
        if request == "promote":
            return _promote(backend, resource, ctx, state, "promoted by hand")
        return _stepping(backend, resource, ctx, rollout, state, now)
    return _promoting(backend, resource, ctx, state)


def _where(state: RolloutState) -> str:
    if state.phase == Phase.STEPPING:
        return step_label(state.step, state.weight)
    return state.phase


def _save(backend: TrafficSplitting, state: RolloutState, message: str) -> RolloutState:
    state = replace(state, message=message, request=None)
    backend.save_rollout(state.service, state)
    return state


def _roll_back(backend: TrafficSplitting, state: RolloutState, message: str, reason: str) -> NoReturn:
    """All traffic back to the live version, the candidate removed, the rollout forgotten; then fail."""
    backend.discard_candidate(state.service)
    backend.save_rollout(state.service, None)
    log.warning("rollout.rolled_back", service=state.service, reason=reason)
    raise RolledBack(message, reason=reason)


def _begin(backend: TrafficSplitting, resource: DesiredResource, ctx: ApplyContext, rollout: Rollout,
           annotation: str, now: Clock) -> Progress:
    manifest = resource.manifest
    assert isinstance(manifest, WebserviceManifest)
    name = manifest.name
    if rollout.strategy == "rolling" or not backend.needs_candidate(resource, ctx):
        # Nothing new to judge (a scale change, a tag), or no progressive strategy: a plain update,
        # which also removes a candidate that no rollout tracks.
        assert isinstance(backend, Backend)
        backend.update(resource, Change(resource.id, Action.UPDATE), ctx)
        return Progress(True, "updated in place")
    if annotation == "abort":
        raise PermanentError(f"rollout held: the annotation {ROLLOUT_ANNOTATION}=abort is set", reason="RolloutAborted")
    state = RolloutState(service=name, target=resource.digest, revision=ctx.revision, strategy=rollout.strategy,
                         phase=Phase.STARTING, started=now(), message="starting the candidate version",
                         weights=tuple(s.weight for s in rollout.steps))
    backend.discard_candidate(name)  # a leftover nobody tracks goes before a new one starts
    backend.save_rollout(name, state)  # stored first: a crash from here on finds the candidate tracked
    try:
        backend.start_candidate(resource, ctx)
    except Exception:
        # Not started (no GPU for it, a dependency not there yet): nothing to judge, nothing left over.
        backend.discard_candidate(name)
        backend.save_rollout(name, None)
        raise
    log.info("rollout.started", service=name, strategy=rollout.strategy, revision=ctx.revision)
    return Progress(False, f"{rollout.strategy}: starting the candidate version", POLL_S)


def _starting(backend: TrafficSplitting, resource: DesiredResource, ctx: ApplyContext, rollout: Rollout,
              state: RolloutState, request: str | None, now: Clock) -> Progress:
    health, message = backend.candidate_health(state.service)
    if health == "failed":
        _roll_back(backend, state, f"the candidate version failed to start: {message}", "CandidateFailed")
    if health != "ready":
        if now() - state.started > START_TIMEOUT_S:
            _roll_back(backend, state, f"the candidate version was not ready within {START_TIMEOUT_S:.0f} s ({message})",
                       "CandidateFailed")
        _save(backend, state, f"starting the candidate: {message}")
        return Progress(False, f"{rollout.strategy}: {message}", POLL_S)
    if rollout.sampleRequest is not None:
        failure = _smoke_test(backend, resource, ctx, rollout.sampleRequest)
        if failure is not None:
            _roll_back(backend, state, f"sample request failed on the candidate version: {failure}", "SampleRequestFailed")
    if rollout.strategy == "blueGreen" or request == "promote" or not rollout.steps:
        return _promote(backend, resource, ctx, state, "ready and checked" if request != "promote" else "promoted by hand")
    return _enter_step(backend, rollout, state, 0, now)


def _smoke_test(backend: TrafficSplitting, resource: DesiredResource, ctx: ApplyContext,
                sample: SampleRequest) -> str | None:
    """What is wrong with the candidate's answer to the sample request, or None when it is right."""
    base = Path(ctx.root) / Path(resource.origin.file).parent
    body = (base / sample.file).read_bytes() if sample.file is not None else (sample.body or "").encode()
    status, answer = backend.sample(resource.manifest.name, body, candidate=True)
    if status != 200:
        return f"HTTP {status}: {answer[:200].decode(errors='replace')}"
    expected: Any = None
    if sample.expect is not None:
        expected = sample.expect
    elif sample.expectFile is not None:
        expected = (base / sample.expectFile).read_text()
    elif sample.compareWithLive:
        live_status, live_answer = backend.sample(resource.manifest.name, body, candidate=False)
        if live_status != 200:
            return None  # the live version cannot answer it either: nothing to compare with
        expected = live_answer.decode(errors="replace")
    if expected is None:
        return None
    try:
        same = json.loads(answer) == json.loads(expected)
    except ValueError:
        same = answer.decode(errors="replace").strip() == str(expected).strip()
    return None if same else f"answered {answer[:200].decode(errors='replace')} where {str(expected)[:200]} was expected"


def _enter_step(backend: TrafficSplitting, rollout: Rollout, state: RolloutState, index: int, now: Clock) -> Progress:
    weight = rollout.steps[index].weight
    baseline: dict[str, dict[str, Any]] = {}
    if not isinstance(backend, TrafficWindows):  # windowed metrics need only the step's start time
        traffic = backend.traffic(state.service)
        baseline = {"live": {k: v.to_json() for k, v in traffic.live.items()},
                    "candidate": {k: v.to_json() for k, v in traffic.candidate.items()}}
    # The baseline is stored before the weight moves: every request of the step falls inside its window.
    state = replace(state, phase=Phase.STEPPING, step=index, weight=weight, step_started=now(), baseline=baseline)
    state = _save(backend, state, f"{step_label(index, weight)}: started")
    backend.set_weight(state.service, weight)
    if isinstance(backend, TrafficWindows):
        # A span cannot leave out what came before it: it starts once the new weight is in force.
        state = _save(backend, replace(state, step_started=now()), f"{step_label(index, weight)}: started")
    log.info("rollout.step", service=state.service, step=index + 1, weight=weight)
    return Progress(False, f"canary {step_label(index, weight)}", POLL_S)


def _stepping(backend: TrafficSplitting, resource: DesiredResource, ctx: ApplyContext, rollout: Rollout,
              state: RolloutState, now: Clock) -> Progress:
    if state.step >= len(rollout.steps):
        return _promote(backend, resource, ctx, state, "every step passed")
    step = rollout.steps[state.step]
    candidate, live = _step_window(backend, state)
    elapsed = now() - state.step_started
    verdict = judge(rollout.analysis, step, candidate, live, elapsed, state.live_p99_ms)
    label = step_label(state.step, state.weight)
    if verdict.passed is False:
        _roll_back(backend, state, f"analysis failed at {label}: {verdict.message}", "AnalysisFailed")
    if verdict.passed is None:
        _save(backend, state, f"{label}: {verdict.message}")
        return Progress(False, f"canary {label}: {verdict.message}", POLL_S)
    figures = StepFigures(state.step + 1, state.weight, elapsed, verdict.candidate, verdict.live)
    reference = verdict.live.p99_ms if verdict.live.requests >= LIVE_REFERENCE_MIN else state.live_p99_ms
    state = replace(state, steps=(*state.steps, figures), live_p99_ms=reference)
    log.info("rollout.step_passed", service=state.service, step=state.step + 1, requests=verdict.candidate.requests)
    if state.step + 1 < len(rollout.steps):
        return _enter_step(backend, rollout, state, state.step + 1, now)
    return _promote(backend, resource, ctx, state, "every step passed")


def _step_window(backend: TrafficSplitting, state: RolloutState) -> tuple[Counters | VersionFigures,
                                                                          Counters | VersionFigures]:
    """``(candidate, live)`` over the current step so far: asked for over its span, or counters less its baseline."""
    if isinstance(backend, TrafficWindows):
        return backend.figures_since(state.service, state.step_started)
    traffic = backend.traffic(state.service)
    return (window(traffic.candidate, state.baseline_of("candidate")),
            window(traffic.live, state.baseline_of("live")))


def _promote(backend: TrafficSplitting, resource: DesiredResource, ctx: ApplyContext, state: RolloutState,
             why: str) -> Progress:
    """All traffic to the candidate at once, then the live replicas rolled to its version underneath."""
    backend.set_weight(state.service, 100)
    state = _save(backend, replace(state, phase=Phase.PROMOTING, weight=100), f"promoting ({why})")
    backend.promote_candidate(resource, ctx)
    log.info("rollout.promoting", service=state.service, why=why)
    return Progress(False, f"{state.strategy}: promoting ({why})", POLL_S)


def _promoting(backend: TrafficSplitting, resource: DesiredResource, ctx: ApplyContext, state: RolloutState) -> Progress:
    try:
        done = backend.promoted(state.service)
    except PermanentError as exc:
        _roll_back(backend, state, f"promotion failed: {exc}", exc.reason)
    if not done:
        return Progress(False, f"{state.strategy}: promoting, live replicas rolling to the new version", POLL_S)
    backend.discard_candidate(state.service)
    backend.save_rollout(state.service, None)
    log.info("rollout.promoted", service=state.service, steps=len(state.steps))
    return Progress(True, f"{state.strategy}: promoted after {len(state.steps)} steps", None, state.steps)


# --- looking and intervening (``amlops rollout``) -------------------------------------------------


def describe(backend: TrafficSplitting, service: str, now: Clock = time.time) -> dict[str, Any] | None:
    """Where ``service``'s rollout stands, with both versions' figures over the current step so far; None without one."""
    state = backend.rollout_state(service)
    if state is None:
        return None
    data = state.summary()
    if state.phase == Phase.STEPPING:
        candidate, live = _step_window(backend, state)
        data["window"] = {
            "seconds": round(now() - state.step_started, 1),
            "candidate": _figures_of(candidate).to_json(),
            "live": _figures_of(live).to_json(),
        }
    return data


def intervene(backend: TrafficSplitting, service: str, action: str) -> bool:
    """Ask the controller to ``abort`` or ``promote`` ``service``'s rollout on its next pass; False without one."""
    if action not in ("abort", "promote"):
        raise ValueError(f"unknown rollout action {action!r} (abort or promote)")
    return backend.request_rollout(service, action)
