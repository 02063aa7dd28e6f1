"""Opportunistic batching for entry scripts that define run_batch()."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from scoring_hosts import StartHost, metric_value, write_script

pytestmark = pytest.mark.timeout(60)

BATCH_SCRIPT = '''
import json
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def init():
    pass


def run(raw_data):
    raise AssertionError("run_batch must be preferred")


def run_batch(raw_list):
    with open(os.path.join(HERE, "batches.log"), "a") as log:
        log.write(f"{len(raw_list)}\\n")
    time.sleep(0.05)  # long enough for concurrent requests to queue up behind a batch
    return [json.loads(raw)["x"] * 10 for raw in raw_list]
'''


def batch_sizes(folder: Path) -> list[int]:
    path = folder / "batches.log"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_concurrent_requests_are_merged_into_batches_with_correct_answers(
    start_host: StartHost, tmp_path: Path
) -> None:
    folder = tmp_path / "batching"
    write_script(folder, BATCH_SCRIPT)
    host = start_host("--entry-script", "score.py", "--source-dir", str(folder))
    results: dict[int, tuple[int, bytes]] = {}

    def client(x: int) -> None:
        status, _headers, body = host.score({"x": x})
        results[x] = (status, body)

    threads = [threading.Thread(target=client, args=(x,)) for x in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert all(results[x] == (200, json.dumps(x * 10).encode()) for x in range(24))
    sizes = batch_sizes(folder)
    assert sum(sizes) == 24
    assert max(sizes) > 1, f"no batch merged concurrent requests: {sizes}"


def test_a_lone_request_is_scored_alone(start_host: StartHost, tmp_path: Path) -> None:
    folder = tmp_path / "batching"
    write_script(folder, BATCH_SCRIPT)
    host = start_host("--entry-script", "score.py", "--source-dir", str(folder))
    assert host.score({"x": 4})[:1] == (200,)
    assert batch_sizes(folder) == [1]
    assert metric_value(host.request("GET", "/metrics")[2].decode(), "amlops_scoring_batch_size_count") == 1.0
