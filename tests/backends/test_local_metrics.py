"""One scrape of a service's /metrics is a true view of all its replicas, whichever replica answers it."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.backends.local import LocalBackend

from .conftest import Repo, apply_all, post

SERVICE = "numpy-svc"
REQUESTS = 24


def _scrape(base: str) -> str:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:  # a new connection each time
        return str(response.read().decode())


def _scored(text: str) -> dict[tuple[str, str, str], float]:
    """200 answers to scoring requests per (service, version, replica) in one scrape."""
    found: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "amlops_scoring_requests_total" and labels.get("route") == "score" and labels.get("code") == "200":
                key = (labels["service"], labels["version"], labels["replica"])
                found[key] = found.get(key, 0.0) + float(sample.value)
    return found


def test_every_scrape_shows_every_replica_and_no_counter_goes_back(backend: LocalBackend, repo: Repo) -> None:
    apply_all(backend, repo)
    uri = backend.scoring_uri(SERVICE)
    parts = urlsplit(uri)
    base = f"{parts.scheme}://{parts.netloc}"
    primary, _secondary = backend.get_keys(SERVICE)
    # Both replicas accept on one port, so which one answers is the kernel's choice: send requests
    # until each has answered some and every scrape adds up to every request (snapshots are shared
    # about every second).
    sent = 0
    deadline = time.monotonic() + 60
    while True:
        scored = _scored(_scrape(base))
        replicas = {replica for _svc, _version, replica in scored}
        if replicas == {"0", "1"} and sum(scored.values()) == sent:
            break
        assert time.monotonic() < deadline, (sent, scored)
        if replicas != {"0", "1"} or sent < REQUESTS:
            with ThreadPoolExecutor(8) as pool:  # requests at once: a busy replica leaves the next to the other
                codes = list(pool.map(lambda n: post(uri, {"data": [n]}, primary)[0], range(REQUESTS // 3)))
            assert codes == [200] * len(codes)
            sent += len(codes)
        time.sleep(0.2)

    previous: dict[tuple[str, str, str], float] = {}
    for _ in range(12):
        scored = _scored(_scrape(base))
        assert {replica for _svc, _version, replica in scored} == {"0", "1"}, scored
        assert {(svc, version) for svc, version, _replica in scored} == {(SERVICE, "scaler:1")}, scored
        assert sum(scored.values()) == sent, scored
        for key, value in previous.items():
            assert scored.get(key, 0.0) >= value, (key, previous, scored)
        previous = scored


def test_promtool_accepts_a_service_metrics_scrape(backend: LocalBackend, repo: Repo) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make setup installs Debian's prometheus package when root)")
    apply_all(backend, repo)
    uri = backend.scoring_uri(SERVICE)
    parts = urlsplit(uri)
    base = f"{parts.scheme}://{parts.netloc}"
    primary, _secondary = backend.get_keys(SERVICE)
    assert post(uri, {"data": [1]}, primary)[0] == 200
    time.sleep(1.5)  # both replicas have shared a snapshot: the scrape is a merged one
    text = _scrape(base)
    assert len({s.labels.get("replica") for f in text_string_to_metric_families(text) for s in f.samples}) == 2
    assert "_created" not in text  # no start-of-counting series beside each counter, as on the controller
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
