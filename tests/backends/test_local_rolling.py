"""Rolling a local service to a new version: a version that cannot start never takes the old one down."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from controller.backends.local import FAILURE_LIMIT, LocalBackend
from controller.backends.local.layouts import service_dir
from controller.structs.errors import PermanentError
from controller.structs.manifests import Kind
from controller.structs.states import ConditionType

from .conftest import SCORE_PY, Repo, apply_all, post

SERVICE = "numpy-svc"
BROKEN_PY = "def init():\n    raise RuntimeError('broken release')\n\ndef run(raw):\n    return raw\n"


def _starts(state_dir: Path, generation: int) -> int:
    lines = (service_dir(state_dir, SERVICE) / "supervisor.log").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]  # the supervisor logs JSON lines
    return sum(1 for e in events if e["msg"] == "replica.started" and e["service"] == SERVICE and e["generation"] == generation)


def test_rolling_to_a_version_that_cannot_init_stalls_while_the_old_replica_keeps_serving(
    backend: LocalBackend, repo: Repo, state_dir: Path
) -> None:
    repo.service(replicas=1)
    apply_all(backend, repo)
    uri, key = backend.scoring_uri(SERVICE), backend.get_keys(SERVICE)[0]

    repo.write("src/score.py", BROKEN_PY)
    with pytest.raises(PermanentError) as err:
        apply_all(backend, repo, "r2")

    assert err.value.reason == "ReplicaFailed"
    assert "broken release" in str(err.value)
    time.sleep(4)  # longer than the next backoff step: a supervisor that kept surging would start more
    assert 1 <= _starts(state_dir, 2) <= FAILURE_LIMIT
    assert post(uri, {"data": [1]}, key) == (200, [2.0])
    svc = backend.read().get(Kind.WEBSERVICE, SERVICE)
    assert svc is not None
    stalled = svc.condition(ConditionType.STALLED)
    assert stalled is not None and stalled.status and "broken release" in stalled.message
    assert not svc.condition(ConditionType.READY).status  # type: ignore[union-attr]
    assert [p["generation"] for p in svc.details["replicas"]["processes"]] == [1]

    # Fixing the script is a new generation: it starts with a clean failure count and rolls.
    repo.write("src/score.py", SCORE_PY)
    apply_all(backend, repo, "r3")
    assert post(uri, {"data": [1]}, key) == (200, [2.0])
    svc = backend.read().get(Kind.WEBSERVICE, SERVICE)
    assert svc is not None and svc.condition(ConditionType.READY).status  # type: ignore[union-attr]
    assert [p["generation"] for p in svc.details["replicas"]["processes"]] == [3]
