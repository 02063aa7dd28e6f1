"""``/api/status`` of a running controller says which replica holds which GPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.backends.local.gpus import INVENTORY_ENV, Gpu, write_inventory

from .conftest import SCORE_PY, Controller, GitRepo, doc, eventually, npy, stop_local_services


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    stop_local_services(path)


def test_api_status_shows_each_replicas_gpu(
    tmp_path: Path, state_dir: Path, controllers: Callable[..., Controller]
) -> None:
    gpus = [Gpu(i, f"GPU-status-{i}", "Fake H200") for i in range(2)]
    inventory = write_inventory(tmp_path / "gpus.json", gpus)
    repo = GitRepo(tmp_path / "repo")
    repo.write("manifests/workspace.yaml", doc("Workspace", "local", {"backend": "local"}))
    repo.write("manifests/clusters/gpu.yaml", doc("AksCluster", "gpu", {"vmSize": "Standard_NC6", "agentCount": 2}))
    repo.write("manifests/models/scaler/scale.npy", npy(3.0))
    repo.write("manifests/models/scaler.yaml", doc("Model", "scaler", {"path": "scaler"}))
    repo.write("manifests/src/score.py", SCORE_PY)
    repo.write("manifests/services/svc.yaml", doc("Webservice", "gpu-svc", {
        "cluster": "gpu", "models": ["scaler"], "sourceDirectory": "../src", "entryScript": "score.py",
        "replicas": 2, "resources": {"cpu": 0.1, "memoryGb": 0.5, "gpu": 1}, "auth": "none", "maxQueueWaitMs": 10000}))
    repo.commit("two replicas, one GPU each")
    c = controllers(["--repo", str(repo.root), "--path", "manifests", "--state-dir", str(state_dir), "--interval", "1"],
                    tmp_path / "controller.log", env={INVENTORY_ENV: str(inventory)})
    c.wait_ready(timeout=120)

    def placement() -> list[dict[str, Any]] | None:
        for resource in c.status().get("resources") or []:
            if resource.get("name") == "gpu-svc":
                placed = (resource.get("details") or {}).get("placement") or []
                return placed if len(placed) == 2 else None
        return None

    placed = eventually(placement, 90, "two replicas placed")
    held = sorted(g["uuid"] for replica in placed for g in replica["gpus"])
    assert held == ["GPU-status-0", "GPU-status-1"]
    assert sorted(r["slot"] for r in placed) == [0, 1] and all(r["gpus"][0]["name"] == "Fake H200" for r in placed)
