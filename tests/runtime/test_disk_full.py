"""A full state directory: services keep being supervised, the fault is named, and everything catches up.

The state directory is a small tmpfs (mounting needs root, as in CI; skipped with the reason
otherwise). A real controller deploys a real numpy service; the filesystem is then filled to the
last byte, a replica is killed, and the commands a user would run are run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from controller.backends.local import LocalBackend
from controller.structs.manifests import Kind
from controller.structs.states import ConditionType

from .conftest import SCORE_PY, Controller, GitRepo, doc, eventually, http, npy, stop_local_services

SERVICE = "numpy-svc"


@pytest.fixture
def small_state_dir(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs for the state directory."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    path = tmp_path / "state"
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            (path / "ballast").unlink()
        stop_local_services(path)
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(path: Path) -> None:
    """Write until the filesystem has no byte left."""
    chunk = b"\0" * (1024 * 1024)
    with open(path, "wb", buffering=0) as ballast:
        for size in (len(chunk), 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    ballast.write(chunk[:size])
    assert os.statvfs(path.parent).f_bavail == 0


def amlops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller", *args], capture_output=True, text=True, timeout=120)


def test_a_full_state_dir_keeps_services_supervised_is_reported_and_catches_up(
    tmp_path: Path, small_state_dir: Path, controllers: Callable[..., Controller]
) -> None:
    state = small_state_dir
    repo = GitRepo(tmp_path / "repo")
    repo.write("manifests/workspace.yaml", doc("Workspace", "local", {"backend": "local"}))
    repo.write("manifests/clusters/cpu.yaml",
               doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 1, "gpusPerNode": 0}))
    repo.write("manifests/models/scaler/scale.npy", npy(3.0))
    repo.write("manifests/models/scaler.yaml", doc("Model", "scaler", {"path": "scaler"}))
    repo.write("manifests/src/score.py", SCORE_PY)
    repo.write("manifests/services/svc.yaml", doc("Webservice", SERVICE, {
        "cluster": "cpu", "models": ["scaler"], "sourceDirectory": "../src", "entryScript": "score.py",
        "replicas": 2, "resources": {"cpu": 0.1, "memoryGb": 0.5, "gpu": 0}, "auth": "key", "maxQueueWaitMs": 10000}))
    first = repo.commit("deploy")
    c = controllers(["--repo", str(repo.root), "--path", "manifests", "--state-dir", str(state), "--interval", "1"],
                    tmp_path / "controller.log")
    eventually(lambda: c.status()["lastAppliedRevision"] == first, 180, "first deploy")

    backend = LocalBackend(state, "amlops")
    uri, key = backend.scoring_uri(SERVICE), backend.get_keys(SERVICE)[0]
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with backend.store.snapshot() as conn:
        row = backend.store.get_service(conn, SERVICE)
        recorded = backend.store.replicas(conn, SERVICE)
    assert row is not None and row.supervisor_pid is not None and len(recorded) == 2
    supervisor = psutil.Process(row.supervisor_pid)

    # The disk fills up; then a replica dies. Its supervisor must restart it all the same.
    fill(state / "ballast")
    victim = recorded[0].pid
    os.kill(victim, signal.SIGKILL)

    def replicas() -> set[int]:
        return {p.pid for p in supervisor.children() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}

    eventually(lambda: len(replicas()) == 2 and victim not in replicas(), 60, "the killed replica restarted")
    assert supervisor.is_running()
    for _ in range(5):
        assert http("POST", uri, b'{"data": [1]}', auth, timeout=30) == (200, "[3.0]")

    # The fault is named where users look: readiness, status, conditions.
    _code, body = eventually(lambda: (r := c.get("/readyz"))[0] == 503 and "state dir" in r[1] and r, 60,
                            "/readyz naming the state dir")
    assert body.startswith(f"state dir full: {state}") and "source unreachable" not in body, body
    status = c.status()
    assert status["stateDir"]["full"] is True and "No space left on device" in status["stateDir"]["error"]
    assert "amlops_state_dir_writable 0.0" in c.get("/metrics")[1]
    # Every command answers with one line, never a traceback.
    # Every command answers (reads need no space), or says in one line that the state dir is full.
    for args in (("status",), ("history",), ("plan", str(repo.root / "manifests")), ("keys", SERVICE)):
        done = amlops(*args, "--state-dir", str(state))
        assert "Traceback" not in done.stderr, (args, done.stderr)
        # plan's 2 means "changes": the restarted replica is not recorded yet, so it reads as drift.
        if done.returncode not in (0, 2 if args[0] == "plan" else 0):
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"amlops {args[0]}: state dir full: {state}"), (args, done)
    # A command that must write fails the same way, and changes nothing.
    done = amlops("keys", SERVICE, "--regenerate", "secondary", "--state-dir", str(state))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().startswith(f"amlops keys: state dir full: {state}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert backend.get_keys(SERVICE)[0] == key

    # Space comes back: the supervisor's records, the controller's history and readiness catch up.
    (state / "ballast").unlink()
    c.wait_ready(timeout=60)
    eventually(lambda: c.status()["stateDir"]["full"] is False, 60, "state dir writable again")
    assert "amlops_state_dir_writable 1.0" in c.get("/metrics")[1]

    def recorded_pids() -> set[int]:
        with backend.store.snapshot() as conn:
            return {r.pid for r in backend.store.replicas(conn, SERVICE)}

    eventually(lambda: recorded_pids() == replicas(), 60, "the supervisor's records caught up")

    def ready() -> bool:
        svc = backend.read().get(Kind.WEBSERVICE, SERVICE)
        cond = svc.condition(ConditionType.READY) if svc is not None else None
        return cond is not None and cond.status and svc is not None and svc.spec["replicas"] == 2

    eventually(ready, 60, "both replicas ready again, the restarted one included")
    repo.write("manifests/services/svc.yaml", doc("Webservice", SERVICE, {
        "cluster": "cpu", "models": ["scaler"], "sourceDirectory": "../src", "entryScript": "score.py",
        "replicas": 1, "resources": {"cpu": 0.1, "memoryGb": 0.5, "gpu": 0}, "auth": "key", "maxQueueWaitMs": 10000}))
    scaled = repo.commit("scale in")
    eventually(lambda: c.status()["lastAppliedRevision"] == scaled, 120, "a new commit applied after")
    history = json.loads(amlops("history", "--state-dir", str(state), "--output", "json").stdout)
    # The newest passes are the new commit's: applied once, then (a pass may follow) no-changes.
    newest = [h for h in history if h["revision"] == scaled]
    assert history[0]["revision"] == scaled and history[0]["status"] in ("applied", "no-changes"), history[:3]
    assert [h["status"] for h in newest][-1] == "applied", newest
    backend.close()
    assert c.stop() == 0
