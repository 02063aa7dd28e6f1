"""The per-service supervisor as the local backend starts and watches it."""

from __future__ import annotations

import socket
from pathlib import Path

import psutil
import pytest

from controller.backends.local import LocalBackend
from controller.backends.local.layouts import service_dir
from controller.structs.errors import PermanentError
from controller.structs.manifests import Kind

from .conftest import Repo, apply_all

SERVICE = "numpy-svc"


def test_a_supervisor_that_dies_at_start_fails_wait_ready_after_one_attempt_with_its_log(
    backend: LocalBackend, repo: Repo, state_dir: Path
) -> None:
    repo.service(replicas=1)
    apply_all(backend, repo)
    svc = backend.read().get(Kind.WEBSERVICE, SERVICE)
    assert svc is not None
    supervisor = psutil.Process(svc.details["supervisor"]["pid"])
    replicas = [psutil.Process(p["pid"]) for p in svc.details["replicas"]["processes"]]
    everything = [supervisor, *replicas, *(c for r in replicas for c in r.children(recursive=True))]
    for proc in everything:
        proc.kill()
    psutil.wait_procs(everything, timeout=10)

    # With no replica left to hand it the socket, a new supervisor must bind the port: taken.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", svc.details["port"]))
        squatter.listen()
        with pytest.raises(PermanentError) as err:
            backend.wait_ready(SERVICE, timeout=60)

    assert err.value.reason == "SupervisorFailed"
    assert "Address already in use" in str(err.value)
    log = (service_dir(state_dir, SERVICE) / "supervisor.log").read_text()
    assert log.count("Address already in use") == 1
