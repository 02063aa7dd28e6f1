"""Fixtures for end-to-end tests: a real Git repo, ``amlops run`` as a subprocess, the real local backend.

Each test gets a ``World``: a Git repo of example-like manifests (a numpy entry script, so no
TensorFlow), a state dir, and helpers that talk to the services over real HTTP and to the
``amlops`` command line. Whatever a test starts is stopped in the finalizer, test failed or not:
controllers by their process group, services through the local backend, then any process whose
command line still names the state dir, by pid.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from runtime.conftest import SCORE_PY, Controller, GitRepo, eventually, http, npy, stop_local_services

SERVICE = "numpy-svc"



def manifest(kind: str, name: str, spec: dict[str, object], annotations: dict[str, str] | None = None) -> str:
    """One manifest as YAML-compatible JSON text."""
    metadata: dict[str, object] = {"name": name}
    if annotations:
        metadata["annotations"] = annotations
    return json.dumps({"apiVersion": "amlops.dev/v1", "kind": kind, "metadata": metadata, "spec": spec}) + "\n"


def service_spec(replicas: int, model: str = "scaler", cluster: str = "cpu") -> dict[str, object]:
    """A numpy web service like the example's, on a CPU cluster, with key auth."""
    return {
        "cluster": cluster,
        "models": [model],
        "sourceDirectory": "../src",
        "entryScript": "score.py",
        "replicas": replicas,
        "resources": {"cpu": 0.1, "memoryGb": 0.5, "gpu": 0},
        "auth": "key",
        "maxQueueWaitMs": 10000,  # Azure's 500 ms default is tight on a loaded 2-core machine
    }




def amlops_argv() -> list[str]:
    """The ``amlops`` console script of this virtualenv (``python -m controller`` without one)."""
    script = Path(sys.executable).parent / "amlops"
    return [str(script)] if script.exists() else [sys.executable, "-m", "controller"]


def port_closed(port: int) -> bool:
    """Whether nothing accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


class World:
    """One test's repo, state dir and controllers, with helpers that observe from outside."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state_dir = tmp / "state"
        self.repo = GitRepo(tmp / "repo")
        self.controllers: list[Controller] = []

    # -- the repo --------------------------------------------------------------------------

    def example(self, replicas: int = 2, scale: float = 3.0) -> None:
        """Workspace, CPU cluster, model folder with a .npy, entry script and one keyed service."""
        self.repo.write("manifests/workspace.yaml", manifest("Workspace", "local", {"backend": "local"}))
        self.repo.write(
            "manifests/clusters/cpu.yaml",
            manifest("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 1, "gpusPerNode": 0}),
        )
        self.repo.write("manifests/models/scaler/scale.npy", npy(scale))
        self.repo.write("manifests/models/scaler.yaml", manifest("Model", "scaler", {"path": "scaler"}))
        self.repo.write("manifests/src/score.py", SCORE_PY)
        self.service(SERVICE, replicas)

    def service(self, name: str, replicas: int, **annotations: str) -> None:
        self.repo.write(
            f"manifests/services/{name}.yaml", manifest("Webservice", name, service_spec(replicas), annotations)
        )

    def remove(self, rel: str) -> None:
        (self.repo.root / rel).unlink()

    # -- processes -------------------------------------------------------------------------

    def controller(self, *extra: str, wait: bool = True) -> Controller:
        """``amlops run`` on the repo, polling every second, on a free port (``wait``: until /readyz is 200)."""
        c = Controller(
            ["--repo", str(self.repo.root), "--path", "manifests", "--interval", "1",
             "--state-dir", str(self.state_dir), *extra],
            self.tmp / f"controller-{len(self.controllers) + 1}.log",
        )
        self.controllers.append(c)
        if wait:
            c.wait_ready(timeout=120)
        return c

    def amlops(self, *args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """One ``amlops`` command with this world's state dir."""
        done = subprocess.run([*amlops_argv(), *args, "--state-dir", str(self.state_dir)],
                              capture_output=True, text=True, timeout=300, cwd=cwd)
        if check and done.returncode not in (0, 2):
            raise AssertionError(f"amlops {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def status_json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.amlops("status", "--output", "json").stdout)
        return result

    def history(self, limit: int = 20) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = json.loads(self.amlops("history", "--output", "json",
                                                              "--limit", str(limit)).stdout)
        return result

    # -- services --------------------------------------------------------------------------

    def service_details(self, name: str = SERVICE, controller_name: str = "amlops") -> dict[str, Any] | None:
        """What the local backend reads for a service: URI, port, replica processes (None if absent)."""
        from controller.backends.local import LocalBackend
        from controller.structs.manifests import Kind

        backend = LocalBackend(self.state_dir, controller_name)
        try:
            found = backend.read().get(Kind.WEBSERVICE, name)
        finally:
            backend.close()
        return None if found is None else dict(found.details)

    def resource_names(self) -> set[str]:
        from controller.backends.local import LocalBackend

        backend = LocalBackend(self.state_dir)
        try:
            return {f"{r.id.kind.value}/{r.id.name}" for r in backend.read()}
        finally:
            backend.close()

    def ready_pids(self, name: str = SERVICE) -> set[int]:
        """Pids of the service's replicas that say they are ready."""
        details = self.service_details(name) or {}
        processes = (details.get("replicas") or {}).get("processes") or []
        return {p["pid"] for p in processes if p["state"] == "ready"}

    def uri(self, name: str = SERVICE) -> str:
        details = self.service_details(name)
        assert details is not None, f"service {name} does not exist"
        return str(details["scoringUri"])

    def key(self, name: str = SERVICE) -> str:
        """The primary key, as a user gets it: ``amlops keys NAME --primary``."""
        return self.amlops("keys", name, "--primary").stdout.strip()

    def score(self, data: object, key: str | None, name: str = SERVICE, uri: str | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        code, body = http("POST", uri or self.uri(name), json.dumps({"data": data}).encode(), headers, timeout=30)
        return code, (json.loads(body) if code == 200 else body)

    def wait_applied(self, c: Controller, revision: str, what: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until the controller reports ``revision`` as applied; fail early on a failed reconcile."""

        def applied() -> dict[str, Any] | None:
            s = c.status()
            last = s.get("lastReconcile") or {}
            if last.get("revision") == revision and last.get("status") in ("failed", "invalid", "held"):
                raise AssertionError(f"{what}: reconcile {last['status']}: {last.get('errors')}\n{c.log()[-4000:]}")
            return s if s["lastAppliedRevision"] == revision else None

        return eventually(applied, timeout, what)


def _processes_naming(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(path) in part for part in (proc.info.get("cmdline") or [])):
                found.append(proc)
    return found


def leftover_processes(state_dir: Path) -> list[psutil.Process]:
    """Live processes whose command line names ``state_dir`` (supervisors, replicas, controllers)."""
    return [p for p in _processes_naming(state_dir) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A fresh world; at the end controllers are killed first (nothing restarts), then every service."""
    w = World(tmp_path)
    yield w
    for c in w.controllers:
        c.kill()
    stop_local_services(w.state_dir)
    leftovers = _processes_naming(w.state_dir)
    for proc in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(leftovers, timeout=5)
    shutil.rmtree(w.state_dir / "cache", ignore_errors=True)
