"""End to end, bounded chaos: the controller is killed with SIGKILL at random moments while it rolls
new revisions out, then restarted. Whatever moment it died at, the restarted controller converges:
one supervisor per service, the declared replica count of the last revision, and nothing left
running once the service is deleted.
"""

from __future__ import annotations

import os
import random
import time

import psutil
from runtime.conftest import eventually

from .conftest import SERVICE, World, leftover_processes, npy

ITERATIONS = 5


def _processes(world: World, marker: str) -> list[psutil.Process]:
    """Live processes of this world whose command line names ``marker``."""
    found = []
    for proc in leftover_processes(world.state_dir):
        try:
            if marker in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _supervisors(world: World) -> list[psutil.Process]:
    return [p for p in _processes(world, "controller.backends.local.supervising") if SERVICE in " ".join(p.cmdline())]


def _replicas(world: World) -> list[psutil.Process]:
    # A replica's command line names the service, and its model and key files under the state dir.
    replicas = [p for p in _processes(world, "controller.scoring") if f"--service-name {SERVICE}" in " ".join(p.cmdline())]
    pids = {p.pid for p in replicas}
    return [p for p in replicas if p.ppid() not in pids]  # a replica's own --workers are part of it


def test_kill_9_at_random_moments_during_rollouts_then_a_restart_converges_with_no_duplicate_and_no_orphan(
    world: World,
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    world.example(replicas=2)
    world.repo.commit("deploy")
    moments = []
    for i in range(ITERATIONS):
        # Each round brings new input: another model (a rolling update) or another replica count.
        replicas = 1 + (i % 2)
        world.repo.write("manifests/models/scaler/scale.npy", npy(float(i + 2)))
        world.service(SERVICE, replicas)
        world.repo.commit(f"round {i}")
        c = world.controller(wait=False)
        moment = rng.uniform(0.5, 4.0)
        moments.append(round(moment, 2))
        time.sleep(moment)
        c.kill()  # SIGKILL to the controller's process group (supervisors and replicas live on)
    note = f"seed {seed}, kills after {moments} s"

    # Settle on a known last revision: 2 replicas of the model scaling by 10.
    world.repo.write("manifests/models/scaler/scale.npy", npy(10.0))
    world.service(SERVICE, 2)
    last = world.repo.commit("settle")
    final = world.controller(wait=False)
    world.wait_applied(final, last, f"convergence after the kills ({note})", timeout=180)
    key = world.key()
    assert world.score([1], key) == (200, [10.0]), note

    def converged() -> bool:
        return len(_supervisors(world)) == 1 and len(_replicas(world)) == 2 and len(world.ready_pids()) == 2

    eventually(converged, 60, f"one supervisor and two replicas ({note})")
    details = world.service_details()
    assert details is not None
    assert details["supervisor"]["pid"] == _supervisors(world)[0].pid, note
    assert {p["pid"] for p in details["replicas"]["processes"]} == {p.pid for p in _replicas(world)}, note
    assert {p["generation"] for p in details["replicas"]["processes"]} == {details["generation"]}, note

    # Deleting the service leaves nothing of it running.
    world.remove(f"manifests/services/{SERVICE}.yaml")
    gone = world.repo.commit("delete the service")
    world.wait_applied(final, gone, f"service deleted ({note})")
    assert world.service_details() is None
    orphans = [p for p in leftover_processes(world.state_dir) if p.pid != final.proc.pid]
    assert not orphans, (note, [p.cmdline() for p in orphans])
