"""A controller's credentials never reach the processes that run users' code; its state files are owner-only.

A real ``amlops run`` process with credentials in its environment deploys a real numpy service;
the supervisor's and the replicas' environments are read from ``/proc/<pid>/environ``.
"""

from __future__ import annotations

import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from controller.backends.local import LocalBackend
from controller.structs.manifests import Kind

from .conftest import SCORE_PY, Controller, GitRepo, doc, eventually, http, npy, stop_local_services

SERVICE = "numpy-svc"
SECRETS = {
    "AZURE_CLIENT_SECRET": "client-secret-1f2e3d",
    "AMLOPS_API_TOKEN": "api-token-4c5b6a",
    "AMLOPS_WEBHOOK_SECRET": "hook-secret-7d8e9f",
    "AMLOPS_GIT_TOKEN": "git-token-0a1b2c",
    "AZUREML_RUN_TOKEN": "run-token-3d4e5f",  # an Azure ML compute's own run token
    "TF_HUB_API_KEY": "hub-key-6a7b8c",  # an allowed family, but a secret by name
    "MY_DB_PASSWORD": "db-password-9f8e7d",
}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/environ")


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    stop_local_services(path)


def environ_of(pid: int) -> dict[str, str]:
    """The environment process ``pid`` started with, as the kernel shows it."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def test_supervisors_and_replicas_get_a_container_environment_without_the_controllers_credentials(
    tmp_path: Path, state_dir: Path, controllers: Callable[..., Controller]
) -> None:
    repo = GitRepo(tmp_path / "repo")
    repo.write("manifests/workspace.yaml", doc("Workspace", "local", {"backend": "local"}))
    repo.write("manifests/clusters/cpu.yaml",
               doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 1, "gpusPerNode": 0}))
    repo.write("manifests/environment.yaml", doc("Environment", "plain", {
        "pip": ["numpy"], "environmentVariables": {"GREETING": "hello", "WORKERS": "3"}}))
    repo.write("manifests/models/scaler/scale.npy", npy(3.0))
    repo.write("manifests/models/scaler.yaml", doc("Model", "scaler", {"path": "scaler"}))
    repo.write("manifests/src/score.py", SCORE_PY)
    repo.write("manifests/services/svc.yaml", doc("Webservice", SERVICE, {
        "cluster": "cpu", "models": ["scaler"], "environment": "plain", "sourceDirectory": "../src",
        "entryScript": "score.py", "replicas": 2, "resources": {"cpu": 0.1, "memoryGb": 0.5, "gpu": 0},
        "auth": "key", "maxQueueWaitMs": 10000}))
    repo.commit("deploy")

    c = controllers(["--repo", str(repo.root), "--path", "manifests", "--state-dir", str(state_dir),
                     "--interval", "1"], tmp_path / "controller.log", env={**SECRETS, "LANG": "C.UTF-8", "TZ": "UTC"})
    # /api/status wants the API token now: wait on the scoring endpoint itself.
    backend = LocalBackend(state_dir, "amlops")
    eventually(lambda: backend.read().get(Kind.WEBSERVICE, SERVICE) is not None
               and len(_replicas(backend)) == 2, 180, "two replicas recorded")
    key, _ = backend.get_keys(SERVICE)
    code, body = http("POST", backend.scoring_uri(SERVICE), b'{"data": [1]}',
                      {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, timeout=30)
    assert (code, body) == (200, "[3.0]")

    with backend.store.snapshot() as conn:
        row = backend.store.get_service(conn, SERVICE)
    assert row is not None and row.supervisor_pid is not None
    processes = {"supervisor": row.supervisor_pid, **{f"replica {pid}": pid for pid in _replicas(backend)}}
    controller_env = environ_of(c.proc.pid)
    assert all(controller_env[name] == value for name, value in SECRETS.items())  # the test sets what it thinks
    for what, pid in processes.items():
        env = environ_of(pid)
        leaked = {name for name, value in env.items() if value in SECRETS.values() or name in SECRETS}
        assert leaked == set(), f"{what} inherited {sorted(leaked)}"
        assert env["LANG"] == "C.UTF-8" and env["TZ"] == "UTC" and env["PATH"] == controller_env["PATH"]
    for pid in _replicas(backend):
        env = environ_of(pid)
        assert env["GREETING"] == "hello" and env["WORKERS"] == "3"  # the Environment manifest's variables
        assert Path(env["AZUREML_MODEL_DIR"]).is_dir()  # Azure ML's own

    # Databases (with their WAL files) and logs under the state dir are readable by their owner only.
    private = [p for p in state_dir.rglob("*") if p.is_file() and (
        p.name.endswith((".db", ".sqlite", ".log", "-wal", "-shm")))]
    names = {p.name for p in private}
    assert {"state.db", "supervisor.log", "replica-0.log", "replica-1.log"} <= names, names
    loose = {str(p.relative_to(state_dir)): oct(stat.S_IMODE(p.stat().st_mode)) for p in private
             if stat.S_IMODE(p.stat().st_mode) & 0o077}
    assert loose == {}
    backend.close()
    assert c.stop() == 0


def _replicas(backend: LocalBackend) -> list[int]:
    with backend.store.snapshot() as conn:
        return [r.pid for r in backend.store.replicas(conn, SERVICE) if psutil.pid_exists(r.pid)]
