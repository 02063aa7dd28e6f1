"""Log lines as log collectors expect them: JSON with ``time`` (RFC 3339), ``level`` and ``msg``; no prose on stdout."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from controller.backends.local.supervising import JsonLogFormatter
from controller.scoring.reporting import configure_events, log_event

from .conftest import SCORE_PY, GitRepo, _amlops_run_argv, doc, npy, stop_local_services
from .test_end_to_end import SERVICE, service_spec
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


def test_a_deployed_service_is_announced_as_a_log_line_not_on_stdout_in_json_mode(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "repo")
    repo.write("manifests/workspace.yaml", doc("Workspace", "local", {"backend": "local"}))
    repo.write("manifests/clusters/cpu.yaml",
               doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 1, "gpusPerNode": 0}))
    repo.write("manifests/models/scaler/scale.npy", npy(3.0))
    repo.write("manifests/models/scaler.yaml", doc("Model", "scaler", {"path": "scaler"}))
    repo.write("manifests/src/score.py", SCORE_PY)
    repo.write("manifests/services/svc.yaml", doc("Webservice", SERVICE, service_spec(1)))
    repo.commit("deploy")
    argv = [*_amlops_run_argv(), *repo_args(repo, tmp_path, "--once", "--listen", "127.0.0.1:0", "--log-format", "json")]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    finally:
        stop_local_services(tmp_path / "st")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # the ready-to-paste curl went to the log instead
    ready = [d for d in map(_conventional, done.stderr.splitlines()) if d["msg"] == "service.ready"]
    assert [d["service"] for d in ready] == [SERVICE]
    assert str(ready[0]["scoringUri"]).startswith("http://127.0.0.1:") and "curl" in str(ready[0]["howToCall"])


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


def test_an_event_logger_writes_its_fields_in_both_formats_redacted_and_named_after_the_caller() -> None:
    import io

    from controller.runtime.logs import RedactingFilter, TextFormatter
    from controller.structs.logformats import event_logger

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    redactor = RedactingFilter()
    redactor.set_secrets(["hunter2-secret"])
    handler.addFilter(redactor)
    logger = logging.getLogger("tests.event_logger")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    log = event_logger("tests.event_logger")
    try:
        handler.setFormatter(JsonLogFormatter())
        log.info("service.applied", service="svc", generation=3, name="clash", message="also a field")
        log.debug("token.seen", token="Bearer hunter2-secret")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("sync.crashed", revision="abc")
        handler.setFormatter(TextFormatter())
        log.warning("source.fetch.failed", error="no route to host")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    applied = _conventional(lines[0])
    assert applied["msg"] == "service.applied" and applied["level"] == "info"
    assert applied["logger"] == "tests.event_logger"
    assert (applied["service"], applied["generation"]) == ("svc", 3)
    assert (applied["name"], applied["message"]) == ("clash", "also a field")
    assert _conventional(lines[1])["token"] == "Bearer ***"
    crashed = _conventional(lines[2])
    assert crashed["level"] == "error" and crashed["revision"] == "abc" and "ValueError: boom" in crashed["exception"]
    assert lines[-1].endswith(' WARNING source.fetch.failed error="no route to host"'), lines[-1]


def test_an_event_logger_record_names_the_calling_line() -> None:
    from controller.structs.logformats import event_logger

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tests.event_logger.lines")
    keep = Keep()
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        line = sys._getframe().f_lineno + 1
        event_logger("tests.event_logger.lines").info("here.called")
    finally:
        logger.removeHandler(keep)
    assert [(r.pathname, r.lineno, r.funcName) for r in records] == [(__file__, line, "test_an_event_logger_record_names_the_calling_line")]
