"""End to end: a commit deploys a keyed service; later commits scale it in place and roll a new model out.

A real ``amlops run`` follows a real Git repo; the services are real scoring processes of the local
backend, called over HTTP with the key ``amlops keys`` prints.
"""

from __future__ import annotations

import threading
import time

import requests
from runtime.conftest import eventually

from .conftest import SERVICE, World, npy


def test_a_committed_repo_converges_to_a_service_that_answers_only_with_its_key(world: World) -> None:
    world.example(replicas=2)
    revision = world.repo.commit("deploy")
    c = world.controller()
    world.wait_applied(c, revision, "first deploy")

    key = world.key()
    assert len(key) >= 16
    assert world.score([1, 2], key) == (200, [3.0, 6.0])
    assert world.score([1, 2], "not-the-key")[0] == 401
    assert world.score([1, 2], None)[0] == 401
    assert len(world.ready_pids()) == 2

    status = world.status_json()
    assert status["lastAppliedRevision"] == revision
    rows = {(r["kind"], r["name"]): r for r in status["resources"]}
    svc = rows[("Webservice", SERVICE)]
    assert svc["managed"] and svc["replicas"] == {"ready": 2, "desired": 2}
    assert svc["modelVersions"] == ["scaler:1"]
    assert {("Workspace", "local"), ("AksCluster", "cpu"), ("Model", "scaler")} <= set(rows)


def test_raising_replicas_scales_in_place_and_keeps_the_serving_replicas(world: World) -> None:
    world.example(replicas=2)
    revision = world.repo.commit("deploy")
    world.wait_applied(c := world.controller(), revision, "first deploy")
    before = world.ready_pids()
    assert len(before) == 2

    world.service(SERVICE, replicas=3)
    world.wait_applied(c, world.repo.commit("scale to 3"), "scale to 3")

    after = eventually(lambda: len(p := world.ready_pids()) == 3 and p, 60, "3 ready replicas")
    assert before < after, f"the two serving replicas were restarted: before {before}, after {after}"
    assert world.score([1], world.key()) == (200, [3.0])
    details = world.service_details()
    assert details is not None and details["generation"] == 1


def test_a_changed_model_file_registers_a_new_version_and_rolls_out_without_a_failed_request(
    world: World,
) -> None:
    world.example(replicas=2, scale=3.0)
    revision = world.repo.commit("deploy")
    world.wait_applied(c := world.controller(), revision, "first deploy")
    key, uri = world.key(), world.uri()
    old_pids = world.ready_pids()
    headers = {"Authorization": f"Bearer {key}"}

    failures: list[str] = []
    answers: list[tuple[float, object]] = []
    stop = threading.Event()

    def client(session: requests.Session | None) -> None:
        # session=None: a new connection per request; otherwise one keep-alive session throughout.
        while not stop.is_set():
            try:
                if session is None:
                    resp = requests.post(uri, json={"data": [1]}, headers={**headers, "Connection": "close"},
                                         timeout=30)
                else:
                    resp = session.post(uri, json={"data": [1]}, headers=headers, timeout=30)
            except requests.RequestException as exc:
                failures.append(f"{'keep-alive' if session else 'new connection'}: {exc!r}")
                continue
            if resp.status_code != 200:
                failures.append(f"{resp.status_code}: {resp.text[:200]}")
            else:
                answers.append((time.monotonic(), resp.json()))

    with requests.Session() as session:
        threads = [threading.Thread(target=client, args=(s,), daemon=True) for s in (None, session)]
        for t in threads:
            t.start()
        try:
            eventually(lambda: len(answers) >= 10, 60, "clients running")
            world.repo.write("manifests/models/scaler/scale.npy", npy(5.0))
            revision = world.repo.commit("new model")
            world.wait_applied(c, revision, "new model rolled out")
            rolled = time.monotonic()
            eventually(lambda: sum(1 for t, _ in answers if t > rolled) >= 20, 60, "answers after the roll")
        finally:
            stop.set()
            for t in threads:
                t.join(60)

    assert failures == [], f"{len(failures)} failed of {len(answers) + len(failures)}: {failures[:5]}"
    values = [a for _, a in answers]
    assert values[0] == [3.0] and values[-1] == [5.0]
    assert all(a == [5.0] for t, a in answers if t > rolled), "old model answered after the roll finished"
    status = world.status_json()
    svc = next(r for r in status["resources"] if r["name"] == SERVICE)
    assert svc["modelVersions"] == ["scaler:2"]
    assert not (world.ready_pids() & old_pids), "old replicas still serve"
