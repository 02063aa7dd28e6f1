"""Reporting: amlops status and the status page describe a resource in the same words."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from controller.core.reconciling import reconcile
from controller.core.recording import Recorder
from controller.core.reporting import outcome_summary, published_resources, status_report
from controller.structs.manifests import Kind, WorkspaceManifest
from controller.structs.results import ReconcileStatus
from controller.structs.states import Condition, ResourceId

from .memories import MemoryBackend
from .repos import Repo

SERVICE = ResourceId(Kind.WEBSERVICE, "svc-a")


def _applied(repo: Repo, backend: MemoryBackend, state: Path) -> Recorder:
    repo.standard()
    recorder = Recorder(state)

    def backend_for(workspace: WorkspaceManifest | None) -> MemoryBackend:
        return backend

    outcome = reconcile(repo.root, "manifests", "rev1", backend_for, recorder)
    assert outcome.status is ReconcileStatus.APPLIED, outcome.errors
    assert outcome_summary(outcome) == "+5 ~0 -/+0 -0"
    return recorder


def _words(backend: MemoryBackend, recorder: Recorder, last: dict[str, object]) -> tuple[str, str]:
    cli = {r["name"]: r["status"] for r in status_report([backend], recorder, "amlops").rows}
    page = {r["name"]: r["status"] for r in published_resources(recorder.resource_status(), backend.read().resources, last)}
    return cli[SERVICE.name], page[SERVICE.name]


def test_a_service_that_is_not_ready_reads_the_same_in_amlops_status_and_on_the_status_page(
    repo: Repo, backend: MemoryBackend, tmp_path: Path
) -> None:
    recorder = _applied(repo, backend, tmp_path / "state")
    live = backend.resources[SERVICE]
    backend.resources[SERVICE] = dataclasses.replace(
        live, conditions=(Condition("Ready", False, "ReplicasCrashing", "replica 0 exited 1"),))
    last = {"status": "applied", "revision": "rev1", "errors": []}
    assert _words(backend, recorder, last) == ("NotReady (ReplicasCrashing)", "NotReady (ReplicasCrashing)")

    backend.resources[SERVICE] = dataclasses.replace(
        live, conditions=(Condition("Ready", True, "Running"), Condition("Stalled", True, "Unschedulable", "no GPU")))
    assert _words(backend, recorder, last) == ("Stalled (Unschedulable)", "Stalled (Unschedulable)")


def test_after_an_invalid_revision_both_say_what_runs_is_out_of_sync(
    repo: Repo, backend: MemoryBackend, tmp_path: Path
) -> None:
    recorder = _applied(repo, backend, tmp_path / "state")
    backend.resources[SERVICE] = dataclasses.replace(backend.resources[SERVICE],
                                                     conditions=(Condition("Ready", True, "Running"),))
    repo.write("manifests/services/svc-a.yaml", "kind: Webservice\nmetadata: {name: svc-a}\nspec: {replicas: -1}\n")
    invalid = reconcile(repo.root, "manifests", "rev2", lambda _: backend, recorder)
    assert invalid.status is ReconcileStatus.INVALID
    last = {"status": "invalid", "revision": "rev2", "errors": list(invalid.errors)}
    assert _words(backend, recorder, last) == ("Ready, out of sync", "Ready, out of sync")
