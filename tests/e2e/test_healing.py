"""End to end: killed replicas and supervisors are healed; a restarted controller adopts what runs."""

from __future__ import annotations

import contextlib
import os
import signal

import psutil
from runtime.conftest import Controller, eventually

from .conftest import World


def _deployed(world: World, replicas: int = 2) -> tuple[Controller, str]:
    world.example(replicas=replicas)
    revision = world.repo.commit("deploy")
    c = world.controller()
    world.wait_applied(c, revision, "first deploy")
    return c, revision


def test_a_killed_replica_is_restarted_and_the_service_answers_again(world: World) -> None:
    _deployed(world)
    key = world.key()
    pids = world.ready_pids()
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)

    healed = eventually(lambda: len(p := world.ready_pids()) == 2 and victim not in p and p, 60, "replica restarted")
    assert pids - {victim} < healed
    assert world.score([2], key) == (200, [6.0])


def test_a_killed_supervisor_is_healed_by_the_next_reconcile_without_restarting_replicas(world: World) -> None:
    c, _ = _deployed(world)
    key = world.key()
    details = world.service_details()
    assert details is not None
    supervisor, pids = details["supervisor"]["pid"], world.ready_pids()
    passes = c.status()["reconciles"]
    os.kill(supervisor, signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(supervisor).wait(10)

    def healed() -> dict[str, object] | None:
        d = world.service_details()
        return d if d is not None and d["supervisor"]["alive"] and d["supervisor"]["pid"] != supervisor else None

    after = eventually(healed, 60, "a new supervisor")
    # The pass that started the new supervisor is counted once it has been recorded.
    eventually(lambda: c.status()["reconciles"] > passes, 60, "the healing pass recorded")
    assert world.ready_pids() == pids, "healthy replicas were restarted"
    assert after["generation"] == details["generation"]
    assert world.score([2], key) == (200, [6.0])
    # The new supervisor keeps healing: a replica killed now comes back too.
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    eventually(lambda: len(p := world.ready_pids()) == 2 and victim not in p, 60, "replica restarted")
    assert world.score([2], key) == (200, [6.0])


def test_a_restarted_controller_adopts_running_services_without_writing(world: World) -> None:
    c, revision = _deployed(world)
    key, pids = world.key(), world.ready_pids()
    details = world.service_details()
    assert details is not None
    assert c.stop(signal.SIGTERM) == 0
    newest = world.history(1)[0]["id"]

    again = world.controller()
    seen = eventually(lambda: (s := again.status())["reconciles"] >= 2 and s, 60, "two passes after restart")
    assert seen["lastAppliedRevision"] == revision
    since = [h for h in world.history(50) if h["id"] > newest]
    assert since and all(h["status"] == "no-changes" for h in since), since
    assert world.ready_pids() == pids
    after = world.service_details()
    assert after is not None and after["supervisor"]["pid"] == details["supervisor"]["pid"]
    assert world.score([2], key) == (200, [6.0])
    assert "no-changes" in world.amlops("history", "--limit", "1").stdout
