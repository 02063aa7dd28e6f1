"""GPU placement through the backend: real replicas, GPU inventories given as files (``AMLOPS_GPU_INVENTORY``).

Every test names the GPUs it runs with, so the suite means the same on a machine with 0, 1 or 8 GPUs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from controller.backends.local import LocalBackend
from controller.backends.local.gpus import INVENTORY_ENV, Gpu, discover_gpus, write_inventory
from controller.structs.errors import PermanentError
from controller.structs.manifests import Kind
from controller.structs.states import ConditionType

from .conftest import Repo, apply_all


def fake_gpus(count: int) -> list[Gpu]:
    return [Gpu(i, f"GPU-fake-{i:04d}", "Fake H200", 141 << 30) for i in range(count)]


def backend_with(state_dir: Path, count: int) -> LocalBackend:
    """A backend that reads an inventory file of ``count`` GPUs, as the controller does when the variable is set."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = write_inventory(state_dir.parent / f"gpus-{count}.json", fake_gpus(count))
    return LocalBackend(state_dir, "test-controller", ready_timeout=90, gpus=discover_gpus({INVENTORY_ENV: str(path)}))


def environ(pid: int) -> dict[str, str]:
    return psutil.Process(pid).environ()


def test_without_a_physical_gpu_replicas_run_on_cpu_and_say_so(state_dir: Path, repo: Repo) -> None:
    backend = backend_with(state_dir, 0)
    repo.service(replicas=1, gpu=1)
    apply_all(backend, repo)
    svc = backend.read().get(Kind.WEBSERVICE, "numpy-svc")
    assert svc is not None
    cond = svc.condition(ConditionType.GPU_UNAVAILABLE)
    assert cond is not None and cond.status and cond.reason == "NoPhysicalGpu" and "lists no GPU" in cond.message
    pid = svc.details["replicas"]["processes"][0]["pid"]
    assert environ(pid)["CUDA_VISIBLE_DEVICES"] == ""
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in environ(pid) or environ(pid)["TF_FORCE_GPU_ALLOW_GROWTH"] != "true"
    assert svc.details["placement"] == [{"slot": 0, "pid": pid, "generation": 1,
                                         "gpus": [{"uuid": "virtual:aks-gpu:0", "name": "virtual (CPU)"}]}]


@pytest.mark.parametrize("count", [0, 1, 4])
def test_each_replica_runs_on_its_own_gpu_named_by_uuid(state_dir: Path, repo: Repo, count: int) -> None:
    backend = backend_with(state_dir, count)
    replicas = min(max(count, 1), 2)  # the cluster declares 2 GPUs
    repo.service(replicas=replicas, gpu=1)
    apply_all(backend, repo)
    svc = backend.read().get(Kind.WEBSERVICE, "numpy-svc")
    assert svc is not None and svc.details["replicas"]["ready"] == replicas
    seen = [environ(p["pid"]) for p in svc.details["replicas"]["processes"]]
    devices = [env["CUDA_VISIBLE_DEVICES"] for env in seen]
    if count == 0:
        assert devices == [""] * replicas
        return
    assert svc.condition(ConditionType.GPU_UNAVAILABLE) is None
    known = {g.uuid for g in fake_gpus(count)}
    assert len(set(devices)) == replicas and set(devices) <= known  # one GPU each, never shared
    assert all(env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for env in seen)
    placed = {p["gpus"][0]["uuid"]: p for p in svc.details["placement"]}
    assert set(placed) == set(devices) and all(p["gpus"][0]["name"] == "Fake H200" for p in placed.values())


def test_an_environment_that_sets_allow_growth_keeps_its_value(state_dir: Path, repo: Repo) -> None:
    backend = backend_with(state_dir, 1)
    repo.write("environments/env.yaml", json.dumps({
        "apiVersion": "amlops.dev/v1", "kind": "Environment", "metadata": {"name": "pinned"},
        "spec": {"environmentVariables": {"TF_FORCE_GPU_ALLOW_GROWTH": "false"}}}))
    repo.service(replicas=1, gpu=1, environment="pinned")
    apply_all(backend, repo)
    svc = backend.read().get(Kind.WEBSERVICE, "numpy-svc")
    assert svc is not None
    env = environ(svc.details["replicas"]["processes"][0]["pid"])
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-fake-0000" and env["TF_FORCE_GPU_ALLOW_GROWTH"] == "false"


@pytest.mark.parametrize("count", [0, 1])
def test_more_gpus_than_the_machine_has_free_is_unschedulable_and_starts_nothing(
        state_dir: Path, repo: Repo, count: int) -> None:
    # The manifests pass validation (the cluster declares 2 GPUs) but this machine has fewer.
    backend = backend_with(state_dir, count)
    repo.service(replicas=2, gpu=1)
    if count == 0:
        apply_all(backend, repo)  # without GPUs the cluster's declared capacity is all there is: both run on CPU
        svc = backend.read().get(Kind.WEBSERVICE, "numpy-svc")
        assert svc is not None and svc.details["replicas"]["ready"] == 2
        return
    with pytest.raises(PermanentError) as err:
        apply_all(backend, repo)
    assert err.value.reason == "Unschedulable"
    message = str(err.value)
    assert "requests 2 GPUs (2 replicas × 1 GPU)" in message and "has 1 GPU free" in message
    assert "1 physical on this machine" in message
    assert backend.read().get(Kind.WEBSERVICE, "numpy-svc") is None


def _three_gpu_cluster(repo: Repo) -> None:
    repo.write("clusters/gpu.yaml", json.dumps({"apiVersion": "amlops.dev/v1", "kind": "AksCluster",
                                                "metadata": {"name": "aks-gpu"},
                                                "spec": {"vmSize": "Standard_NC6", "agentCount": 3}}))


def _ready_pids(backend: LocalBackend, name: str) -> dict[int, str]:
    svc = backend.read().get(Kind.WEBSERVICE, name)
    assert svc is not None
    cond = svc.condition(ConditionType.READY)
    assert cond is not None and cond.status, svc.conditions
    return {p["pid"]: environ(p["pid"])["CUDA_VISIBLE_DEVICES"] for p in svc.details["replicas"]["processes"]}


def test_a_set_that_fills_every_gpu_is_placed_and_rolls_one_replica_at_a_time(state_dir: Path, repo: Repo) -> None:
    # Three GPUs; A wants 2 × 1 and B 1 × 1. A must not hold B's GPU as its rolling-update surge.
    backend = backend_with(state_dir, 3)
    _three_gpu_cluster(repo)
    repo.service(replicas=2, gpu=1, name="svc-a")
    repo.service(replicas=1, gpu=1, name="svc-b")
    (repo.root / "services" / "numpy-svc.yaml").unlink()
    apply_all(backend, repo)
    a, b = _ready_pids(backend, "svc-a"), _ready_pids(backend, "svc-b")
    assert len(set(a.values()) | set(b.values())) == 3
    # A new version of A: no spare GPU, so it replaces one replica at a time; B is never touched.
    repo.service(replicas=2, gpu=1, name="svc-a", maxConcurrentRequestsPerReplica=2)
    apply_all(backend, repo, revision="r2")
    rolled = _ready_pids(backend, "svc-a")
    assert not set(rolled) & set(a) and set(rolled.values()) == set(a.values())
    assert _ready_pids(backend, "svc-b") == b


def test_a_service_added_later_gets_the_gpu_another_held_as_surge_spare(state_dir: Path, repo: Repo) -> None:
    backend = backend_with(state_dir, 3)
    _three_gpu_cluster(repo)
    repo.service(replicas=2, gpu=1, name="svc-a")
    (repo.root / "services" / "numpy-svc.yaml").unlink()
    apply_all(backend, repo)
    a = _ready_pids(backend, "svc-a")
    repo.service(replicas=1, gpu=1, name="svc-b")
    apply_all(backend, repo, revision="r2")
    b = _ready_pids(backend, "svc-b")
    assert not set(b.values()) & set(a.values())
    # A's next roll has no spare any more: it goes stop-first and still converges.
    repo.service(replicas=2, gpu=1, name="svc-a", maxConcurrentRequestsPerReplica=2)
    apply_all(backend, repo, revision="r3")
    assert set(_ready_pids(backend, "svc-a").values()) == set(a.values())
    assert _ready_pids(backend, "svc-b") == b


def test_status_names_each_replicas_gpu_and_an_apply_left_unschedulable_exits_1(
        state_dir: Path, repo: Repo, tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path / "gpus.json", fake_gpus(1))
    env = {**os.environ, INVENTORY_ENV: str(inventory)}

    def amlops(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "controller", *args, "--state-dir", str(state_dir)],
                              cwd=repo.root, env=env, capture_output=True, text=True, timeout=240, check=False)

    repo.service(replicas=1, gpu=1)
    applied = amlops("apply", ".", "--yes", "--no-color")
    assert applied.returncode == 0, applied.stderr  # a successful apply exits 0
    shown = amlops("status", "--path", ".")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"replica 0 \(pid \d+, generation 1\): GPU-fake-0000 \(Fake H200\)", shown.stdout), shown.stdout
    rows = json.loads(amlops("status", "--path", ".", "--output", "json").stdout)["resources"]
    placement = next(r for r in rows if r["name"] == "numpy-svc")["placement"]
    assert [p["gpus"][0]["uuid"] for p in placement] == ["GPU-fake-0000"]

    # Two replicas on a one-GPU machine: refused, not oversubscribed, and every later apply of
    # the same input says so with a non-zero exit (the one replica keeps serving).
    repo.service(replicas=2, gpu=1)
    refused = amlops("apply", ".", "--yes", "--no-color")
    assert refused.returncode == 1 and "Unschedulable" in refused.stderr, refused.stderr
    again = amlops("apply", ".", "--yes", "--no-color")
    assert again.returncode == 1, (again.stdout, again.stderr)
    assert re.search(r"Webservice/numpy-svc:? (is still )?stalled: Unschedulable", again.stderr), again.stderr
    rows = json.loads(amlops("status", "--path", ".", "--output", "json").stdout)["resources"]
    assert next(r for r in rows if r["name"] == "numpy-svc")["replicas"] == {"ready": 1, "desired": 1}


@pytest.mark.gpu
def test_on_this_machines_gpus_each_replica_sees_exactly_its_own(state_dir: Path, repo: Repo) -> None:
    from controller.backends.local.gpus import probe_nvml

    real = probe_nvml()
    backend = LocalBackend(state_dir, "test-controller", ready_timeout=90, gpus=real)
    replicas = min(len(real), 2)
    repo.service(replicas=replicas, gpu=1)
    apply_all(backend, repo)
    pids = _ready_pids(backend, "numpy-svc")
    assert len(pids) == replicas and len(set(pids.values())) == replicas
    assert set(pids.values()) <= {g.uuid for g in real}


@pytest.mark.gpu
def test_nvml_lists_the_gpus_nvidia_smi_lists() -> None:
    from controller.backends.local.gpus import probe_nvml

    smi = subprocess.run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"], capture_output=True, text=True,
                         check=True, timeout=30)
    whole = {g.uuid for g in probe_nvml() if g.mig_parent is None} | {g.mig_parent for g in probe_nvml() if g.mig_parent}
    assert whole == {line.strip() for line in smi.stdout.splitlines() if line.strip()}
