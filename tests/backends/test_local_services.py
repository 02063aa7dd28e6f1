"""The local backend's web services, end to end: real supervisor, real scoring hosts, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

from controller.backends.local import LocalBackend
from controller.structs import tokens
from controller.structs.errors import PermanentError
from controller.structs.manifests import Kind
from controller.structs.states import DIGEST_TAG, MANAGED_BY_TAG, ConditionType, ResourceId

from .conftest import CLIENT_FAILURE, Repo, apply_all, post

SERVICE = "numpy-svc"


def _pids(backend: LocalBackend) -> set[int]:
    svc = backend.read().get(Kind.WEBSERVICE, SERVICE)
    assert svc is not None
    return {p["pid"] for p in svc.details["replicas"]["processes"]}


def _eventually(predicate, timeout: float = 60, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached within {timeout} s")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_service_with_two_replicas_answers_on_one_uri_with_its_key(backend: LocalBackend, repo: Repo) -> None:
    messages: list[str] = []
    desired = apply_all(backend, repo, messages=messages)
    uri = backend.scoring_uri(SERVICE)
    primary, secondary = backend.get_keys(SERVICE)

    assert post(uri, {"data": [1, 2]}, primary) == (200, [2.0, 4.0])
    assert post(uri, {"data": [1]}, secondary)[0] == 200
    assert post(uri, {"data": [1]}, "wrong-key")[0] == 401
    assert post(uri, {"data": [1]}, None)[0] == 401
    assert any("2/2 replicas ready" in m for m in messages)

    svc = backend.read().get(Kind.WEBSERVICE, SERVICE)
    assert svc is not None
    assert svc.spec["replicas"] == 2
    assert svc.tags[MANAGED_BY_TAG] == "test-controller"
    assert svc.tags[DIGEST_TAG] == desired.get(Kind.WEBSERVICE, SERVICE).digest  # type: ignore[union-attr]
    assert svc.condition(ConditionType.READY).status  # type: ignore[union-attr]
    assert svc.details["scoringUri"] == uri
    assert len(svc.details["replicas"]["processes"]) == 2


def test_a_killed_replica_is_restarted_and_a_new_backend_adopts_the_running_ones(
    backend: LocalBackend, repo: Repo, state_dir: Path
) -> None:
    apply_all(backend, repo)
    before = _pids(backend)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    after = _eventually(lambda: (p := _pids(backend)) and victim not in p and len(p) == 2 and p, what="replica restart")
    backend.wait_ready(SERVICE, timeout=60)
    assert len(after) == 2 and victim not in after

    # A second controller on the same state dir sees the same processes and restarts nothing.
    again = LocalBackend(state_dir, "test-controller")
    pids = _pids(again)
    apply_all(again, repo)
    assert _pids(again) == pids
    assert post(again.scoring_uri(SERVICE), {"data": [3]}, again.get_keys(SERVICE)[0]) == (200, [6.0])


def test_a_killed_supervisor_shows_as_drift_and_the_next_apply_heals_it_without_restarting_replicas(
    backend: LocalBackend, repo: Repo
) -> None:
    apply_all(backend, repo)
    pids = _pids(backend)
    svc = backend.read().get(Kind.WEBSERVICE, SERVICE)
    assert svc is not None
    os.kill(svc.details["supervisor"]["pid"], signal.SIGKILL)

    drifted = _eventually(lambda: (s := backend.read().get(Kind.WEBSERVICE, SERVICE)) and s.spec["replicas"] == 0 and s,
                          what="drift")
    assert drifted.condition(ConditionType.READY).reason == "SupervisorLost"
    apply_all(backend, repo)
    healed = backend.read().get(Kind.WEBSERVICE, SERVICE)
    assert healed is not None and healed.spec["replicas"] == 2
    assert _pids(backend) == pids


def test_scaling_two_three_one_happens_in_place(backend: LocalBackend, repo: Repo) -> None:
    apply_all(backend, repo)
    two = _pids(backend)
    repo.service(replicas=3)
    apply_all(backend, repo, "r2")
    three = _pids(backend)
    assert two < three and len(three) == 3
    repo.service(replicas=1)
    apply_all(backend, repo, "r3")
    one = _eventually(lambda: (p := _pids(backend)) and len(p) == 1 and p, what="scale in")
    assert one < two
    assert backend.read().get(Kind.WEBSERVICE, SERVICE).spec["replicas"] == 1  # type: ignore[union-attr]


def test_updating_the_model_rolls_replicas_without_a_failed_request(backend: LocalBackend, repo: Repo) -> None:
    apply_all(backend, repo)
    uri, key = backend.scoring_uri(SERVICE), backend.get_keys(SERVICE)[0]
    old = _pids(backend)
    results: list[tuple[int, object]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            results.append(post(uri, {"data": [1]}, key))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        _eventually(lambda: len(results) > 5, what="first answers")
        repo.write("models/scaler/scale.txt", "3")
        apply_all(backend, repo, "r2")
        _eventually(lambda: any(r == (200, [3.0]) for r in results[-4:]), what="new model answering")
    finally:
        stop.set()
        for t in threads:
            t.join()
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    assert {r[1][0] for r in results} == {2.0, 3.0}  # type: ignore[index]
    assert not (_pids(backend) & old)
    svc = backend.read().get(Kind.WEBSERVICE, SERVICE)
    assert svc is not None and svc.details["generation"] == 2


def test_deleting_a_service_closes_its_port_and_leaves_no_process(backend: LocalBackend, repo: Repo) -> None:
    desired = apply_all(backend, repo)
    svc = backend.read().get(Kind.WEBSERVICE, SERVICE)
    assert svc is not None
    port = svc.details["port"]
    procs = [psutil.Process(p) for p in _pids(backend)] + [psutil.Process(svc.details["supervisor"]["pid"])]

    backend.delete(ResourceId(Kind.WEBSERVICE, SERVICE), repo.ctx(desired))

    assert backend.read().get(Kind.WEBSERVICE, SERVICE) is None
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)
    assert not _port_open(port)
    backend.delete(ResourceId(Kind.WEBSERVICE, SERVICE), repo.ctx(desired))  # already gone: fine


def test_an_entry_script_that_cannot_init_stalls_the_service_with_its_error(backend: LocalBackend, repo: Repo) -> None:
    import pytest

    from controller.structs.errors import PermanentError

    repo.write("src/score.py", "def init():\n    raise RuntimeError('no model here')\n\ndef run(raw):\n    return raw\n")
    repo.service(replicas=1)
    with pytest.raises(PermanentError) as err:
        apply_all(backend, repo)
    assert err.value.reason == "ReplicaFailed"
    svc = backend.read().get(Kind.WEBSERVICE, SERVICE)
    assert svc is not None
    stalled = svc.condition(ConditionType.STALLED)
    assert stalled is not None and stalled.status
    assert not svc.condition(ConditionType.READY).status  # type: ignore[union-attr]
    assert "no model here" in stalled.message
    assert backend.tail_log(SERVICE, 0)  # the replica's own log is there for `amlops logs`


def test_a_token_service_answers_fresh_tokens_and_refuses_keys_expired_and_foreign_tokens(
    backend: LocalBackend, repo: Repo, state_dir: Path
) -> None:
    repo.service(replicas=1, auth="token")
    apply_all(backend, repo)
    uri = backend.scoring_uri(SERVICE)
    token = backend.get_token(SERVICE)
    assert token.token_type == "Bearer" and token.refresh_after < token.expiry_on
    assert post(uri, {"data": [1, 2]}, token.access_token) == (200, [2.0, 4.0])
    assert post(uri, {"data": [1]}, None)[0] == 401
    with pytest.raises(PermanentError, match="has no keys"):
        backend.get_keys(SERVICE)  # a token service has no keys to leak
    # The signing key is private to the backend and the replicas, and nothing else is stored.
    key_file = state_dir / "services" / SERVICE / "token-key.json"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert token.access_token not in key_file.read_text()
    signing_key = json.loads(key_file.read_text())["tokenSigningKey"].encode()
    now = time.time()
    assert post(uri, {"data": [1]}, tokens.mint(signing_key, SERVICE, now - 7200).access_token)[0] == 401
    assert post(uri, {"data": [1]}, tokens.mint(signing_key, "another-svc", now).access_token)[0] == 401
    # A restarted backend (a new controller) issues tokens the running replicas accept.
    again = LocalBackend(state_dir, "test-controller")
    try:
        assert post(uri, {"data": [3]}, again.get_token(SERVICE).access_token) == (200, [6.0])
    finally:
        again.close()
    # Switched to key auth: keys are given out, tokens no longer.
    repo.service(replicas=1, auth="key")
    apply_all(backend, repo, revision="r2")
    assert post(uri, {"data": [1]}, backend.get_keys(SERVICE)[0])[0] == 200
    with pytest.raises(PermanentError, match="issues no tokens"):
        backend.get_token(SERVICE)


GROWING_SCORE_PY = '''
import http.client
import json

HELD = []


def init():
    pass


def run(raw_data):
    grow_mib = json.loads(raw_data).get("grow_mib", 0)
    if grow_mib:
        HELD.append(bytearray(b"x" * (grow_mib << 20)))  # written, so resident
    return {"held_mib": sum(len(block) for block in HELD) >> 20}
'''


def test_a_replica_over_its_memory_limit_is_killed_restarted_and_reported(
    backend: LocalBackend, repo: Repo, state_dir: Path
) -> None:
    repo.write("src/score.py", GROWING_SCORE_PY)
    repo.service(replicas=1, auth="none", resources={"cpu": 0.1, "memoryGb": 0.25})
    apply_all(backend, repo)
    uri = backend.scoring_uri(SERVICE)
    (before,) = _pids(backend)
    assert post(uri, {"grow_mib": 16}, None) == (200, {"held_mib": 16})  # well under 256 MiB: kept
    # The supervisor samples memory every second: the kill may land before or after this answer is
    # written (an OOM-killed pod drops its connection too), so either outcome is the real behaviour.
    assert post(uri, {"grow_mib": 300}, None)[0] in (200, CLIENT_FAILURE)
    supervisor_log = state_dir / "services" / SERVICE / "supervisor.log"
    _eventually(lambda: "replica.oom_killed" in supervisor_log.read_text(), timeout=30, what="OOM kill")
    line = next(json.loads(ln) for ln in supervisor_log.read_text().splitlines() if "replica.oom_killed" in ln)
    assert line["msg"] == "replica.oom_killed" and line["pid"] == before and line["limit_mib"] == 256
    after = _eventually(lambda: (p := _pids(backend)) and before not in p and p, timeout=60, what="restart")
    backend.wait_ready(SERVICE, timeout=60)
    assert post(uri, {}, None) == (200, {"held_mib": 0})  # a fresh process
    assert not psutil.pid_exists(before) and len(after) == 1
