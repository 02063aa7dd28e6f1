"""The HTTP contract of the scoring host, against numpy-only entry scripts."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from scoring_hosts import Host, StartHost, calls, wait_until, write_script

pytestmark = pytest.mark.timeout(60)


def test_run_result_is_serialised_with_numpy_support(echo_host: Host, echo_dir: Path) -> None:
    status, headers, body = echo_host.score({"data": [1, 2, 3]})
    assert status == 200
    assert headers["content-type"] == "application/json"
    result = json.loads(body)
    assert result["sum"] == 6.0
    assert result["doubled"] == [2.0, 4.0, 6.0]
    assert result["cwd"] == str(echo_dir)
    assert float(headers["x-ms-run-fn-exec-ms"]) >= 0.0


def test_a_string_from_run_is_sent_json_encoded_like_azmlinfsrv(echo_host: Host) -> None:
    status, _headers, body = echo_host.score({"text": '{"already": "json"}'})
    assert status == 200
    assert json.loads(body) == '{"already": "json"}'


def test_request_id_is_echoed_or_generated(echo_host: Host) -> None:
    _status, headers, _body = echo_host.score({"data": [1]}, headers={"x-request-id": "abc-123"})
    assert headers["x-request-id"] == "abc-123"
    _status, headers, _body = echo_host.score({"data": [1]})
    assert len(headers["x-request-id"]) == 36


def test_an_exception_in_run_is_a_500_and_the_next_request_is_fine(echo_host: Host) -> None:
    status, headers, body = echo_host.score({"raise": "bad input row"})
    assert status == 500
    assert b"bad input row" in body
    assert headers["x-ms-run-function-failed"] == "True"
    status, _headers, _body = echo_host.score({"data": [1]})
    assert status == 200


def test_a_slow_run_answers_504_while_health_and_metrics_keep_answering(
    start_host: StartHost, echo_dir: Path
) -> None:
    host = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir), "--scoring-timeout-ms", "400")
    outcome: dict[str, object] = {}

    def slow() -> None:
        outcome["response"] = host.score({"sleep": 2.0})

    thread = threading.Thread(target=slow)
    thread.start()
    wait_until(lambda: len(calls(echo_dir)) == 1)
    assert host.request("GET", "/")[0] == 200
    assert host.request("GET", "/metrics")[0] == 200
    thread.join(timeout=10)
    status, _headers, body = outcome["response"]  # type: ignore[misc]
    assert status == 504
    assert b"timeout" in body.lower()
    assert 'amlops_scoring_run_errors_total{kind="timeout"} 1.0' in host.request("GET", "/metrics")[2].decode()


def test_overflowing_concurrency_and_queue_answers_503_with_retry_after(
    start_host: StartHost, echo_dir: Path
) -> None:
    host = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir),
                      "--max-concurrent", "1", "--max-queue-wait-ms", "200")
    thread = threading.Thread(target=lambda: host.score({"sleep": 1.5}))
    thread.start()
    wait_until(lambda: len(calls(echo_dir)) == 1)
    status, headers, _body = host.score({"data": [1]})
    assert status == 503
    assert headers["retry-after"] == "1"
    thread.join(timeout=10)
    assert len(calls(echo_dir)) == 1, "the rejected request must not reach run()"
    assert host.score({"data": [1]})[0] == 200


def test_an_oversize_body_is_413_and_never_reaches_run(start_host: StartHost, echo_dir: Path) -> None:
    host = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir), "--max-request-bytes", "1000")
    status, _headers, _body = host.score({"data": [0.5] * 1000})
    assert status == 413
    assert calls(echo_dir) == []
    assert host.score({"data": [1]})[0] == 200


def test_readiness_is_503_during_a_slow_init_then_200(start_host: StartHost, echo_dir: Path) -> None:
    host = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir),
                      env={"TEST_INIT_DELAY": "1.5"}, wait=False)
    host.wait_state("initializing")
    assert host.request("GET", "/-/ready")[0] == 503
    assert host.request("GET", "/")[0] == 200
    assert host.score({"data": [1]})[0] == 503
    host.wait_state("ready")
    assert host.request("GET", "/-/ready")[0] == 200


def test_a_failing_init_reports_failed_and_exits_non_zero(start_host: StartHost, echo_dir: Path) -> None:
    host = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir),
                      env={"TEST_INIT_FAIL": "1"}, wait=False)
    status = host.wait_state("failed")
    assert "init exploded on purpose" in status["error"]
    assert host.process.wait(timeout=10) != 0


def test_metrics_count_scoring_requests(echo_host: Host) -> None:
    for _ in range(3):
        echo_host.score({"data": [1]})
    echo_host.score({"raise": "x"})
    text = echo_host.request("GET", "/metrics")[2].decode()
    assert 'amlops_scoring_requests_total{code="200",route="score"} 3.0' in text
    assert 'amlops_scoring_requests_total{code="500",route="score"} 1.0' in text
    assert "amlops_scoring_request_seconds_bucket" in text
    assert "amlops_scoring_in_flight 0.0" in text


def test_the_azure_service_path_and_swagger(start_host: StartHost, echo_dir: Path, tmp_path: Path) -> None:
    host = start_host("--entry-script", str(echo_dir / "score.py"), "--service-name", "aks-dnn-mnist",
                      "--model-dir", str(tmp_path))
    status, _headers, body = host.score({"data": [1]}, path="/api/v1/service/aks-dnn-mnist/score")
    assert status == 200
    assert json.loads(body)["model_dir"] == str(tmp_path)
    swagger = json.loads(host.request("GET", "/swagger.json")[2])
    assert swagger["swagger"] == "2.0"
    assert "/api/v1/service/aks-dnn-mnist/score" in swagger["paths"]
    assert host.request("GET", "/nowhere")[0] == 404


def test_sigterm_exits_zero_after_answering_the_request_in_flight(echo_host: Host, echo_dir: Path) -> None:
    outcome: dict[str, object] = {}
    thread = threading.Thread(target=lambda: outcome.update(response=echo_host.score({"sleep": 0.5})))
    thread.start()
    wait_until(lambda: len(calls(echo_dir)) == 1)
    assert echo_host.stop() == 0
    thread.join(timeout=30)
    assert not thread.is_alive()
    status, headers, _body = outcome["response"]  # type: ignore[misc]
    assert status == 200
    assert headers["connection"] == "close"


COUNTER_SCRIPT = """
import os

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "events.log"), "a") as log:
    log.write("imported\\n")


def init():
    global served
    served = 0
    with open(os.path.join(HERE, "events.log"), "a") as log:
        log.write("init\\n")


def run(raw_data):
    global served
    served += 1
    return {"served": served}
"""


def test_an_unchanged_script_reloads_nothing_between_requests(start_host: StartHost, tmp_path: Path) -> None:
    # State set in init() and changed by run() carries over: a re-import or a second init() would reset it.
    write_script(tmp_path / "counter", COUNTER_SCRIPT)
    host = start_host("--entry-script", "score.py", "--source-dir", str(tmp_path / "counter"))
    answers = [json.loads(host.score({"data": [1]})[2])["served"] for _ in range(3)]
    assert answers == [1, 2, 3]
    assert (tmp_path / "counter" / "events.log").read_text().split() == ["imported", "init"]
