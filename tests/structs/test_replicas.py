"""The contract between the local backend and the scoring host: each side reads what the other writes."""

from __future__ import annotations

from pathlib import Path

from controller.backends.keys import read_keys, write_keys
from controller.backends.local.processes import read_status
from controller.scoring.keys import KeyRing
from controller.scoring.options import parse_options
from controller.scoring.reporting import write_status
from controller.structs.replicas import ReplicaLaunch, ReplicaState, ReplicaStatus, ServiceLaunch, load_fields

SERVICE = ServiceLaunch(python="/usr/bin/python3", model_dir="/m", service_name="svc", auth="key",
                        scoring_timeout_ms=1500, max_concurrent=4, max_queue_wait_ms=250, tensorflow_compat="v1",
                        metrics_dir="/s/metrics", version_label="model:2", keys_file="/s/keys.json",
                        entry_script="score.py", source_dir="/s/src/abc")
REPLICA = ReplicaLaunch(listen_fd=7, fd_socket="/run/svc.sock", status_file="/s/run/r0.json", replica=1,
                        split_file="/s/split.json")


def test_the_scoring_host_reads_every_flag_the_backend_and_the_supervisor_pass() -> None:
    argv = SERVICE.argv() + REPLICA.argv()
    assert argv[:3] == ["/usr/bin/python3", "-m", "controller.scoring"]
    options = parse_options(argv[3:])
    assert (options.model_dir, options.service_name, options.auth, options.keys_file) == ("/m", "svc", "key", "/s/keys.json")
    assert (options.scoring_timeout_ms, options.max_concurrent, options.max_queue_wait_ms) == (1500, 4, 250)
    assert (options.tensorflow_compat, options.log_format, options.metrics_dir, options.version) == (
        "v1", "json", "/s/metrics", "model:2")
    assert (options.entry_script, options.source_dir) == ("/s/src/abc/score.py", "/s/src/abc")
    assert (options.listen_fd, options.fd_socket, options.defer_accept) == (7, "/run/svc.sock", True)
    assert (options.status_file, options.replica, options.split_file) == ("/s/run/r0.json", "1", "/s/split.json")


def test_a_services_launch_text_is_unchanged_so_an_upgrade_rolls_no_replica() -> None:
    # The text is hashed into the service's generation: any change restarts every running service.
    assert SERVICE.argv()[3:] == [
        "--model-dir", "/m", "--service-name", "svc", "--auth", "key", "--scoring-timeout-ms", "1500",
        "--max-concurrent", "4", "--max-queue-wait-ms", "250", "--tensorflow-compat", "v1", "--log-format", "json",
        "--metrics-dir", "/s/metrics", "--version-label", "model:2", "--keys-file", "/s/keys.json",
        "--entry-script", "score.py", "--source-dir", "/s/src/abc"]


def test_a_status_file_a_replica_writes_reads_back_as_its_state_and_load(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    assert read_status(str(path)) == ReplicaStatus(ReplicaState.INITIALIZING)  # not written yet
    write_status(str(path), ReplicaState.READY, port=5001, **load_fields(3, 8, {"requests": 5}))
    assert read_status(str(path)) == ReplicaStatus(ReplicaState.READY, None, 3, 8, {"requests": 5})
    write_status(str(path), ReplicaState.FAILED, error="init() raised ValueError")
    assert read_status(str(path)) == ReplicaStatus(ReplicaState.FAILED, "init() raised ValueError")
    path.write_text('{"state": "ready", "inFlight": -1, "capacity": true}')  # a count must be a count
    assert read_status(str(path)) == ReplicaStatus(ReplicaState.READY)


def test_the_keys_the_backend_writes_are_the_keys_the_scoring_host_accepts(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    write_keys(path, "first-key", "second-key")
    ring = KeyRing(str(path), "key")
    assert read_keys(path) == ("first-key", "second-key")
    assert ring.accepts(b"Bearer first-key") and ring.accepts(b"Bearer second-key")
    assert not ring.accepts(b"Bearer third-key")
