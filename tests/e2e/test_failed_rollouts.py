"""End to end: a rollout that fails is never recorded as applied, not later, and not after a crash."""

from __future__ import annotations

from typing import Any

from runtime.conftest import Controller, eventually

from .conftest import SERVICE, World, npy

_GOOD = ("applied", "no-changes")


def _break_the_model(world: World) -> str:
    """A new model file the entry script's ``init()`` cannot load: every new replica fails to start."""
    world.repo.write("manifests/models/scaler/scale.npy", b"this is not a numpy file")
    return world.repo.commit("a model that cannot load")


def _deployed(world: World) -> tuple[Controller, str, str]:
    world.example(replicas=2)
    good = world.repo.commit("deploy")
    c = world.controller()
    world.wait_applied(c, good, "first deploy")
    return c, good, world.key()


def _service_row(world: World) -> dict[str, Any]:
    rows = [r for r in world.status_json()["resources"] if r["kind"] == "Webservice" and r["name"] == SERVICE]
    assert len(rows) == 1, rows
    return rows[0]


def _metric(c: Controller, name: str) -> float:
    code, text = c.get("/metrics")
    assert code == 200
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_rollout_that_stalls_stays_failed_in_history_status_metrics_and_readiness_until_fixed(world: World) -> None:
    c, good, key = _deployed(world)
    bad = _break_the_model(world)

    def failed_once() -> dict[str, Any] | None:
        last = c.status()["lastReconcile"] or {}
        return last if last.get("revision") == bad and last.get("status") == "failed" else None

    first = eventually(failed_once, 120, "the broken rollout failed")
    assert any("ReplicaFailed" in e or "failed to start" in e for e in first["errors"]), first
    seen = c.status()["reconciles"]
    later = eventually(lambda: (s := c.status())["reconciles"] >= seen + 3 and s, 60, "three more passes")

    # Every later pass says the revision is not applied: the service is stalled on it.
    assert later["lastAppliedRevision"] == good, later
    assert later["lastReconcile"]["revision"] == bad
    assert later["lastReconcile"]["status"] == "degraded", later["lastReconcile"]
    assert any("stalled" in e and "ReplicaFailed" in e for e in later["lastReconcile"]["errors"]), later["lastReconcile"]
    history = [h for h in world.history(50) if h["revision"] == bad]
    assert len(history) >= 4 and not [h for h in history if h["status"] in _GOOD], [h["status"] for h in history]
    status = world.status_json()
    assert status["lastAppliedRevision"] == good and status["lastStatus"] == "degraded", status
    row = _service_row(world)
    assert row["lastAppliedRevision"] == good, row
    assert any(x["type"] == "Stalled" and x["status"] for x in row["recordedConditions"]), row
    api = {f"{r['kind']}/{r['name']}": r for r in later["resources"]}
    assert any(x["type"] == "Stalled" and x["status"] for x in api[f"Webservice/{SERVICE}"]["conditions"])
    assert _metric(c, "amlops_reconciles_total") > 0 and _metric(c, 'amlops_reconciles_total{status="degraded"}') >= 3
    assert f'revision="{good}"' in c.get("/metrics")[1]
    code, body = c.get("/readyz")
    assert code == 503 and "stalled" in body, (code, body)
    # The old generation still serves meanwhile.
    assert world.score([1], key) == (200, [3.0])

    # A commit that changes the model again is tried again, and applies.
    world.repo.write("manifests/models/scaler/scale.npy", npy(5.0))
    fixed = world.repo.commit("a model that loads")
    world.wait_applied(c, fixed, "the fixed model applied", timeout=180)
    eventually(lambda: world.score([1], key) == (200, [5.0]), 30, "the fixed model serving")
    assert c.get("/readyz")[0] == 200
    assert world.status_json()["lastAppliedRevision"] == fixed


def test_a_controller_killed_mid_rollout_records_the_interrupted_revisions_outcome_on_restart(world: World) -> None:
    c, good, key = _deployed(world)
    details = world.service_details()
    assert details is not None
    generation = details["generation"]
    bad = _break_the_model(world)

    def rolling() -> bool:
        d = world.service_details() or {}
        return d.get("generation", generation) > generation and (c.status()["lastReconcile"] or {}).get("revision") != bad

    eventually(rolling, 120, "the new generation rolling out")
    c.kill()  # kill -9 of the whole process group, mid-rollout

    # The restarted controller's first pass may fail (the revision stalls): /readyz then says so.
    again = world.controller(wait=False)
    eventually(lambda: again.status()["reconciles"] >= 3, 180, "three passes after the restart")
    entries = [h for h in world.history(50) if h["revision"] == bad]
    assert entries and not [h for h in entries if h["status"] in _GOOD], [(h["status"], h["errors"]) for h in entries]
    assert any(h["status"] == "failed" and "interrupted" in " ".join(h["errors"]) for h in entries), \
        [(h["status"], h["errors"]) for h in entries]
    assert any(h["status"] in ("failed", "degraded") and "ReplicaFailed" in " ".join(h["errors"]) for h in entries), \
        [(h["status"], h["errors"]) for h in entries]
    status = again.status()
    assert status["lastAppliedRevision"] == good, status
    assert world.status_json()["lastAppliedRevision"] == good
    assert world.score([1], key) == (200, [3.0])
