"""GPU placement through the backend: real replicas, GPU lists given as data."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from controller.backends.local import LocalBackend
from controller.backends.local.gpus import Gpu
from controller.structs.errors import PermanentError
from controller.structs.manifests import Kind
from controller.structs.states import ConditionType

from .conftest import Repo, apply_all


def test_without_a_physical_gpu_replicas_run_on_cpu_and_say_so(backend: LocalBackend, repo: Repo) -> None:
    repo.service(replicas=1, gpu=1)
    apply_all(backend, repo)
    svc = backend.read().get(Kind.WEBSERVICE, "numpy-svc")
    assert svc is not None
    cond = svc.condition(ConditionType.GPU_UNAVAILABLE)
    assert cond is not None and cond.status and cond.reason == "NoPhysicalGpu"
    pid = svc.details["replicas"]["processes"][0]["pid"]
    assert psutil.Process(pid).environ()["CUDA_VISIBLE_DEVICES"] == ""


def test_each_replica_gets_its_own_physical_gpu(state_dir: Path, repo: Repo) -> None:
    fake = [Gpu(0, "GPU-a", "Fake"), Gpu(1, "GPU-b", "Fake"), Gpu(2, "GPU-c", "Fake")]
    backend = LocalBackend(state_dir, "test-controller", ready_timeout=90, gpus=fake)
    repo.service(replicas=2, gpu=1)
    apply_all(backend, repo)
    svc = backend.read().get(Kind.WEBSERVICE, "numpy-svc")
    assert svc is not None and svc.condition(ConditionType.GPU_UNAVAILABLE) is None
    seen = [psutil.Process(p["pid"]).environ()["CUDA_VISIBLE_DEVICES"] for p in svc.details["replicas"]["processes"]]
    assert sorted(seen) in (["0", "1"], ["0", "2"], ["1", "2"])


def test_more_gpus_than_the_machine_has_free_is_unschedulable_and_starts_nothing(state_dir: Path, repo: Repo) -> None:
    # The manifests pass validation (the cluster declares 2 GPUs) but this machine has only one.
    backend = LocalBackend(state_dir, "test-controller", ready_timeout=90, gpus=[Gpu(0, "GPU-a", "Fake")])
    repo.service(replicas=2, gpu=1)
    with pytest.raises(PermanentError) as err:
        apply_all(backend, repo)
    assert err.value.reason == "Unschedulable"
    message = str(err.value)
    assert "requests 2 GPUs (2 replicas × 1 GPU)" in message and "has 1 GPU free" in message
    assert "1 physical on this machine" in message
    assert backend.read().get(Kind.WEBSERVICE, "numpy-svc") is None
