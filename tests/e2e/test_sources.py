"""End to end: two sources under one controller name on one state dir never prune or overwrite each other.

Each source (repo + branch + path) has its own inventory: what it applied, recorded in the
ownership tags. A controller prunes only its own inventory; what another source applied with other
content is a conflict it reports (a condition and a plan line), never takes over.
"""

from __future__ import annotations

import signal
from typing import Any

from runtime.conftest import Controller, GitRepo, eventually

from .conftest import SCORE_PY, SERVICE, World, manifest, npy, service_spec


def _second_repo(world: World) -> GitRepo:
    """Another repo: the same workspace and cluster, a model named like the first repo's with other
    content, and a service of its own on a model of its own."""
    other = GitRepo(world.tmp / "other")
    other.write("manifests/workspace.yaml", manifest("Workspace", "local", {"backend": "local"}))
    other.write("manifests/clusters/cpu.yaml",
                manifest("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 1, "gpusPerNode": 0}))
    other.write("manifests/models/scaler/scale.npy", npy(7.0))
    other.write("manifests/models/scaler.yaml", manifest("Model", "scaler", {"path": "scaler"}))
    other.write("manifests/models/doubler/scale.npy", npy(2.0))
    other.write("manifests/models/doubler.yaml", manifest("Model", "doubler", {"path": "doubler"}))
    other.write("manifests/src/score.py", SCORE_PY)
    other.write("manifests/services/other.yaml", manifest("Webservice", "other-svc", service_spec(1, model="doubler")))
    other.commit("another team's repo")
    return other


def _controller_on(world: World, repo: GitRepo, name: str) -> Controller:
    c = Controller(["--repo", str(repo.root), "--path", "manifests", "--interval", "1",
                    "--state-dir", str(world.state_dir)], world.tmp / f"{name}.log")
    world.controllers.append(c)
    return c


def _deployed(world: World) -> tuple[Controller, str, str, int]:
    world.example(replicas=1)
    revision = world.repo.commit("deploy")
    c = world.controller()
    world.wait_applied(c, revision, "first deploy")
    model = _model_version(world)
    return c, revision, world.key(), model


def _model_version(world: World) -> int:
    from controller.backends.local import LocalBackend
    from controller.structs.manifests import Kind

    backend = LocalBackend(world.state_dir)
    try:
        found = backend.read().get(Kind.MODEL, "scaler")
    finally:
        backend.close()
    assert found is not None
    return int(found.details["version"])


def test_a_standby_for_another_source_is_refused_with_a_clear_error(world: World) -> None:
    leader, _, key, _ = _deployed(world)
    other = _second_repo(world)
    standby = _controller_on(world, other, "standby")
    code = standby.proc.wait(60)
    log = standby.log()
    assert code == 2, log
    assert f"follows {world.repo.root}//manifests" in log and f"this one follows {other.root}//manifests" in log, log
    assert "--state-dir" in log
    assert leader.proc.poll() is None and world.score([1], key) == (200, [3.0])


def test_a_controller_for_another_source_prunes_nothing_of_the_first_and_reports_the_shared_model_as_a_conflict(
    world: World,
) -> None:
    first, _, key, model = _deployed(world)
    assert first.stop(signal.SIGTERM) == 0
    other = _second_repo(world)
    second = _controller_on(world, other, "second")
    status: dict[str, Any] = eventually(
        lambda: (s := second.status())["reconciles"] >= 3 and s, 180, "three passes of the second controller")

    # The first source's service and model are untouched: not pruned, not re-registered.
    assert world.score([1], key) == (200, [3.0])
    assert _model_version(world) == model
    assert {f"Webservice/{SERVICE}", "Model/scaler", "AksCluster/cpu"} <= world.resource_names()
    # The second source's own service runs (on its own model; the shared cluster is shared).
    other_key = world.key("other-svc")
    assert world.score([1], other_key, "other-svc") == (200, [2.0])

    # The model both declare with other content is a conflict: in the pass, the status and the plan.
    last = status["lastReconcile"]
    assert last["status"] == "degraded", last
    assert any(e.startswith("Model/scaler: conflict:") and str(world.repo.root) in e for e in last["errors"]), last
    resources = {f"{r['kind']}/{r['name']}": r for r in status["resources"]}
    assert any(c["type"] == "Stalled" and c["status"] and c["reason"] == "OwnershipConflict"
               for c in resources["Model/scaler"]["conditions"]), resources["Model/scaler"]
    assert status["lastAppliedRevision"] != other.head()
    plan = world.amlops("plan", "manifests", cwd=other.root).stdout
    assert "Model/scaler" in plan and "conflict:" in plan, plan
    assert "applied by another source" in plan

    # Back to the first controller: it still owns its inventory and prunes only that.
    assert second.stop(signal.SIGTERM) == 0
    world.remove(f"manifests/services/{SERVICE}.yaml")
    pruned = world.repo.commit("remove the service")
    again = world.controller(wait=False)
    world.wait_applied(again, pruned, "the first source's service pruned", timeout=180)
    names = world.resource_names()
    assert f"Webservice/{SERVICE}" not in names
    assert {"Webservice/other-svc", "Model/doubler"} <= names, names
    assert world.score([1], other_key, "other-svc") == (200, [2.0])
