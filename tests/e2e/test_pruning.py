"""End to end: removing manifests prunes only what this controller owns, honours Retain, and holds mass deletes."""

from __future__ import annotations

from runtime.conftest import GitRepo, eventually

from .conftest import SCORE_PY, SERVICE, World, leftover_processes, manifest, npy, port_closed, service_spec


def test_removing_a_manifest_prunes_only_owned_services_and_keeps_retained_clusters(world: World) -> None:
    world.example(replicas=1)
    spare = {"vmSize": "Standard_D2_v2", "agentCount": 1, "gpusPerNode": 0, "deletionPolicy": "Retain"}
    world.repo.write("manifests/clusters/spare.yaml", manifest("AksCluster", "spare", spare))
    revision = world.repo.commit("deploy")

    # A service someone else deployed into the same state dir, with another controller name
    # (before the controller starts: apply refuses to run beside a controller on its state dir).
    other = GitRepo(world.tmp / "other")
    other.write("manifests/workspace.yaml", manifest("Workspace", "other-ws", {"backend": "local"}))
    other.write("manifests/clusters/cpu.yaml", manifest("AksCluster", "other-cpu", {"vmSize": "Standard_D2_v2",
                                                                                    "agentCount": 1, "gpusPerNode": 0}))
    other.write("manifests/models/other/scale.npy", npy(7.0))
    other.write("manifests/models/other.yaml", manifest("Model", "other-scaler", {"path": "other"}))
    other.write("manifests/src/score.py", SCORE_PY)
    other.write("manifests/services/foreign.yaml",
                manifest("Webservice", "foreign-svc", service_spec(1, model="other-scaler", cluster="other-cpu")))
    other.commit("someone else's service")
    world.amlops("apply", "manifests", "--yes", "--controller-name", "other", cwd=other.root)
    foreign_key = world.key("foreign-svc")
    assert world.score([1], foreign_key, "foreign-svc") == (200, [7.0])
    foreign_pids = world.ready_pids("foreign-svc")

    c = world.controller()
    world.wait_applied(c, revision, "first deploy")
    assert world.ready_pids("foreign-svc") == foreign_pids
    details = world.service_details()
    assert details is not None
    port, pids = details["port"], world.ready_pids()
    world.remove(f"manifests/services/{SERVICE}.yaml")
    world.remove("manifests/clusters/spare.yaml")
    pruned = world.repo.commit("remove the service and the spare cluster")
    world.wait_applied(c, pruned, "service pruned")

    assert world.service_details() is None
    assert port_closed(port)
    assert not [p for p in leftover_processes(world.state_dir) if p.pid in pids]
    names = world.resource_names()
    assert "AksCluster/spare" in names, "a cluster with deletionPolicy Retain was deleted"
    assert {"Webservice/foreign-svc", "Model/other-scaler", "AksCluster/other-cpu"} <= names
    assert world.score([1], foreign_key, "foreign-svc") == (200, [7.0])
    assert world.ready_pids("foreign-svc") == foreign_pids
    # Later passes leave the foreign service alone too.
    seen = c.status()["reconciles"]
    quiet = eventually(lambda: (s := c.status())["reconciles"] >= seen + 2 and s["lastReconcile"], 60, "two more passes")
    assert quiet["status"] == "no-changes", quiet
    assert world.score([1], foreign_key, "foreign-svc") == (200, [7.0])


def test_a_commit_deleting_most_owned_resources_is_held_until_annotated(world: World) -> None:
    world.example(replicas=1)
    for name in ("extra-a", "extra-b"):
        world.repo.write(f"manifests/models/{name}/scale.npy", npy(1.0))
        world.repo.write(f"manifests/models/{name}.yaml", manifest("Model", name, {"path": name}))
    revision = world.repo.commit("deploy")
    c = world.controller()
    world.wait_applied(c, revision, "first deploy")
    key, pids = world.key(), world.ready_pids()

    # Owned: cluster, 3 models, service. Removing the service and two models deletes 3 of 5.
    world.remove(f"manifests/services/{SERVICE}.yaml")
    world.remove("manifests/models/extra-a.yaml")
    world.remove("manifests/models/extra-b.yaml")
    mass = world.repo.commit("delete most of it")

    def held() -> dict[str, object] | None:
        last = c.status()["lastReconcile"] or {}
        return last if last.get("revision") == mass and last.get("status") == "held" else None

    last = eventually(held, 60, "the mass delete held")
    assert "allow-mass-delete" in str(last["held"])
    assert world.status_json()["lastStatus"] == "held"
    assert world.history(1)[0]["status"] == "held"
    assert {"Webservice/numpy-svc", "Model/extra-a", "Model/extra-b"} <= world.resource_names()
    assert world.score([1], key) == (200, [3.0]) and world.ready_pids() == pids

    world.repo.write("manifests/clusters/cpu.yaml", manifest(
        "AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 1, "gpusPerNode": 0},
        {"amlops.dev/allow-mass-delete": "true"}))
    confirmed = world.repo.commit("confirm the mass delete")
    world.wait_applied(c, confirmed, "the confirmed mass delete")
    names = world.resource_names()
    assert not {"Webservice/numpy-svc", "Model/extra-a", "Model/extra-b"} & names
    assert {"AksCluster/cpu", "Model/scaler"} <= names
    assert not [p for p in leftover_processes(world.state_dir) if p.pid in pids]
