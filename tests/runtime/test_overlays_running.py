"""``amlops run --path prod``: a controller per environment deploys the base as its overlay renders it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.structs.manifests import Kind

from .conftest import SCORE_PY, Controller, GitRepo, doc, eventually, http, npy, stop_local_services

BASE_SERVICE = {
    "cluster": "cpu",
    "models": ["scaler"],
    "sourceDirectory": "../src",
    "entryScript": "score.py",
    "replicas": 1,
    "resources": {"cpu": 0.1, "memoryGb": 0.5, "gpu": 0},
    "maxQueueWaitMs": 10000,
}


def overlay(prefix: str, replicas: int) -> str:
    return (f"resources: [../base]\nnamePrefix: {prefix}\ncommonLabels: {{env: {prefix.rstrip('-')}}}\npatches:\n"
            f"  - target: {{kind: Webservice, name: svc}}\n"
            f"    patch: '[{{\"op\": \"replace\", \"path\": \"/spec/replicas\", \"value\": {replicas}}}]'\n")


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    stop_local_services(path)


def test_a_controller_per_environment_serves_the_renamed_service_and_follows_only_its_folder(
    tmp_path: Path, state_dir: Path, controllers: Callable[..., Controller]
) -> None:
    repo = GitRepo(tmp_path / "repo")
    repo.write("base/workspace.yaml", doc("Workspace", "local", {"backend": "local"}))
    repo.write("base/cluster.yaml", doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 1, "gpusPerNode": 0}))
    repo.write("base/models/scaler/scale.npy", npy(3.0))
    repo.write("base/models/scaler.yaml", doc("Model", "scaler", {"path": "scaler"}))
    repo.write("base/src/score.py", SCORE_PY)
    repo.write("base/services/svc.yaml", doc("Webservice", "svc", BASE_SERVICE))
    repo.write("base/kustomization.yaml", "resources: [workspace.yaml, cluster.yaml, models, services]\n")
    repo.write("staging/kustomization.yaml", overlay("staging-", 1))
    repo.write("prod/kustomization.yaml", overlay("prod-", 2))
    first = repo.commit("base, staging, prod")

    c = controllers(["--repo", str(repo.root), "--path", "prod", "--state-dir", str(state_dir), "--interval", "1"],
                    tmp_path / "controller.log")
    c.wait_ready(timeout=120)
    eventually(lambda: c.status()["lastAppliedRevision"] == first, 180, "prod applied")

    from controller.backends.local import LocalBackend

    backend = LocalBackend(state_dir, "amlops")
    try:
        actual = backend.read()
        assert sorted(str(r.id) for r in actual) == ["AksCluster/prod-cpu", "Model/prod-scaler",
                                                     "Webservice/prod-svc", "Workspace/prod-local"]
        service = actual.get(Kind.WEBSERVICE, "prod-svc")
        assert service is not None and service.spec["replicas"] == 2
        key, _ = backend.get_keys("prod-svc")
        code, body = http("POST", backend.scoring_uri("prod-svc"), json.dumps({"data": [1, 2]}).encode(),
                          {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, timeout=30)
        assert (code, json.loads(body)) == (200, [3.0, 6.0])

        # A change to staging's folder is not prod's business: reconciled, nothing changes.
        repo.write("staging/kustomization.yaml", overlay("staging-", 3))
        staged = repo.commit("staging: 3 replicas")
        status = eventually(lambda: (s := c.status())["lastReconcile"]["revision"] == staged and s, 60, "staging commit seen")
        assert status["lastReconcile"]["status"] == "no-changes"

        # Promotion: a commit to prod's folder.
        repo.write("prod/kustomization.yaml", overlay("prod-", 1))
        promoted = repo.commit("prod: 1 replica")
        eventually(lambda: c.status()["lastAppliedRevision"] == promoted, 120, "promotion applied")
        service = backend.read().get(Kind.WEBSERVICE, "prod-svc")
        assert service is not None and service.spec["replicas"] == 1
        names = {r["name"] for r in c.status()["resources"]}
        assert "prod-svc" in names and "svc" not in names and "staging-svc" not in names
    finally:
        backend.close()
    assert c.stop() == 0
