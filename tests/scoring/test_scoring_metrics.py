"""The shared /metrics view across a service's processes: whichever process a scrape lands on, no series steps back."""

from __future__ import annotations

from pathlib import Path

import pytest
from scoring_hosts import StartHost, metric_value

pytestmark = pytest.mark.timeout(60)


def test_a_scrape_on_another_process_never_shows_less_than_the_last_scrape_showed(
    start_host: StartHost, echo_dir: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "metrics"
    flags = ("--entry-script", "score.py", "--source-dir", str(echo_dir), "--metrics-dir", str(shared),
             "--version-label", "echo:1")
    first = start_host(*flags, "--replica", "0")
    second = start_host(*flags, "--replica", "1")
    for round_ in range(1, 6):
        for _ in range(5):
            assert second.score({"data": [1]})[0] == 200
        # A scraper reads the second replica's series from it, then, at once, from the first replica.
        _code, _headers, own = second.request("GET", "/metrics")
        _code, _headers, shared_view = first.request("GET", "/metrics")
        seen_on_second = metric_value(own.decode(), "amlops_scoring_requests_total", replica="1", route="score", code="200")
        seen_on_first = metric_value(shared_view.decode(), "amlops_scoring_requests_total", replica="1", route="score",
                                     code="200")
        assert seen_on_second == 5 * round_
        assert seen_on_first == seen_on_second, f"round {round_}: a counter reset {seen_on_second} → {seen_on_first}"
