"""SIGTERM while a rollout is under way: the controller exits cleanly and no scoring request is lost.

A real ``amlops run`` process rolls a real numpy service to a new model; clients score through
the whole time, counting every answer that is not a 200 and every client exception as a failure.
"""

from __future__ import annotations

import json
import signal
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.backends.local import LocalBackend

from .conftest import Controller, GitRepo, doc, eventually, npy, stop_local_services

SERVICE = "numpy-svc"
# init() takes a moment, so the roll (one replica at a time) is still going when SIGTERM comes.
SLOW_SCORE_PY = """
import json, os, time
import numpy as np

def init():
    global scale
    time.sleep(1.5)
    scale = np.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], "scale.npy"))

def run(raw_data):
    return (np.array(json.loads(raw_data)["data"], dtype=float) * scale).tolist()
"""


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    stop_local_services(path)


def test_sigterm_mid_rollout_exits_zero_loses_no_request_and_the_rollout_completes(
    tmp_path: Path, state_dir: Path, controllers: Callable[..., Controller]
) -> None:
    repo = GitRepo(tmp_path / "repo")
    repo.write("manifests/workspace.yaml", doc("Workspace", "local", {"backend": "local"}))
    repo.write("manifests/clusters/cpu.yaml",
               doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 1, "gpusPerNode": 0}))
    repo.write("manifests/models/scaler/scale.npy", npy(2.0))
    repo.write("manifests/models/scaler.yaml", doc("Model", "scaler", {"path": "scaler"}))
    repo.write("manifests/src/score.py", SLOW_SCORE_PY)
    repo.write("manifests/services/svc.yaml", doc("Webservice", SERVICE, {
        "cluster": "cpu", "models": ["scaler"], "sourceDirectory": "../src", "entryScript": "score.py",
        "replicas": 2, "resources": {"cpu": 0.1, "memoryGb": 0.5, "gpu": 0}, "auth": "key", "maxQueueWaitMs": 10000}))
    first = repo.commit("deploy")
    args = ["--repo", str(repo.root), "--path", "manifests", "--state-dir", str(state_dir), "--interval", "1"]
    c = controllers(args, tmp_path / "controller.log")
    eventually(lambda: c.status()["lastAppliedRevision"] == first, 180, "first deploy")

    backend = LocalBackend(state_dir, "amlops")
    uri, key = backend.scoring_uri(SERVICE), backend.get_keys(SERVICE)[0]
    answers: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        request = urllib.request.Request(uri, data=b'{"data": [1]}', method="POST", headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        while not stop.is_set():
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    answers.append(json.loads(response.read())[0])
            except Exception as exc:  # refused, reset, HTTP error: every one is a lost request
                failures.append(repr(exc))

    def generation() -> int:
        with backend.store.snapshot() as conn:
            row = backend.store.get_service(conn, SERVICE)
        return row.generation if row is not None else -1

    clients = [threading.Thread(target=client, daemon=True) for _ in range(3)]
    for thread in clients:
        thread.start()
    try:
        eventually(lambda: len(answers) >= 20, 60, "answers from the first model")
        before = generation()
        repo.write("manifests/models/scaler/scale.npy", npy(5.0))
        repo.commit("new model")
        # The controller has written the new generation and is waiting for it to be ready: stop it now.
        eventually(lambda: generation() > before, 120, "the rollout to begin")
        assert c.stop(signal.SIGTERM, timeout=120) == 0
        # The supervisor owns the roll: it finishes without the controller.
        eventually(lambda: answers[-6:] == [5.0] * 6, 120, "the new model answering")
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
    assert failures == [], f"{len(failures)} of {len(answers) + len(failures)} requests failed: {failures[:5]}"
    assert set(answers) == {2.0, 5.0}
    assert "controller.stopped" in c.log()
    backend.close()
