"""Shared parts of the canary tests: a versioned scoring script, bounded loopback load, a reconcile driver."""

from __future__ import annotations

import contextlib
import http.client
import json
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.backends.local import LocalBackend
from controller.core.reconciling import ReconcileOptions, reconcile
from controller.core.recording import Recorder
from controller.structs.results import ReconcileOutcome, ReconcileStatus

from .conftest import Repo

SERVICE = "numpy-svc"

# The model folder says how this version behaves: its scale (what it answers), how long run()
# takes, whether every n-th request fails, whether init() fails. Changing it is a new version.
VERSIONED_SCORE_PY = textwrap.dedent(
    """
    import json
    import os
    import time

    def init():
        global scale, mode, count
        folder = os.environ["AZUREML_MODEL_DIR"]
        with open(os.path.join(folder, "scale.txt")) as f:
            scale = float(f.read())
        path = os.path.join(folder, "mode.json")
        mode = json.load(open(path)) if os.path.exists(path) else {}
        if mode.get("initFails"):
            raise RuntimeError("the model files are corrupt")
        count = 0

    def run(raw):
        global count
        count += 1
        time.sleep(mode.get("sleepMs", 20) / 1000.0)
        if mode.get("errorEvery") and count % mode["errorEvery"] == 0:
            raise ValueError("bad prediction")
        return [x * scale for x in json.loads(raw)["data"]]
    """
)

CANARY = {
    "strategy": "canary",
    "steps": [{"weight": 10, "minRequests": 15}, {"weight": 50, "minRequests": 15}, {"weight": 100, "minRequests": 15}],
    # p99 relative to the live version over the same window: robust to a busy machine slowing both.
    "analysis": {"maxErrorRate": 0.05, "maxP99Ratio": 4, "minRequests": 15},
}


def canary_repo(repo: Repo, rollout: dict[str, Any] | None = None, replicas: int = 1) -> None:
    """The test repo with the versioned script, version 1 (answers 2×) and a canary rollout."""
    repo.write("src/score.py", VERSIONED_SCORE_PY)
    repo.write("models/scaler/scale.txt", "2")
    repo.service(replicas=replicas, rollout=rollout or CANARY, maxConcurrentRequestsPerReplica=4)


def new_version(repo: Repo, scale: str = "3", **mode: Any) -> None:
    """Commit a new model version: it answers ``scale``× and behaves as ``mode`` says."""
    repo.write("models/scaler/scale.txt", scale)
    repo.write("models/scaler/mode.json", json.dumps(mode))


@dataclass
class Answer:
    at: float
    version: str  # "live" (2×), "candidate" (any other answer or a 5xx), or "failed"
    detail: str = ""


@dataclass
class Load:
    """A few keep-alive clients posting at a bounded rate; every answer is classified, every exception kept."""

    port: int
    key: str
    clients: int = 4
    rate_per_client: float = 15.0
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def finish(self) -> list[Answer]:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        return list(self.answers)

    def _client(self) -> None:
        body = json.dumps({"data": [1]}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        gap = 1.0 / self.rate_per_client
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                conn.request("POST", f"/api/v1/service/{SERVICE}/score", body, headers)
                response = conn.getresponse()
                data = response.read()
                answer = self._classify(response.status, data)
            except Exception as exc:  # every client exception is a failed request
                answer = Answer(time.monotonic(), "failed", f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            with self.lock:
                self.answers.append(answer)
            self.stop.wait(max(0.0, gap - (time.monotonic() - began)))
        conn.close()

    @staticmethod
    def _classify(status: int, data: bytes) -> Answer:
        now = time.monotonic()
        if status == 200:
            value = json.loads(data)
            return Answer(now, "live" if value == [2.0] else "candidate", str(value))
        if status == 500:
            return Answer(now, "candidate", f"HTTP 500 {data[:80]!r}")
        return Answer(now, "failed", f"HTTP {status} {data[:120]!r}")


def candidate_share(answers: list[Answer]) -> tuple[float, int, int]:
    """The candidate's share of all answers between its first and its last one: (share, candidate, all)."""
    times = [a.at for a in answers if a.version == "candidate"]
    if not times:
        return 0.0, 0, 0
    inside = [a for a in answers if times[0] <= a.at <= times[-1]]
    candidate = sum(1 for a in inside if a.version == "candidate")
    return candidate / len(inside), candidate, len(inside)


def drive(repo: Repo, backend: LocalBackend, recorder: Recorder, revision: str, deadline_s: float = 150.0,
          between: Callable[[ReconcileOutcome], None] | None = None) -> list[ReconcileOutcome]:
    """Reconcile until the pass is no longer a rollout under way (sleeping between passes, as the loop does)."""
    outcomes = []
    deadline = time.monotonic() + deadline_s
    options = ReconcileOptions(controller_name="test-controller")
    while True:
        outcome = reconcile(repo.root, ".", revision, lambda _ws: backend, recorder, options)
        outcomes.append(outcome)
        if between is not None:
            between(outcome)
        if outcome.status is not ReconcileStatus.PROGRESSING:
            return outcomes
        assert time.monotonic() < deadline, f"rollout still under way after {deadline_s} s: {outcome.changes}"
        time.sleep(outcome.requeue_after or 0.5)


def stopped_candidate(backend: LocalBackend) -> bool:
    """Whether no candidate version runs and no split is left."""
    from controller.backends.local.layouts import candidate_of, split_path

    with backend.store.snapshot() as conn:
        row = backend.store.get_service(conn, candidate_of(SERVICE))
    return row is None and not split_path(backend.state_dir, SERVICE).exists()


def failures(answers: list[Answer]) -> list[str]:
    return [a.detail for a in answers if a.version == "failed"]


def wait_for(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def port_of(backend: LocalBackend) -> int:
    return int(backend.scoring_uri(SERVICE).split(":")[2].split("/")[0])


def history_changes(recorder: Recorder) -> list[dict[str, Any]]:
    return [c for entry in recorder.history(200) for c in entry.changes]


def read_path(path: Path) -> str:
    return path.read_text()
