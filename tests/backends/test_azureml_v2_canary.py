"""Canary rollouts on the azureml backend (API v2) against the emulator: the same engine as locally.

Real azure-ai-ml + azure-identity in each controller process, real scoring replicas per deployment,
the endpoint's traffic table as the split and Azure Monitor's metrics route (azure-monitor-query)
as the figures. Load: a few keep-alive clients through the endpoint's one scoring URI at a bounded
rate; each answer is classified by the ``azureml-model-deployment`` header the router sets (the
live deployment, or the candidate); every client exception and every non-200 answer of the live
deployment is a failed request. Tolerance for the bad version's share: its step's weight plus 5
points (the router's split is exact; the points cover answers in flight while the table changes).
"""

from __future__ import annotations

import http.client
import json
import re
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from .test_azureml_v2 import SCORE, Reconciler, Repo, emulators, start

pytestmark = pytest.mark.azureml

SERVICE = "svc-tiny"
TOLERANCE = 0.05
CANARY = {
    "strategy": "canary",
    "steps": [{"weight": 10, "minRequests": 15}, {"weight": 50, "minRequests": 15}, {"weight": 100, "minRequests": 15}],
    "analysis": {"maxErrorRate": 0.05, "maxP99Ratio": 4, "minRequests": 15},
    "sampleRequest": {"body": json.dumps({"data": [[1, 1]]})},
}
# For versions that are good (the same code with other weights): p99 within 10× the live one's, as
# a busy machine's blips at 100 %, where one replica takes all the load, are no reason to roll back.
GOOD_CANARY = {**CANARY, "analysis": {"maxErrorRate": 0.05, "maxP99Ratio": 10, "minRequests": 15}}
# The live version's script, failing every third request it answers.
ERRORING = SCORE + textwrap.dedent('''
    calls = 0
    _run = run

    def run(raw_data):
        global calls
        calls += 1
        if calls % 3 == 0:
            raise ValueError("bad prediction")
        return _run(raw_data)
''')
INIT_FAILS = "def init():\n    raise RuntimeError('weights are corrupt')\n\ndef run(raw):\n    return []\n"


@dataclass
class Answer:
    at: float
    who: str  # "live", "candidate" or "failed"
    detail: str = ""


@dataclass
class EndpointLoad:
    """Keep-alive clients posting to the endpoint's scoring URI at a bounded rate."""

    uri: str
    key: str
    live: str
    clients: int = 4
    rate_per_client: float = 10.0
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> EndpointLoad:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _client(self) -> None:
        target = urlsplit(self.uri)
        body = json.dumps({"data": [[1, 1]]}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"}
        conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port or 80, timeout=60)
        gap = 1.0 / self.rate_per_client
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                conn.request("POST", target.path, body, headers)
                response = conn.getresponse()
                data = response.read()
                answer = self._classify(response.status, response.getheader("azureml-model-deployment"), data)
            except Exception as exc:  # every client exception is a failed request
                answer = Answer(time.monotonic(), "failed", f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port or 80, timeout=60)
            with self.lock:
                self.answers.append(answer)
            self.stop.wait(max(0.0, gap - (time.monotonic() - began)))
        conn.close()

    def _classify(self, status: int, deployment: str | None, data: bytes) -> Answer:
        now = time.monotonic()
        if deployment == self.live:
            return Answer(now, "live" if status == 200 else "failed", f"{self.live}: HTTP {status} {data[:100]!r}")
        if deployment and status in (200, 500):
            return Answer(now, "candidate", f"{deployment}: HTTP {status} {data[:100]!r}")
        return Answer(now, "failed", f"{deployment}: HTTP {status} {data[:120]!r}")

    def failures(self) -> list[str]:
        return [a.detail for a in self.answers if a.who == "failed"]

    def candidate_share(self) -> tuple[float, int, int]:
        """The candidate's share of all answers between its first and last one: (share, candidate, all)."""
        times = [a.at for a in self.answers if a.who == "candidate"]
        if not times:
            return 0.0, 0, 0
        inside = [a for a in self.answers if times[0] <= a.at <= times[-1]]
        candidate = sum(1 for a in inside if a.who == "candidate")
        return candidate / len(inside), candidate, len(inside)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Any:
    running = start(tmp_path_factory.mktemp("azureml-v2-canary"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("azureml-v2-canary-work")


@pytest.fixture(scope="module")
def reconcile(emulator: Any, workdir: Path) -> Reconciler:
    return Reconciler(emulator, workdir)


@pytest.fixture
def live(emulator: Any, workdir: Path, reconcile: Reconciler) -> tuple[Repo, dict[str, Any]]:
    """Version 1 (answers [[3.0]]) live on one deployment, rolled out plainly; its endpoint's URI, key, deployment."""
    config = json.loads((emulator.state_dir / "config.json").read_text())
    repo = Repo(workdir / "repo", config)
    out = reconcile(repo, predict={"service": SERVICE, "rows": [[1, 1]]})
    assert out["status"] in ("applied", "no-changes"), json.dumps(out, indent=1)[:4000]
    predict = out["predict"]
    assert predict["body"] == [[3.0]] and len(predict["deployments"]) == 1, predict
    return repo, predict


def _webservice(out: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in out["changes"] if c["id"] == f"Webservice/{SERVICE}")


def _deployments(emulator: Any) -> dict[str, int]:
    """The endpoint's deployments and its traffic table, read over ARM."""
    ws = emulator.workspace_id()
    status, endpoint = emulator.arm("GET", f"{ws}/onlineEndpoints/{SERVICE}")
    assert status == 200, endpoint
    status, listed = emulator.arm("GET", f"{ws}/onlineEndpoints/{SERVICE}/deployments")
    assert status == 200, listed
    traffic = endpoint["properties"]["traffic"]
    return {d["name"]: int(traffic.get(d["name"], 0)) for d in listed["value"]}


def test_a_good_version_passes_every_v2_canary_step_and_reaches_all_traffic(
        emulator: Any, reconcile: Reconciler, live: tuple[Repo, dict[str, Any]]) -> None:
    repo, first = live
    repo.service(rollout=GOOD_CANARY)
    repo.weights([[2.0], [2.0]])  # version 2 answers [[4.0]]
    with EndpointLoad(first["uri"], first["key"], first["deployments"][0]) as load:
        out = reconcile(repo, drive={"service": SERVICE}, predict={"service": SERVICE, "rows": [[1, 1]]})
    assert out["status"] == "applied", json.dumps(out, indent=1)[:6000]
    assert load.failures() == []
    change = _webservice(out)
    assert [s["weight"] for s in change["rollout"]] == [10, 50, 100], change
    assert all(s["candidate"]["requests"] >= 15 and s["candidate"]["errors"] == 0 for s in change["rollout"])
    # Where it stood pass by pass, as `amlops rollout status` shows it: every step, with live figures.
    steps = [p["rollout"]["step"] for p in out["passes"] if p["rollout"] and "step" in p["rollout"]]
    assert {1, 2, 3} <= set(steps), out["passes"]
    assert any(p["rollout"]["window"]["candidate"]["requests"] > 0 for p in out["passes"]
               if p["rollout"] and "window" in p["rollout"])
    new = out["predict"]
    assert new["body"] == [[4.0]] and new["deployments"] != first["deployments"] and len(new["deployments"]) == 1
    assert _deployments(emulator) == {new["deployments"][0]: 100}
    # Done means done: the next pass changes nothing.
    again = reconcile(repo)
    assert again["status"] == "no-changes", again


def test_a_v2_version_that_errors_on_a_share_of_requests_is_rolled_back_at_the_first_step(
        emulator: Any, reconcile: Reconciler, live: tuple[Repo, dict[str, Any]]) -> None:
    repo, first = live
    repo.service(rollout=CANARY)
    repo.write("src/score.py", ERRORING)
    with EndpointLoad(first["uri"], first["key"], first["deployments"][0]) as load:
        out = reconcile(repo, drive={"service": SERVICE})
    assert out["status"] == "failed", json.dumps(out, indent=1)[:6000]
    change = _webservice(out)
    assert change["reason"] == "AnalysisFailed", change
    assert change["error"].startswith("analysis failed at step 1 (10 %): error rate "), change
    # The figure is Azure Monitor's, counted by the endpoint's router: about every third answer of the candidate.
    rate, requests = re.search(r"error rate ([\d.]+) % > 5.0 % over (\d+) requests", change["error"]).groups()
    assert int(requests) >= 15 and 20.0 <= float(rate) <= 50.0, change["error"]
    assert load.failures() == [], load.failures()[:5]
    share, candidate, total = load.candidate_share()
    assert candidate > 0 and share <= 0.10 + TOLERANCE, (share, candidate, total)
    assert _deployments(emulator) == {first["deployments"][0]: 100}
    stalled = {c[0]: c for c in out["resources"][f"Webservice/{SERVICE}"]}["Stalled"]
    assert stalled[1] is True and "error rate" in stalled[3], stalled
    # Stalled on that input: the next pass does not try again.
    again = reconcile(repo)
    assert not [c for c in again["changes"] if c["id"] == f"Webservice/{SERVICE}"], again
    repo.write("src/score.py", SCORE)


def test_a_v2_version_whose_init_fails_is_rolled_back_without_traffic(
        emulator: Any, reconcile: Reconciler, live: tuple[Repo, dict[str, Any]]) -> None:
    repo, first = live
    repo.service(rollout=CANARY)
    repo.write("src/score.py", INIT_FAILS)
    with EndpointLoad(first["uri"], first["key"], first["deployments"][0]) as load:
        out = reconcile(repo, drive={"service": SERVICE})
    assert out["status"] == "failed", json.dumps(out, indent=1)[:6000]
    change = _webservice(out)
    assert change["reason"] == "CandidateFailed" and "failed to start" in change["error"], change
    assert load.answers and load.failures() == [] and all(a.who == "live" for a in load.answers)
    assert _deployments(emulator) == {first["deployments"][0]: 100}
    repo.write("src/score.py", SCORE)


def _amlops(emulator: Any, repo: Repo, workdir: Path, *args: str) -> str:
    argv = [*args, "--path", "repo", "--state-dir", str(workdir / "cli-state")]
    script = (f"import runpy, sys; sys.argv = ['amlops', *{argv!r}]; "
              "runpy.run_module('controller', run_name='__main__', alter_sys=True)")
    done = emulator.sdk(script, repo.root.parent, timeout=240, extra_env={"PYTHONPATH": str(emulators.REPO)})
    assert done.returncode == 0, f"amlops {args}: {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return str(done.stdout)


def test_a_killed_controller_leaves_a_v2_rollout_that_status_shows_and_abort_returns_to_live(
        emulator: Any, reconcile: Reconciler, workdir: Path, live: tuple[Repo, dict[str, Any]]) -> None:
    repo, first = live
    repo.service(rollout=GOOD_CANARY)
    repo.weights([[5.0], [5.0]])
    live_name = first["deployments"][0]
    with EndpointLoad(first["uri"], first["key"], live_name) as load:
        killed = reconcile(repo, drive={"service": SERVICE, "exitAtStep": 2})
        assert killed["status"] == "killed", killed
        # Nobody drives it now: the split and the state stay on the endpoint, where the CLI finds them.
        split = _deployments(emulator)
        assert split[live_name] == 50 and sorted(split.values()) == [50, 50], split
        status = json.loads(_amlops(emulator, repo, workdir, "rollout", "status", SERVICE, "--output", "json"))
        assert status["rollout"]["step"] == 2 and status["rollout"]["weight"] == 50, status
        assert [p["weight"] for p in status["rollout"]["passed"]] == [10], status
        assert "abort requested" in _amlops(emulator, repo, workdir, "rollout", "abort", SERVICE)
        # A restarted controller takes the stored rollout up, with the person's request.
        out = reconcile(repo, drive={"service": SERVICE})
    assert out["status"] == "failed", json.dumps(out, indent=1)[:6000]
    change = _webservice(out)
    assert change["reason"] == "RolloutAborted" and "amlops rollout abort at step 2 (50 %)" in change["error"], change
    assert load.failures() == [], load.failures()[:5]
    assert _deployments(emulator) == {live_name: 100}
    after = [a for a in load.answers if a.at > time.monotonic() - 0.5]
    assert all(a.who == "live" for a in after)
    repo.weights([[1.0], [2.0]])


def test_a_killed_controller_resumes_a_v2_canary_where_it_stood_and_reaches_all_traffic(
        emulator: Any, reconcile: Reconciler, live: tuple[Repo, dict[str, Any]]) -> None:
    repo, first = live
    repo.service(rollout=GOOD_CANARY)
    repo.weights([[3.0], [3.0]])
    with EndpointLoad(first["uri"], first["key"], first["deployments"][0]) as load:
        killed = reconcile(repo, drive={"service": SERVICE, "exitAtStep": 2})
        assert killed["status"] == "killed", killed
        out = reconcile(repo, drive={"service": SERVICE}, predict={"service": SERVICE, "rows": [[1, 1]]})
    assert out["status"] == "applied", json.dumps(out, indent=1)[:6000]
    assert load.failures() == []
    # The step passed before the kill is in the record with the two after it.
    assert [s["weight"] for s in _webservice(out)["rollout"]] == [10, 50, 100]
    assert out["predict"]["body"] == [[6.0]] and len(out["predict"]["deployments"]) == 1


SLOW = SCORE + textwrap.dedent('''
    import time
    _fast = run

    def run(raw_data):
        time.sleep(0.2)
        return _fast(raw_data)
''')


def test_a_much_slower_v2_version_is_rolled_back_on_its_p99_against_the_live_deployment(
        emulator: Any, reconcile: Reconciler, live: tuple[Repo, dict[str, Any]]) -> None:
    repo, first = live
    repo.service(rollout=CANARY)
    repo.write("src/score.py", SLOW)  # the live version answers in a few ms
    with EndpointLoad(first["uri"], first["key"], first["deployments"][0]) as load:
        out = reconcile(repo, drive={"service": SERVICE})
    assert out["status"] == "failed", json.dumps(out, indent=1)[:6000]
    change = _webservice(out)
    assert change["reason"] == "AnalysisFailed" and "× live p99" in change["error"], change
    assert change["error"].startswith("analysis failed at step 1 (10 %): p99 "), change
    assert load.failures() == [], load.failures()[:5]
    share, candidate, total = load.candidate_share()
    assert candidate > 0 and share <= 0.10 + TOLERANCE, (share, candidate, total)
    assert _deployments(emulator) == {first["deployments"][0]: 100}
    repo.write("src/score.py", SCORE)


def test_a_v2_blue_green_gives_the_checked_new_deployment_all_traffic_at_once(
        emulator: Any, reconcile: Reconciler, live: tuple[Repo, dict[str, Any]]) -> None:
    repo, first = live
    repo.service(rollout={"strategy": "blueGreen", "sampleRequest": {"body": json.dumps({"data": [[1, 1]]}),
                                                                    "expect": "[[7.0]]"}})
    repo.weights([[3.0], [4.0]])  # version 2 answers [[7.0]]
    with EndpointLoad(first["uri"], first["key"], first["deployments"][0]) as load:
        out = reconcile(repo, drive={"service": SERVICE}, predict={"service": SERVICE, "rows": [[1, 1]]})
    assert out["status"] == "applied", json.dumps(out, indent=1)[:6000]
    assert load.failures() == []
    # Never a split: the live deployment answered everything until the new one answered everything
    # (answers already in flight at the switch may land just after it).
    switch = min(a.at for a in load.answers if a.who == "candidate")
    assert all(a.at < switch + 1.0 for a in load.answers if a.who == "live")
    assert all(a.who == "candidate" for a in load.answers if a.at > switch + 1.0)
    assert _webservice(out)["rollout"] == []
    assert out["predict"]["body"] == [[7.0]] and len(out["predict"]["deployments"]) == 1


def test_a_scale_change_under_a_canary_strategy_is_made_in_place_without_a_rollout(
        emulator: Any, reconcile: Reconciler, live: tuple[Repo, dict[str, Any]]) -> None:
    repo, first = live
    repo.service(rollout=CANARY)
    assert reconcile(repo)["status"] in ("applied", "no-changes")
    repo.service(rollout=CANARY, replicas=2)
    out = reconcile(repo, predict={"service": SERVICE, "rows": [[1, 1]]})
    assert out["status"] == "applied", json.dumps(out, indent=1)[:6000]
    assert out["predict"]["deployments"] == first["deployments"], out["predict"]
    ws = emulator.workspace_id()
    status, dep = emulator.arm("GET", f"{ws}/onlineEndpoints/{SERVICE}/deployments/{first['deployments'][0]}")
    assert status == 200 and dep["sku"]["capacity"] == 2, dep


def test_a_person_promotes_a_v2_canary_by_hand_from_its_first_step(
        emulator: Any, reconcile: Reconciler, workdir: Path, live: tuple[Repo, dict[str, Any]]) -> None:
    repo, first = live
    slow_steps = {**GOOD_CANARY, "steps": [{"weight": 10, "pauseSeconds": 600}, {"weight": 100, "pauseSeconds": 600}]}
    repo.service(rollout=slow_steps)
    repo.weights([[4.0], [4.0]])  # version 2 answers [[8.0]]
    with EndpointLoad(first["uri"], first["key"], first["deployments"][0]) as load:
        killed = reconcile(repo, drive={"service": SERVICE, "exitAtStep": 1})
        assert killed["status"] == "killed", killed
        assert "promote requested" in _amlops(emulator, repo, workdir, "rollout", "promote", SERVICE)
        out = reconcile(repo, drive={"service": SERVICE}, predict={"service": SERVICE, "rows": [[1, 1]]})
    assert out["status"] == "applied", json.dumps(out, indent=1)[:6000]
    assert load.failures() == []
    # Ten-minute pauses, yet done at once: the person's promote skipped them.
    assert out["predict"]["body"] == [[8.0]] and len(out["predict"]["deployments"]) == 1
    assert _deployments(emulator) == {out["predict"]["deployments"][0]: 100}
