"""Log lines as log collectors expect them: JSON with ``time`` (RFC 3339), ``level`` and ``msg``; no prose on stdout."""

from __future__ import annotations

import json
import logging
import subprocess
from datetime import datetime
from pathlib import Path

from controller.backends.local.supervising import JsonLogFormatter
from controller.scoring.reporting import configure_events, log_event

from .conftest import _amlops_run_argv
from .test_running import repo_args, small_repo

RFC3339 = "%Y-%m-%dT%H:%M:%S.%f%z"


def _conventional(line: str) -> dict[str, object]:
    document = json.loads(line)
    assert isinstance(document, dict)
    assert datetime.strptime(str(document["time"]), RFC3339).tzinfo is not None, document
    assert document["level"] in {"debug", "info", "warning", "error", "critical"}, document
    assert isinstance(document["msg"], str) and document["msg"], document
    return document


def test_run_in_json_mode_writes_only_conventional_json_lines(tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo")
    argv = [*_amlops_run_argv(), *repo_args(repo, tmp_path, "--once", "--listen", "127.0.0.1:0", "--log-format", "json")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines
    events = [_conventional(line)["msg"] for line in lines]
    assert "sync.finished" in events


def test_scoring_hosts_and_supervisors_write_the_same_keys(capsys: object) -> None:
    configure_events("json")
    try:
        log_event("ready", init_s=0.5)
    finally:
        configure_events("text")
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    document = _conventional(err.strip())
    assert document["msg"] == "ready" and document["init_s"] == 0.5

    record = logging.LogRecord("amlops.supervisor", logging.WARNING, __file__, 1, "replica_died", None, None)
    record.fields = {"service": "svc", "pid": 42}
    document = _conventional(JsonLogFormatter().format(record))
    assert document["msg"] == "replica_died" and document["level"] == "warning" and document["service"] == "svc"
