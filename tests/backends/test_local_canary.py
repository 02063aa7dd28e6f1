"""Canary rollouts on the local backend, end to end: real replicas, real split, bounded loopback load.

Version 1 answers 2×; a new version answers 3× (or errors, or is slow, or cannot init). The
load's clients classify every answer by the version that gave it and count every exception.
Tolerance for the bad version's share: its step's weight plus 5 points (the split itself is
exact per live replica; the points cover answers in flight while the weight changes).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from controller import cli
from controller.backends.local import LocalBackend
from controller.core.recording import Recorder
from controller.structs.manifests import Kind
from controller.structs.results import ChangeStatus, ReconcileStatus

from .canaries import (
    CANARY,
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
    wait_for,
)
from .conftest import Repo, apply_all

TOLERANCE = 0.05


def _start(backend: LocalBackend, repo: Repo, tmp_path: Path) -> tuple[Recorder, Load]:
    canary_repo(repo)
    return _start_with(backend, repo, tmp_path)


def _start_with(backend: LocalBackend, repo: Repo, tmp_path: Path) -> tuple[Recorder, Load]:
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
    # Many passes, one history entry: the rollout's, updated in place until it ended.
    assert len(outcomes) > 5 and [e.status for e in recorder.history(10)] == ["applied"]
    # Done means done: the next pass finds nothing to change (the rollout's own fields included).
    assert drive(repo, backend, recorder, "r2")[-1].status is ReconcileStatus.NO_CHANGES


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
    # Stalled on that input: the next pass does not try again, and the revision is not in place.
    again = drive(repo, backend, recorder, "r2")
    assert again[-1].status is ReconcileStatus.DEGRADED and not again[-1].changes
    status = recorder.resource_status()
    stalled = next(s for rid, s in status.items() if rid.kind is Kind.WEBSERVICE).condition("Stalled")
    assert stalled is not None and stalled.status and "error rate" in stalled.message


def test_a_version_five_times_slower_is_rolled_back_on_its_p99_against_the_live_version(
    backend: LocalBackend, repo: Repo, tmp_path: Path
) -> None:
    recorder, load = _start(backend, repo, tmp_path)
    new_version(repo, "3", sleepMs=100)  # the live version takes 20 ms
    try:
        outcomes = drive(repo, backend, recorder, "r2")
    finally:
        answers = load.finish()

    change = next(c for c in outcomes[-1].changes if c.id.kind is Kind.WEBSERVICE)
    assert change.status is ChangeStatus.FAILED and change.reason == "AnalysisFailed"
    assert change.error is not None and change.error.startswith("analysis failed at step 1 (10 %): p99 ")
    assert "× live p99" in change.error
    assert failures(answers) == []
    share, candidate, total = candidate_share(answers)
    assert candidate > 0 and share <= 0.10 + TOLERANCE, (candidate, total)
    assert stopped_candidate(backend)


def test_a_version_whose_init_fails_is_rolled_back_before_any_request_reaches_it(
    backend: LocalBackend, repo: Repo, tmp_path: Path
) -> None:
    recorder, load = _start(backend, repo, tmp_path)
    new_version(repo, "3", initFails=True)
    try:
        outcomes = drive(repo, backend, recorder, "r2")
    finally:
        answers = load.finish()

    change = next(c for c in outcomes[-1].changes if c.id.kind is Kind.WEBSERVICE)
    assert change.status is ChangeStatus.FAILED and change.reason == "CandidateFailed"
    assert change.rolled_back  # what notifications report as rolled-back rather than failed
    assert change.error is not None and "the model files are corrupt" in change.error
    assert failures(answers) == []
    assert answers and all(a.version == "live" for a in answers)
    assert stopped_candidate(backend)
    svc = backend.read().get(Kind.WEBSERVICE, SERVICE)
    assert svc is not None and svc.condition("Ready").status  # type: ignore[union-attr]


def test_a_person_aborting_mid_rollout_returns_all_traffic_to_the_live_version(
    backend: LocalBackend, repo: Repo, tmp_path: Path, state_dir: Path
) -> None:
    recorder, load = _start(backend, repo, tmp_path)
    new_version(repo, "3")
    aborted: list[float] = []
    shown: list[dict[str, Any]] = []
    flags = ["--state-dir", str(state_dir), "--controller-name", "test-controller", "--path", str(repo.root)]

    def abort_at_second_step(outcome: object) -> None:
        state = backend.rollout_state(SERVICE)
        if not aborted and state is not None and state.step == 1:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert cli.main(["rollout", "status", SERVICE, "--output", "json", *flags]) == 0
                assert cli.main(["rollout", "abort", SERVICE, *flags]) == 0
            shown.append(json.loads(out.getvalue().split("\nabort requested")[0]))
            aborted.append(time.monotonic())

    try:
        outcomes = drive(repo, backend, recorder, "r2", between=abort_at_second_step)
        time.sleep(1.0)  # answers after the rollback: all from the live version
    finally:
        answers = load.finish()

    change = next(c for c in outcomes[-1].changes if c.id.kind is Kind.WEBSERVICE)
    assert change.status is ChangeStatus.FAILED and change.reason == "RolloutAborted"
    assert change.error is not None and "aborted by amlops rollout abort at step 2 (50 %)" in change.error
    assert failures(answers) == []
    finished = outcomes[-1].finished.timestamp()
    assert aborted and any(a.version == "candidate" for a in answers)
    after = [a for a in answers if a.at > time.monotonic() - (time.time() - finished) + 0.5]
    assert after and all(a.version == "live" for a in after)
    assert stopped_candidate(backend)
    status = shown[0]["rollout"]
    assert status["step"] == 2 and status["weight"] == 50 and status["weights"] == [10, 50, 100]
    assert status["passed"][0]["weight"] == 10 and status["passed"][0]["candidate"]["requests"] >= 15
    assert set(status["window"]) == {"seconds", "candidate", "live"}


def test_a_controller_killed_mid_rollout_leaves_a_tracked_split_and_the_next_one_finishes_it(
    backend: LocalBackend, repo: Repo, tmp_path: Path, state_dir: Path
) -> None:
    _recorder, load = _start(backend, repo, tmp_path)
    new_version(repo, "3")
    # The real controller, polling every 60 s: only its requeue-after can carry a rollout on in time.
    argv = [sys.executable, "-m", "controller", "run", "--repo", str(repo.root), "--path", ".", "--state-dir",
            str(state_dir), "--controller-name", "test-controller", "--interval", "60", "--listen", "127.0.0.1:0"]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: (s := backend.rollout_state(SERVICE)) is not None and s.step == 1, timeout=90)
        first.kill()  # SIGKILL in the middle of step 2: no cleanup of any kind
        first.wait(10)
        state = backend.rollout_state(SERVICE)
        assert state is not None and state.weight == 50  # the split in force is the one recorded
        second = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: backend.rollout_state(SERVICE) is None and stopped_candidate(backend), timeout=90)
    finally:
        for controller in (first, second):
            if controller is not None and controller.poll() is None:
                controller.terminate()
                controller.wait(30)
        answers = load.finish()

    passed = [c for c in history_changes(Recorder(state_dir)) if c.get("rollout")]
    assert passed and [s["weight"] for s in passed[0]["rollout"]] == [10, 50, 100]
    assert failures(answers) == []
    assert answers[-5:] and all(a.version == "candidate" for a in answers[-5:])


def test_blue_green_gives_the_new_version_no_traffic_until_checked_then_all_of_it(
    backend: LocalBackend, repo: Repo, tmp_path: Path
) -> None:
    canary_repo(repo, rollout={"strategy": "blueGreen", "sampleRequest": {"body": '{"data": [1]}', "expect": "[3.0]"}})
    apply_all(backend, repo)
    recorder = Recorder(tmp_path / "history")
    load = Load(port_of(backend), backend.get_keys(SERVICE)[0]).start()
    new_version(repo, "3")
    try:
        outcomes = drive(repo, backend, recorder, "r2")
        time.sleep(1.0)
    finally:
        answers = load.finish()

    assert outcomes[-1].status is ReconcileStatus.APPLIED, outcomes[-1].errors
    assert failures(answers) == []
    first = next(a.at for a in answers if a.version == "candidate")
    assert all(a.version == "candidate" for a in answers if a.at > first + 0.5)
    assert stopped_candidate(backend)


def test_a_version_that_answers_the_sample_request_wrongly_never_gets_traffic(
    backend: LocalBackend, repo: Repo, tmp_path: Path
) -> None:
    rollout = {**CANARY, "sampleRequest": {"body": '{"data": [1]}', "compareWithLive": True}}
    canary_repo(repo, rollout=rollout)
    apply_all(backend, repo)
    recorder = Recorder(tmp_path / "history")
    load = Load(port_of(backend), backend.get_keys(SERVICE)[0]).start()
    new_version(repo, "3")  # answers 3× where the live version answers 2×
    try:
        outcomes = drive(repo, backend, recorder, "r2")
    finally:
        answers = load.finish()

    change = next(c for c in outcomes[-1].changes if c.id.kind is Kind.WEBSERVICE)
    assert change.status is ChangeStatus.FAILED and change.reason == "SampleRequestFailed"
    assert change.error == "sample request failed on the candidate version: answered [3.0] where [2.0] was expected"
    assert failures(answers) == [] and all(a.version == "live" for a in answers)
    assert stopped_candidate(backend)



def test_a_canary_on_gpus_gets_gpus_of_its_own_beside_the_live_replicas(
    repo: Repo, tmp_path: Path, state_dir: Path
) -> None:
    from controller.backends.local.gpus import Gpu
    from controller.backends.local.layouts import candidate_of

    backend = LocalBackend(state_dir, "test-controller", ready_timeout=90,
                           gpus=[Gpu(i, f"GPU-{i}", "Tesla T4") for i in range(4)])
    repo.write("clusters/gpu.yaml", json.dumps({"apiVersion": "amlops.dev/v1", "kind": "AksCluster",
                                                "metadata": {"name": "aks-gpu"},
                                                "spec": {"vmSize": "Standard_NC6", "agentCount": 4}}))
    canary_repo(repo, replicas=2)
    repo.service(replicas=2, gpu=1, rollout=CANARY, maxConcurrentRequestsPerReplica=4)
    recorder, load = _start_with(backend, repo, tmp_path)
    new_version(repo, "3")
    seen: list[tuple[set[str], set[str]]] = []

    def gpus_in_use(outcome: object) -> None:
        with backend.store.snapshot() as conn:
            live = {g for r in backend.store.replicas(conn, SERVICE) for g in r.gpus}
            candidate = {g for r in backend.store.replicas(conn, candidate_of(SERVICE)) for g in r.gpus}
        if candidate:
            seen.append((live, candidate))

    try:
        outcomes = drive(repo, backend, recorder, "r2", between=gpus_in_use)
    finally:
        load.finish()
        backend.close()

    assert outcomes[-1].status is ReconcileStatus.APPLIED, outcomes[-1].errors
    assert seen and all(len(c) == 2 and not live & c for live, c in seen)


def test_the_promote_annotation_skips_the_remaining_steps(backend: LocalBackend, repo: Repo, tmp_path: Path) -> None:
    slow_steps = {**CANARY, "steps": [{"weight": 10, "pauseSeconds": 600}, {"weight": 100, "pauseSeconds": 600}]}
    canary_repo(repo, rollout=slow_steps)
    recorder, load = _start_with(backend, repo, tmp_path)
    new_version(repo, "3")
    text = (repo.root / f"services/{SERVICE}.yaml").read_text()
    document = json.loads(text)
    document["metadata"]["annotations"] = {"amlops.dev/rollout": "promote"}
    repo.write(f"services/{SERVICE}.yaml", json.dumps(document))
    try:
        outcomes = drive(repo, backend, recorder, "r2", deadline_s=90)
    finally:
        answers = load.finish()

    assert outcomes[-1].status is ReconcileStatus.APPLIED, outcomes[-1].errors
    assert failures(answers) == []
    assert answers[-5:] and all(a.version == "candidate" for a in answers[-5:])
    assert stopped_candidate(backend)
