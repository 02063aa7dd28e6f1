"""A local service's logs are structured like the controller's: one JSON object per line with
``time`` (RFC 3339), ``level`` and ``msg``, from its supervisor and from each replica."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from controller.backends.local import LocalBackend
from controller.backends.local.layouts import service_dir

from .conftest import Repo, apply_all, post

SERVICE = "numpy-svc"


def _events(path: Path) -> list[dict[str, object]]:
    events = []
    for line in path.read_text().splitlines():
        document = json.loads(line)  # every line, not only some: a plain-text line fails here
        assert datetime.fromisoformat(str(document["time"])).tzinfo is not None, document
        assert document["level"] in {"debug", "info", "warning", "error", "critical"}, document
        assert isinstance(document["msg"], str) and document["msg"], document
        events.append(document)
    return events


def test_supervisor_and_replica_logs_are_json_lines_with_time_level_and_msg(
    backend: LocalBackend, repo: Repo, state_dir: Path
) -> None:
    apply_all(backend, repo)
    primary, _secondary = backend.get_keys(SERVICE)
    assert post(backend.scoring_uri(SERVICE), {"data": [1]}, primary)[0] == 200
    folder = service_dir(state_dir, SERVICE)
    supervisor = _events(folder / "supervisor.log")
    assert [e["slot"] for e in supervisor if e["msg"] == "replica.started"] == [0, 1]
    replica_logs = sorted((folder / "logs").glob("replica-*.log"))
    assert len(replica_logs) == 2
    for path in replica_logs:
        assert "ready" in [e["msg"] for e in _events(path)]
