"""End to end: ``amlops run`` following a Git repo deploys, scales, survives a broken commit and is restored.

A real controller process, the real local backend and a real numpy scoring service; every
process is stopped in the finalizer, whatever the test's outcome.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.structs.manifests import Kind

from .conftest import SCORE_PY, Controller, GitRepo, doc, eventually, http, npy, stop_local_services

SERVICE = "numpy-svc"


def service_spec(replicas: int) -> dict[str, object]:
    return {
        "cluster": "cpu",
        "models": ["scaler"],
        "sourceDirectory": "../src",
        "entryScript": "score.py",
        "replicas": replicas,
        "resources": {"cpu": 0.1, "memoryGb": 0.5, "gpu": 0},
        "auth": "key",
        "maxQueueWaitMs": 10000,  # Azure's 500 ms default is tight on a loaded 2-core machine
    }




@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    stop_local_services(path)


def test_a_repo_is_deployed_scaled_kept_through_a_broken_commit_and_restored_by_revert(
    tmp_path: Path, state_dir: Path, controllers: Callable[..., Controller]
) -> None:
    repo = GitRepo(tmp_path / "repo")
    repo.write("manifests/workspace.yaml", doc("Workspace", "local", {"backend": "local"}))
    repo.write(
        "manifests/clusters/cpu.yaml",
        doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 1, "gpusPerNode": 0}),
    )
    repo.write("manifests/models/scaler/scale.npy", npy(3.0))
    repo.write("manifests/models/scaler.yaml", doc("Model", "scaler", {"path": "scaler"}))
    repo.write("manifests/src/score.py", SCORE_PY)
    repo.write("manifests/services/svc.yaml", doc("Webservice", SERVICE, service_spec(1)))
    first = repo.commit("deploy")

    c = controllers(
        ["--repo", str(repo.root), "--path", "manifests", "--state-dir", str(state_dir), "--interval", "1"],
        tmp_path / "controller.log",
    )
    c.wait_ready(timeout=120)
    status = eventually(lambda: (s := c.status())["lastAppliedRevision"] == first and s, 120, "first deploy")

    from controller.backends.local import LocalBackend

    backend = LocalBackend(state_dir, "amlops")
    uri = backend.scoring_uri(SERVICE)
    key, _ = backend.get_keys(SERVICE)
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def score() -> tuple[int, object]:
        code, body = http("POST", uri, json.dumps({"data": [1, 2]}).encode(), auth, timeout=30)
        return code, json.loads(body) if code == 200 else body

    assert score() == (200, [3.0, 6.0])
    ready = {r["name"]: r for r in status["resources"]}
    assert any(cond["type"] == "Ready" and cond["status"] for cond in ready[SERVICE]["conditions"])

    def replicas() -> int:
        svc = backend.read().get(Kind.WEBSERVICE, SERVICE)
        return int(svc.spec["replicas"]) if svc is not None else -1

    # Scale: a new commit with replicas 2 is applied on the next interval.
    repo.write("manifests/services/svc.yaml", doc("Webservice", SERVICE, service_spec(2)))
    scaled = repo.commit("scale to 2")
    eventually(lambda: c.status()["lastAppliedRevision"] == scaled, 120, "scaled revision applied")
    assert replicas() == 2
    assert score()[0] == 200

    # Broken YAML: nothing is torn down, the error names file and line.
    repo.write(
        "manifests/services/svc.yaml", "apiVersion: amlops.dev/v1\nkind: Webservice\nmetadata: {name: [\n"
    )
    broken = repo.commit("oops")
    status = eventually(
        lambda: (s := c.status())["lastReconcile"]["revision"] == broken and s, 60, "broken commit"
    )
    assert status["lastReconcile"]["status"] == "invalid"
    assert any(e.startswith("manifests/services/svc.yaml:") for e in status["lastReconcile"]["errors"])
    assert status["lastAppliedRevision"] == scaled
    assert score() == (200, [3.0, 6.0]) and replicas() == 2

    # Revert: back to the scaled state, applied again.
    repo.git("revert", "--no-edit", "HEAD")
    restored = repo.head()
    eventually(lambda: c.status()["lastAppliedRevision"] == restored, 120, "revert applied")
    assert score() == (200, [3.0, 6.0]) and replicas() == 2
    metrics = c.get("/metrics")[1]
    assert f'amlops_last_applied_revision_info{{revision="{restored}"}} 1.0' in metrics
    assert 'amlops_changes_total{action="update",outcome="succeeded"}' in metrics
    backend.close()
    assert c.stop() == 0
