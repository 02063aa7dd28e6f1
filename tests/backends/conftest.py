"""Fixtures for the local backend: a manifests repo in a temp folder, and a backend whose services are always stopped."""

from __future__ import annotations

import contextlib
import json
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from controller.backends.base import ApplyContext
from controller.backends.local import LocalBackend
from controller.sources.loading import load_desired_state
from controller.structs.states import DesiredState

SCORE_PY = textwrap.dedent(
    """
    import json
    import os

    import numpy as np


    def init():
        global scale
        with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "scale.txt")) as f:
            scale = float(f.read())


    def run(raw_data):
        data = np.array(json.loads(raw_data)["data"], dtype=float)
        return (data * scale).tolist()
    """
)


class Repo:
    """A manifests folder with one workspace, one cluster, one model and one numpy service."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.write("workspace.yaml", _doc("Workspace", "ws", {"backend": "local"}))
        self.write("clusters/gpu.yaml", _doc("AksCluster", "aks-gpu", {"vmSize": "Standard_NC6", "agentCount": 2}))
        self.write("models/scaler/scale.txt", "2")
        self.write("models/scaler.yaml", _doc("Model", "scaler", {"path": "scaler", "tags": {"kind": "test"}}))
        self.write("src/score.py", SCORE_PY)
        self.service(replicas=2)

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def service(self, replicas: int = 2, gpu: int = 0, name: str = "numpy-svc", **extra: object) -> None:
        spec: dict[str, object] = {
            "cluster": "aks-gpu", "models": ["scaler"], "sourceDirectory": "../src", "entryScript": "score.py",
            "replicas": replicas, "resources": {"cpu": 0.1, "memoryGb": 0.5, "gpu": gpu}, "auth": "key",
            # Azure's 500 ms default is tight on a loaded 2-core CI machine; queueing is not under test here.
            "maxQueueWaitMs": 10000,
        }
        spec.update(extra)
        self.write(f"services/{name}.yaml", _doc("Webservice", name, spec))

    def desired(self, revision: str = "r1") -> DesiredState:
        return load_desired_state(self.root, ".", revision)

    def ctx(self, desired: DesiredState, messages: list[str] | None = None) -> ApplyContext:
        def progress(message: str, fraction: float | None) -> None:
            if messages is not None:
                messages.append(message)

        return ApplyContext("test-controller", desired.revision, str(self.root), desired, progress)


def _doc(kind: str, name: str, spec: dict[str, object]) -> str:
    return json.dumps({"apiVersion": "amlops.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


def apply_all(backend: LocalBackend, repo: Repo, revision: str = "r1", messages: list[str] | None = None) -> DesiredState:
    """Create or update every resource of the repo, in dependency order (what the executor does)."""
    desired = repo.desired(revision)
    ctx = repo.ctx(desired, messages)
    actual = backend.read()
    for resource in desired:
        if actual.get(resource.id.kind, resource.id.name) is None:
            backend.create(resource, ctx)
        else:
            from controller.structs.plans import Action, Change

            backend.update(resource, Change(resource.id, Action.UPDATE), ctx)
    return desired


CLIENT_FAILURE = -1
"""The status ``post`` reports when no HTTP answer came back (refused, reset, timed out, garbled)."""


def post(url: str, body: object, key: str | None, timeout: float = 30) -> tuple[int, object]:
    """POST JSON; returns (status, decoded body) and never raises.

    An HTTP error is its status; any other failure (a refused or reset connection, a timeout, a
    body that is not JSON) is ``CLIENT_FAILURE`` with the exception's repr, so a client thread in a
    "zero failed requests" test records it instead of dying unseen.
    """
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except Exception as exc:  # every client-side failure counts, not only HTTP errors
        return CLIENT_FAILURE, repr(exc)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


def _service_processes(state_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if any(str(state_dir) in part for part in cmdline):
            found.append(proc)
    return found


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    # Whatever a test left running under this state dir is stopped here, test failed or not.
    backend = LocalBackend(path, "test-controller")
    with backend.store.snapshot() as conn:
        names = [s.name for s in backend.store.all_services(conn)]
    for name in names:
        with contextlib.suppress(Exception):
            backend._stop_service(name)
    leftovers = _service_processes(path)
    for proc in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(leftovers, timeout=5)


@pytest.fixture
def backend(state_dir: Path) -> Iterator[LocalBackend]:
    b = LocalBackend(state_dir, "test-controller", ready_timeout=90)
    yield b
    b.close()
