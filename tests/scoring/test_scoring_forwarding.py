"""The weighted hand-off: a live scoring host sends exactly its split's share of requests to a candidate."""

from __future__ import annotations

import json
from pathlib import Path

from scoring_hosts import Host, StartHost, wait_until


def _pid(answer: tuple[int, dict[str, str], bytes]) -> int:
    status, _headers, body = answer
    assert status == 200, body
    return int(json.loads(body)["pid"])


def _hosts(start_host: StartHost, echo_dir: Path, tmp_path: Path) -> tuple[Host, Host, Path]:
    split = tmp_path / "split.json"
    live = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir), "--split-file", str(split))
    candidate = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir))
    return live, candidate, split


def _write(split: Path, weight: int, port: int) -> None:
    tmp = split.with_suffix(".tmp")
    tmp.write_text(json.dumps({"weight": weight, "port": port}))
    tmp.replace(split)


def test_a_split_sends_exactly_its_weight_to_the_candidate_and_counts_each_side(
    start_host: StartHost, echo_dir: Path, tmp_path: Path
) -> None:
    live, candidate, split = _hosts(start_host, echo_dir, tmp_path)
    live_pid, candidate_pid = live.status()["pid"], candidate.status()["pid"]
    _write(split, 25, candidate.port)
    warm_up: list[int] = []
    wait_until(lambda: warm_up.append(_pid(live.score({"data": [1]}))) or warm_up[-1] == candidate_pid, timeout=5)
    answers = [_pid(live.score({"data": [1]})) for _ in range(100)]

    assert answers.count(candidate_pid) == 25 and answers.count(live_pid) == 75
    forwarded = warm_up.count(candidate_pid) + 25
    wait_until(lambda: live.status().get("traffic", {}).get("forwarded") == forwarded)
    traffic = live.status()["traffic"]
    assert traffic["requests"] == len(warm_up) + 100 - forwarded  # what it ran itself
    assert traffic["errors"] == 0 and sum(traffic["latency"]) == traffic["requests"]
    wait_until(lambda: candidate.status().get("traffic", {}).get("requests") == forwarded)


def test_without_a_candidate_to_answer_requests_are_served_here(
    start_host: StartHost, echo_dir: Path, tmp_path: Path
) -> None:
    live, candidate, split = _hosts(start_host, echo_dir, tmp_path)
    live_pid, candidate_pid = live.status()["pid"], candidate.status()["pid"]
    _write(split, 100, candidate.port)
    wait_until(lambda: _pid(live.score({"data": [1]})) == candidate_pid, timeout=5)
    assert candidate.stop() == 0  # the candidate goes away while the split still points at it

    assert [_pid(live.score({"data": [1]})) for _ in range(20)] == [live_pid] * 20


def test_weight_zero_or_no_file_forwards_nothing(start_host: StartHost, echo_dir: Path, tmp_path: Path) -> None:
    live, candidate, split = _hosts(start_host, echo_dir, tmp_path)
    live_pid = live.status()["pid"]
    _write(split, 0, candidate.port)
    assert [_pid(live.score({"data": [1]})) for _ in range(20)] == [live_pid] * 20
    split.unlink()
    assert [_pid(live.score({"data": [1]})) for _ in range(5)] == [live_pid] * 5
