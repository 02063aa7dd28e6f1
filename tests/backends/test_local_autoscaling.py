"""Autoscaling a local service: replicas report their load, the supervisor adds replicas under it and drains them after."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

from controller.backends.local import LocalBackend
from controller.backends.local.supervising import SCALE_DOWN_REFRESHES, desired_replicas
from controller.core.planning import plan_resource
from controller.structs.manifests import Kind
from controller.structs.plans import Action
from controller.structs.states import ActualResource, ConditionType

from .conftest import Repo, apply_all, post

SERVICE = "slow-svc"
SLOW_PY = textwrap.dedent(
    """
    import json
    import time

    import numpy as np


    def init():
        pass


    def run(raw_data):
        time.sleep(0.3)
        return (np.array(json.loads(raw_data)["data"], dtype=float) * 2).tolist()
    """
)


def _autoscaled_service(repo: Repo) -> None:
    repo.write("src/slow.py", SLOW_PY)
    spec = {
        "cluster": "aks-gpu", "models": ["scaler"], "sourceDirectory": "../src", "entryScript": "slow.py",
        "autoscale": {"minReplicas": 1, "maxReplicas": 3, "targetUtilization": 50, "refreshSeconds": 1},
        "maxConcurrentRequestsPerReplica": 1, "maxQueueWaitMs": 120000, "scoringTimeoutMs": 120000,
        "resources": {"cpu": 0.1, "memoryGb": 0.5}, "auth": "key",
    }
    doc = {"apiVersion": "amlops.dev/v1", "kind": "Webservice", "metadata": {"name": SERVICE}, "spec": spec}
    repo.write(f"services/{SERVICE}.yaml", json.dumps(doc))


def _service(backend: LocalBackend) -> ActualResource:
    svc = backend.read().get(Kind.WEBSERVICE, SERVICE)
    assert svc is not None
    return svc


def _wait_for(what: str, check: Callable[[ActualResource], bool], backend: LocalBackend, timeout: float) -> ActualResource:
    deadline = time.monotonic() + timeout
    while True:
        svc = _service(backend)
        if check(svc):
            return svc
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {svc.details.get('autoscale')}"
        time.sleep(0.3)


def _scaled(n: int, exactly: bool = False) -> Callable[[ActualResource], bool]:
    def check(svc: ActualResource) -> bool:
        auto: dict[str, Any] = svc.details["autoscale"]
        live = len(svc.details["replicas"]["processes"])
        ready = svc.details["replicas"]["ready"]
        if exactly:
            return bool(auto["current"] == n and live == n and ready == n)
        return bool(auto["current"] >= n and ready >= n)

    return check


def test_the_desired_count_follows_azures_rule_within_the_bounds() -> None:
    assert desired_replicas(1, 6.0, 50, 1, 3) == 3  # 6 requests on one slot: far over target, capped at max
    assert desired_replicas(2, 0.5, 50, 1, 3) == 2  # exactly on target: stay
    assert desired_replicas(2, 0.75, 50, 1, 3) == 3
    assert desired_replicas(3, 0.0, 50, 1, 3) == 1  # idle: never below min
    assert desired_replicas(4, 0.1, 70, 2, 10) == 2


def test_an_autoscaled_service_grows_under_load_and_shrinks_back_once_it_stops(
    backend: LocalBackend, repo: Repo
) -> None:
    _autoscaled_service(repo)
    desired = apply_all(backend, repo)
    svc = _service(backend)
    assert svc.details["autoscale"] == {"current": 1, "min": 1, "max": 3, "target": 50, "refreshSeconds": 1,
                                        "utilization": 0.0}
    uri, key = backend.scoring_uri(SERVICE), backend.get_keys(SERVICE)[0]

    codes: list[int] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            codes.append(post(uri, {"data": [1]}, key, timeout=120)[0])

    clients = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    for thread in clients:
        thread.start()
    try:
        grown = _wait_for("a second ready replica under load", _scaled(2), backend, timeout=90)
        # Scaled past the minimum is not drift: the planner leaves the service alone, and it stays Ready.
        resource = desired.get(Kind.WEBSERVICE, SERVICE)
        assert resource is not None
        change = plan_resource(resource, grown, controller_name="test-controller",
                               replace_fields=backend.replace_fields(Kind.WEBSERVICE))
        assert change.action is Action.NOOP, change
        assert grown.spec.get("replicas") is None
        assert grown.condition(ConditionType.READY).status  # type: ignore[union-attr]
        assert grown.details["autoscale"]["utilization"] is not None
        served = len(codes)
        _wait_for("requests served by the grown service", lambda _svc: len(codes) >= served + 12, backend, timeout=60)

        # The chosen count is recorded: a supervisor that dies and comes back adopts the replicas, keeps the count.
        pids = {p["pid"] for p in grown.details["replicas"]["processes"]}
        os.kill(grown.details["supervisor"]["pid"], signal.SIGKILL)
        _wait_for("the supervisor to be seen dead", lambda svc: not svc.details["supervisor"]["alive"], backend, 30)
        backend.wait_ready(SERVICE, timeout=60)
        back = _service(backend)
        assert back.details["autoscale"]["current"] >= 2
        assert pids <= {p["pid"] for p in back.details["replicas"]["processes"]}
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=150)
    assert codes and set(codes) == {200}, sorted(set(codes))

    # Idle for SCALE_DOWN_REFRESHES refreshes: back to the minimum, the extra replicas drained.
    shrunk = _wait_for("the service to shrink back to 1 replica", _scaled(1, exactly=True), backend,
                       timeout=60 + SCALE_DOWN_REFRESHES)
    assert shrunk.condition(ConditionType.READY).status  # type: ignore[union-attr]
    assert shrunk.details["autoscale"]["utilization"] == 0.0
    assert post(uri, {"data": [2]}, key) == (200, [4.0])
