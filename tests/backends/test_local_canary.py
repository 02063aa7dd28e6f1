"""Canary rollouts on the local backend, end to end: real replicas, real split, bounded loopback load.

Version 1 answers 2×; a new version answers 3× (or errors, or is slow, or cannot init). The
load's clients classify every answer by the version that gave it and count every exception.
Tolerance for the bad version's share: its step's weight plus 5 points (the split itself is
exact per live replica; the points cover answers in flight while the weight changes).
"""

from __future__ import annotations

from pathlib import Path

from controller.backends.local import LocalBackend
from controller.core.recording import Recorder
from controller.structs.manifests import Kind
from controller.structs.results import ChangeStatus, ReconcileStatus

from .canaries import (
    SERVICE,
    Load,
    canary_repo,
    candidate_share,
    drive,
    failures,
    history_changes,
    new_version,
    port_of,
    stopped_candidate,
)
from .conftest import Repo, apply_all

TOLERANCE = 0.05


def _start(backend: LocalBackend, repo: Repo, tmp_path: Path) -> tuple[Recorder, Load]:
    canary_repo(repo)
    apply_all(backend, repo)
    recorder = Recorder(tmp_path / "history")
    load = Load(port_of(backend), backend.get_keys(SERVICE)[0]).start()
    return recorder, load


def test_a_good_version_passes_every_canary_step_and_reaches_all_traffic(
    backend: LocalBackend, repo: Repo, tmp_path: Path
) -> None:
    recorder, load = _start(backend, repo, tmp_path)
    new_version(repo, "3")
    try:
        outcomes = drive(repo, backend, recorder, "r2")
    finally:
        answers = load.finish()

    assert outcomes[-1].status is ReconcileStatus.APPLIED, outcomes[-1].errors
    assert failures(answers) == []
    done = next(c for c in outcomes[-1].changes if c.id.kind is Kind.WEBSERVICE)
    assert [s["weight"] for s in done.rollout] == [10, 50, 100]
    assert all(s["candidate"]["requests"] >= 15 for s in done.rollout)
    assert stopped_candidate(backend)
    # After the promotion every answer comes from the new version, served by the live replicas.
    assert answers[-5:] and all(a.version == "candidate" for a in answers[-5:])
    svc = backend.read().get(Kind.WEBSERVICE, SERVICE)
    assert svc is not None and "rollout" not in svc.details
    recorded = [c for c in history_changes(recorder) if c.get("rollout")]
    assert recorded and [s["weight"] for s in recorded[0]["rollout"]] == [10, 50, 100]


def test_a_version_that_errors_on_a_share_of_requests_is_rolled_back_at_the_first_step(
    backend: LocalBackend, repo: Repo, tmp_path: Path
) -> None:
    recorder, load = _start(backend, repo, tmp_path)
    new_version(repo, "3", errorEvery=3)
    try:
        outcomes = drive(repo, backend, recorder, "r2")
    finally:
        answers = load.finish()

    last = outcomes[-1]
    assert last.status is ReconcileStatus.FAILED
    change = next(c for c in last.changes if c.id.kind is Kind.WEBSERVICE)
    assert change.status is ChangeStatus.FAILED and change.reason == "AnalysisFailed"
    assert change.error is not None and change.error.startswith("analysis failed at step 1 (10 %): error rate ")
    assert failures(answers) == []
    share, candidate, total = candidate_share(answers)
    assert candidate > 0 and share <= 0.10 + TOLERANCE, (candidate, total)
    assert stopped_candidate(backend)
    # Stalled on that input: the next pass does not try again.
    again = drive(repo, backend, recorder, "r2")
    assert again[-1].status is ReconcileStatus.NO_CHANGES
    status = recorder.resource_status()
    stalled = next(s for rid, s in status.items() if rid.kind is Kind.WEBSERVICE).condition("Stalled")
    assert stalled is not None and stalled.status and "error rate" in stalled.message
