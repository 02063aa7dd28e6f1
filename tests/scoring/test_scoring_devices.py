"""What a replica says about the device its model runs on when its entry script never imports TensorFlow."""

from __future__ import annotations

from pathlib import Path

from scoring_hosts import Host, StartHost

from controller.scoring.devices import short_name


def test_a_replica_without_tensorflow_reports_no_device_and_imports_none(echo_host: Host) -> None:
    status = echo_host.status()
    assert (status["device"], status["deviceSource"]) == ("none", "no-tensorflow"), status
    code, _headers, body = echo_host.request("GET", "/metrics")
    assert code == 200
    assert 'amlops_scoring_device_info{device="none",source="no-tensorflow"} 1.0' in body.decode()
    assert "devicesource=no-tensorflow" in echo_host.log().lower()


def test_pre_forked_workers_report_their_device_through_the_parents_status_file(
        start_host: StartHost, echo_dir: Path) -> None:
    host = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir), "--workers", "2")
    status = host.status()
    assert (status["device"], status["deviceSource"]) == ("none", "no-tensorflow"), status


def test_tensorflow_device_names_are_shortened_to_type_and_index() -> None:
    assert short_name("/job:localhost/replica:0/task:0/device:GPU:1") == "GPU:1"
    assert short_name("/device:gpu:0/stream:all") == "GPU:0"
    assert short_name("") == "unknown"
