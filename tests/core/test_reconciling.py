"""The reconcile pipeline: idempotence, refusal of invalid commits, and what gets recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.core.executing import RetryPolicy
from controller.core.reconciling import ReconcileOptions, reconcile
from controller.core.recording import Recorder
from controller.structs.errors import PermanentError, TransientError
from controller.structs.manifests import Kind, WorkspaceManifest
from controller.structs.plans import Action
from controller.structs.results import ExecutionEvent, ExecutionPhase, ReconcileStatus
from controller.structs.states import ResourceId

from .memories import MemoryBackend
from .repos import Repo


def _backend_for(backend: MemoryBackend):  # type: ignore[no-untyped-def]
    def backend_for(workspace: WorkspaceManifest | None) -> MemoryBackend:
        return backend

    return backend_for


def test_reconciling_twice_writes_nothing_the_second_time(repo: Repo, backend: MemoryBackend, tmp_path: Path) -> None:
    repo.standard()
    recorder = Recorder(tmp_path / "state")
    first = reconcile(repo.root, "manifests", "rev1", _backend_for(backend), recorder)
    assert first.status is ReconcileStatus.APPLIED, first.errors
    writes = len(backend.writes)
    assert writes == 5
    second = reconcile(repo.root, "manifests", "rev1", _backend_for(backend), recorder)
    assert second.status is ReconcileStatus.NO_CHANGES
    assert len(backend.writes) == writes
    assert set(first.durations) == {"load", "read", "plan", "apply"}
    assert recorder.last_good_revision() == "rev1"
    status = recorder.resource_status()[ResourceId(Kind.WEBSERVICE, "svc-a")]
    assert status.condition("Ready") is not None and status.condition("Ready").status  # type: ignore[union-attr]
    assert status.last_applied_revision == "rev1"


def test_an_invalid_commit_applies_nothing_and_records_every_error_with_file_and_line(
    repo: Repo, backend: MemoryBackend, tmp_path: Path
) -> None:
    repo.standard()
    recorder = Recorder(tmp_path / "state")
    reconcile(repo.root, "manifests", "good", _backend_for(backend), recorder)
    writes = list(backend.writes)
    path = repo.root / "manifests/services/svc-a.yaml"
    path.write_text(path.read_text().replace("replicas: 2", "replicas: -1"))
    repo.write("manifests/model.yaml", (repo.root / "manifests/model.yaml").read_text().replace("path: linear", "path: missing"))
    outcome = reconcile(repo.root, "manifests", "bad", _backend_for(backend), recorder)
    assert outcome.status is ReconcileStatus.INVALID and outcome.plan is None
    assert backend.writes == writes
    assert any(e.startswith("manifests/services/svc-a.yaml:12:") and "spec.replicas" in e for e in outcome.errors), outcome.errors
    assert any(e.startswith("manifests/model.yaml:6:") and "spec.path" in e for e in outcome.errors), outcome.errors
    latest = recorder.history(1)[0]
    assert latest.status == "invalid" and latest.revision == "bad" and latest.errors == list(outcome.errors)
    assert recorder.last_good_revision() == "good"
    source = recorder.source_status()
    assert source.last_attempted_revision == "bad" and source.last_applied_revision == "good"


def test_detect_only_plans_without_writing(repo: Repo, backend: MemoryBackend, tmp_path: Path) -> None:
    repo.standard()
    outcome = reconcile(repo.root, "manifests", "r", _backend_for(backend), Recorder(tmp_path / "s"),
                        ReconcileOptions(detect_only=True))
    assert outcome.status is ReconcileStatus.DETECTED and outcome.plan is not None and outcome.plan.has_changes
    assert backend.writes == []


def test_a_held_plan_is_not_applied_until_allowed(repo: Repo, backend: MemoryBackend, tmp_path: Path) -> None:
    repo.standard(services=("svc-a", "svc-b"))
    recorder = Recorder(tmp_path / "s")
    reconcile(repo.root, "manifests", "r1", _backend_for(backend), recorder)
    for name in ("services/svc-a.yaml", "services/svc-b.yaml", "model.yaml", "environment.yaml"):
        repo.remove(f"manifests/{name}")
    writes = len(backend.writes)
    held = reconcile(repo.root, "manifests", "r2", _backend_for(backend), recorder)
    assert held.status is ReconcileStatus.HELD and len(backend.writes) == writes
    allowed = reconcile(repo.root, "manifests", "r2", _backend_for(backend), recorder, ReconcileOptions(allow_mass_delete=True))
    assert allowed.status is ReconcileStatus.APPLIED
    assert ResourceId(Kind.WEBSERVICE, "svc-a") not in backend.resources


def test_a_failed_change_is_recorded_as_stalled_with_its_reason(repo: Repo, backend: MemoryBackend, tmp_path: Path) -> None:
    repo.standard()
    backend.failures[ResourceId(Kind.WEBSERVICE, "svc-a")] = [PermanentError("0/3 nodes have a free GPU", reason="Unschedulable")]
    recorder = Recorder(tmp_path / "s")
    outcome = reconcile(repo.root, "manifests", "r1", _backend_for(backend), recorder)
    assert outcome.status is ReconcileStatus.FAILED
    assert outcome.errors == ("Webservice/svc-a: 0/3 nodes have a free GPU",)
    status = recorder.resource_status()[ResourceId(Kind.WEBSERVICE, "svc-a")]
    assert status.condition("Stalled").reason == "Unschedulable"  # type: ignore[union-attr]
    assert status.last_applied_revision is None and status.last_attempted_revision == "r1"
    assert recorder.history(5)[0].changes[-1]["reason"] == "Unschedulable"

    # Permanent means "will not pass until the input changes": the same input is not retried,
    # and the pass is degraded, never "no changes": the revision is not applied.
    writes = len(backend.writes)
    again = reconcile(repo.root, "manifests", "r1", _backend_for(backend), recorder)
    assert again.status is ReconcileStatus.DEGRADED and len(backend.writes) == writes
    assert again.errors == ("Webservice/svc-a: stalled: Unschedulable: 0/3 nodes have a free GPU "
                            "(not retried until the manifest or its files change)",)
    assert recorder.last_good_revision() is None
    held_back = next(c for c in again.plan.changes if c.id.name == "svc-a")  # type: ignore[union-attr]
    assert held_back.reason.startswith("stalled: Unschedulable: 0/3 nodes have a free GPU")
    assert recorder.resource_status()[ResourceId(Kind.WEBSERVICE, "svc-a")].condition("Stalled") is not None

    # Changing the manifest changes its digest: the resource is tried again.
    repo.standard(replicas=1)
    retried = reconcile(repo.root, "manifests", "r2", _backend_for(backend), recorder)
    assert retried.status is ReconcileStatus.APPLIED
    assert recorder.resource_status()[ResourceId(Kind.WEBSERVICE, "svc-a")].condition("Stalled") is None
    assert recorder.last_good_revision() == "r2"


def test_two_recorders_on_one_file_see_each_others_writes(repo: Repo, backend: MemoryBackend, tmp_path: Path) -> None:
    repo.standard()
    writer, reader = Recorder(tmp_path / "s"), Recorder(tmp_path / "s")
    reconcile(repo.root, "manifests", "r1", _backend_for(backend), writer)
    assert [h.revision for h in reader.history(10)] == ["r1"]
    assert (tmp_path / "s" / "history.sqlite").exists()


def test_throttled_reads_are_retried_before_the_pass_gives_up(repo: Repo, backend: MemoryBackend, tmp_path: Path) -> None:
    repo.standard()
    backend.read_failures = [TransientError("429 Too Many Requests", retry_after=0.01), TransientError("503")]
    fast = ReconcileOptions(retry=RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02))
    outcome = reconcile(repo.root, "manifests", "r1", _backend_for(backend), Recorder(tmp_path / "s"), fast)
    assert outcome.status is ReconcileStatus.APPLIED and not backend.read_failures

    backend.read_failures = [TransientError("503")] * 3
    failed = reconcile(repo.root, "manifests", "r1", _backend_for(backend), Recorder(tmp_path / "s"), fast)
    assert failed.status is ReconcileStatus.FAILED
    assert failed.errors == ("reading actual state: 503",)


def test_history_keeps_only_the_most_recent_reconciles(repo: Repo, backend: MemoryBackend, tmp_path: Path) -> None:
    repo.standard()
    recorder = Recorder(tmp_path / "s", keep=3)
    for i in range(5):
        reconcile(repo.root, "manifests", f"r{i}", _backend_for(backend), recorder)
    assert [h.revision for h in recorder.history(10)] == ["r4", "r3", "r2"]


def test_an_unchanged_pass_reuses_its_plan_and_a_changed_actual_state_replans(
    repo: Repo, backend: MemoryBackend, tmp_path: Path
) -> None:
    from controller.core.reconciling import PlanMemo

    repo.standard()
    recorder = Recorder(tmp_path / "s")
    options = ReconcileOptions(reuse_desired=True, plan_memo=PlanMemo())
    reconcile(repo.root, "manifests", "r1", _backend_for(backend), recorder, options)
    quiet = reconcile(repo.root, "manifests", "r1", _backend_for(backend), recorder, options)
    assert quiet.status is ReconcileStatus.NO_CHANGES
    memo = options.plan_memo
    assert memo is not None and memo.plan is quiet.plan  # made on this pass, from the applied state
    again = reconcile(repo.root, "manifests", "r1", _backend_for(backend), recorder, options)
    assert again.plan is quiet.plan  # same desired object, equal actual state: not planned anew

    # Drift behind amlops' back changes actual state: the next pass plans and heals it.
    del backend.resources[ResourceId(Kind.WEBSERVICE, "svc-a")]
    healed = reconcile(repo.root, "manifests", "r1", _backend_for(backend), recorder, options)
    assert healed.status is ReconcileStatus.APPLIED and healed.plan is not quiet.plan


def test_a_no_op_pass_rewrites_no_status_rows_and_history_keeps_only_real_changes(
    repo: Repo, backend: MemoryBackend, tmp_path: Path
) -> None:
    repo.standard()
    recorder = Recorder(tmp_path / "s")
    reconcile(repo.root, "manifests", "r1", _backend_for(backend), recorder)
    reconcile(repo.root, "manifests", "r1", _backend_for(backend), recorder)
    before = {rid: s.updated for rid, s in recorder.resource_status().items()}
    reconcile(repo.root, "manifests", "r1", _backend_for(backend), recorder)
    assert {rid: s.updated for rid, s in recorder.resource_status().items()} == before
    applied, quiet = recorder.history(3)[2], recorder.history(3)[0]
    assert applied.plan is not None and len(applied.plan["changes"]) == 5 and applied.plan["unchanged"] == 0
    assert quiet.plan is not None and quiet.plan["changes"] == [] and quiet.plan["unchanged"] == 5


class _Killed(BaseException):
    """The process dying: nothing after it runs (like SIGKILL, it is no ``Exception`` to handle)."""


def test_a_pass_killed_mid_apply_is_closed_as_interrupted_and_the_next_pass_applies_again_to_learn_the_outcome(
    repo: Repo, backend: MemoryBackend, tmp_path: Path
) -> None:
    repo.standard()
    reconcile(repo.root, "manifests", "r1", _backend_for(backend), Recorder(tmp_path / "s"))
    repo.standard(replicas=1)

    def die_after_the_write(event: ExecutionEvent) -> None:
        if event.id.name == "svc-a" and event.phase is ExecutionPhase.SUCCEEDED:
            raise _Killed()

    with pytest.raises(_Killed):
        reconcile(repo.root, "manifests", "r2", _backend_for(backend), Recorder(tmp_path / "s"),
                  ReconcileOptions(progress=die_after_the_write))
    svc = ResourceId(Kind.WEBSERVICE, "svc-a")
    assert backend.resources[svc].spec["replicas"] == 1  # the backend has the new input...
    restarted = Recorder(tmp_path / "s")
    assert restarted.history(1)[0].status == "applying"  # ... and nobody knows how it went
    assert restarted.resource_status()[svc].interrupted_on(backend.resources[svc].digest or "")

    assert restarted.close_interrupted() == 1
    interrupted = restarted.history(1)[0]
    assert (interrupted.revision, interrupted.status) == ("r2", "failed") and "interrupted" in interrupted.errors[0]
    assert restarted.last_good_revision() == "r1"

    writes = len(backend.writes)
    resumed = reconcile(repo.root, "manifests", "r2", _backend_for(backend), restarted)
    assert resumed.status is ReconcileStatus.APPLIED, resumed.errors
    change = next(c for c in resumed.plan.changes if c.id == svc)  # type: ignore[union-attr]
    assert change.action is Action.UPDATE and change.reason.startswith("resume: the apply of revision r2")
    assert len(backend.writes) == writes + 1
    assert restarted.last_good_revision() == "r2"
    assert restarted.resource_status()[svc].last_applied_revision == "r2"
    again = reconcile(repo.root, "manifests", "r2", _backend_for(backend), restarted)
    assert again.status is ReconcileStatus.NO_CHANGES
