"""Plans across Azure ML API generations: a service moving from v1 to v2 is shown as a migration."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from controller.cli import main

from .repos import Repo

AKS = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/aks1"


def _workspace(api: str) -> str:
    return ("apiVersion: amlops.dev/v1\nkind: Workspace\nmetadata:\n  name: ws\nspec:\n  backend: azureml\n"
            f"  subscriptionId: s\n  resourceGroup: rg\n  api: {api}\n")


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
                   check=True, capture_output=True)


def _v1_repo(root: Path) -> Repo:
    repo = Repo(root).standard()
    repo.write("manifests/workspace.yaml", _workspace("v1"))
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "v1")
    return repo


def _move_to_v2(repo: Repo) -> None:
    repo.write("manifests/workspace.yaml", _workspace("v2"))
    cluster = repo.root / "manifests/cluster.yaml"
    cluster.write_text(cluster.read_text() + f"  attach:\n    resourceId: {AKS}\n    namespace: amlops\n")
    _git(repo.root, "add", "-A")
    _git(repo.root, "commit", "-q", "-m", "v2")


def test_switching_the_workspace_to_v2_plans_each_service_as_a_migration_with_v2s_other_defaults(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = _v1_repo(tmp_path / "repo")
    _move_to_v2(repo)
    code = main(["plan", "--base", "HEAD~1", "--head", "HEAD", "--repo", str(repo.root), "--output", "json"])
    assert code == 2
    doc = json.loads(capsys.readouterr().out)
    (service,) = [c for c in doc["changes"] if c["kind"] == "Webservice"]
    assert service["action"] == "update"
    (cluster,) = [c for c in doc["changes"] if c["kind"] == "AksCluster"]
    assert cluster["action"] == "create" and "KubernetesCompute attachment" in cluster["reason"]
    assert service["reason"].startswith("migrate: v1 AKS web service → v2 online endpoint")
    assert "delete the v1 service" in service["reason"]
    diffs = {d["path"]: (d["before"], d["after"]) for d in service["diffs"]}
    assert diffs["spec.api"] == ("v1", "v2")
    assert diffs["v2.request_settings.request_timeout_ms"] == ("5000 (v2 default)", 60000)
    assert diffs["v2.liveness_probe.initial_delay"] == ("10 (v2 default)", 310)
    assert diffs["v2.liveness_probe.failure_threshold"] == ("30 (v2 default)", 3)
    assert diffs["v2.readiness_probe.initial_delay"] == ("10 (v2 default)", 310)  # v1 probes readiness alike
    assert "v2.scale_settings.max_instances" not in diffs  # fixed replicas: no autoscaler to carry


def test_no_migration_is_planned_while_the_api_stays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = _v1_repo(tmp_path / "repo")
    code = main(["plan", "--base", "HEAD", "--head", "HEAD", "--repo", str(repo.root), "--output", "json"])
    assert code == 0
    assert "migrate" not in capsys.readouterr().out


def test_an_autoscaled_service_carries_v1s_autoscale_maximum(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = _v1_repo(tmp_path / "repo")
    service = repo.root / "manifests/services/svc-a.yaml"
    service.write_text("\n".join(line for line in service.read_text().splitlines() if "replicas" not in line) + "\n")
    _git(repo.root, "add", "-A")
    _git(repo.root, "commit", "-q", "-m", "autoscale")
    _move_to_v2(repo)
    main(["plan", "--base", "HEAD~1", "--head", "HEAD", "--repo", str(repo.root), "--output", "json"])
    doc = json.loads(capsys.readouterr().out)
    (service_change,) = [c for c in doc["changes"] if c["kind"] == "Webservice"]
    diffs = {d["path"]: (d["before"], d["after"]) for d in service_change["diffs"]}
    assert diffs["v2.scale_settings.max_instances"] == ("1 (v2 default)", 10)
