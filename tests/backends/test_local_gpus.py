"""GPU discovery (NVML, inventory files) and placement as pure arithmetic over GPU lists given as data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.backends.local.gpus import (
    INVENTORY_ENV,
    Allocation,
    Gpu,
    allocate_pool,
    discover_gpus,
    probe_nvml,
    read_inventory,
    replica_environment,
    visible_devices,
    write_inventory,
)
from controller.structs.errors import PermanentError

FOUR = [Gpu(i, f"GPU-{i}", "Tesla T4") for i in range(4)]
THREE = FOUR[:3]


def test_each_replica_gets_whole_gpus_plus_one_spare_replica_for_rolling() -> None:
    pool = allocate_pool(service="s", cluster="c", capacity=4, replicas=1, gpus_per_replica=2, physical=FOUR, others={})
    assert pool == ("GPU-0", "GPU-1", "GPU-2", "GPU-3")
    pool = allocate_pool(service="s", cluster="c", capacity=3, replicas=3, gpus_per_replica=1, physical=FOUR, others={})
    assert pool == ("GPU-0", "GPU-1", "GPU-2")  # no spare: the roll stops an old replica first


def test_gpus_held_by_other_services_are_never_shared() -> None:
    others = {"a": Allocation("c", ("GPU-0", "GPU-2"))}
    pool = allocate_pool(service="s", cluster="c", capacity=4, replicas=2, gpus_per_replica=1, physical=FOUR, others=others)
    assert set(pool).isdisjoint({"GPU-0", "GPU-2"}) and len(pool) == 2


def test_physical_gpus_are_shared_across_clusters_but_capacity_is_per_cluster() -> None:
    others = {"a": Allocation("other", ("GPU-0", "GPU-1", "GPU-2"))}
    with pytest.raises(PermanentError) as err:
        allocate_pool(service="s", cluster="c", capacity=4, replicas=2, gpus_per_replica=1, physical=FOUR, others=others)
    assert err.value.reason == "Unschedulable"


def test_a_placement_keeps_the_gpus_a_service_already_holds() -> None:
    pool = allocate_pool(service="s", cluster="c", capacity=4, replicas=2, gpus_per_replica=1, physical=FOUR,
                         others={}, current=("GPU-3", "GPU-1"))
    assert pool[:2] == ("GPU-3", "GPU-1")


def test_requesting_more_gpus_than_free_is_unschedulable_with_azure_style_numbers() -> None:
    others = {"a": Allocation("aks-gpu", ("virtual:aks-gpu:0",))}
    with pytest.raises(PermanentError) as err:
        allocate_pool(service="aks-dnn-mnist", cluster="aks-gpu", capacity=2, replicas=3, gpus_per_replica=1,
                      physical=[], others=others)
    assert err.value.reason == "Unschedulable"
    message = str(err.value)
    assert "Insufficient nvidia.com/gpu" in message
    assert "requests 3 GPUs (3 replicas × 1 GPU)" in message
    assert "cluster 'aks-gpu' has 1 GPU free (capacity 2, 1 in use by other services)" in message


def test_a_replica_larger_than_a_node_is_unschedulable() -> None:
    with pytest.raises(PermanentError, match="per replica but a node"):
        allocate_pool(service="s", cluster="c", capacity=8, replicas=1, gpus_per_replica=2, physical=[], others={},
                      gpus_per_node=1)


def test_without_physical_gpus_ids_are_virtual_and_replicas_see_no_device() -> None:
    pool = allocate_pool(service="s", cluster="c", capacity=2, replicas=2, gpus_per_replica=1, physical=[], others={})
    assert pool == ("virtual:c:0", "virtual:c:1")
    assert visible_devices(pool[:1]) == ""
    assert visible_devices(("GPU-1", "MIG-3")) == "GPU-1,MIG-3"
    assert allocate_pool(service="s", cluster="c", capacity=0, replicas=5, gpus_per_replica=0, physical=[], others={}) == ()


def test_surge_never_takes_a_gpu_another_declared_service_needs() -> None:
    # Three GPUs: A (2 replicas × 1) placed while B (1 × 1) is declared and not placed yet.
    pool = allocate_pool(service="a", cluster="c", capacity=3, replicas=2, gpus_per_replica=1, physical=THREE,
                         others={}, pending=1)
    assert len(pool) == 2  # no spare: A's rolls stop a replica first
    b = allocate_pool(service="b", cluster="c", capacity=3, replicas=1, gpus_per_replica=1, physical=THREE,
                      others={"a": Allocation("c", pool, needed=2, held=frozenset(pool))})
    assert len(b) == 1 and not set(b) & set(pool)


def test_an_unused_surge_spare_is_given_to_a_service_that_needs_it() -> None:
    # A was placed alone (with a spare); B arrives later: the spare no replica runs on is B's.
    a = allocate_pool(service="a", cluster="c", capacity=3, replicas=2, gpus_per_replica=1, physical=THREE, others={})
    assert len(a) == 3
    held = frozenset(a[:2])
    b = allocate_pool(service="b", cluster="c", capacity=3, replicas=1, gpus_per_replica=1, physical=THREE,
                      others={"a": Allocation("c", a, needed=2, held=held)})
    assert b == (a[2],)
    # A spare a surge replica runs on right now is not given away.
    with pytest.raises(PermanentError) as err:
        allocate_pool(service="b", cluster="c", capacity=3, replicas=1, gpus_per_replica=1, physical=THREE,
                      others={"a": Allocation("c", a, needed=2, held=frozenset(a))})
    assert err.value.reason == "Unschedulable"


def test_a_gpu_a_draining_replica_still_runs_on_is_never_placed_again() -> None:
    # A scaled from 3 to 2: its pool shrank, but its third replica still drains on GPU-2.
    others = {"a": Allocation("c", ("GPU-0", "GPU-1"), needed=2, held=frozenset({"GPU-0", "GPU-1", "GPU-2"}))}
    pool = allocate_pool(service="b", cluster="c", capacity=4, replicas=1, gpus_per_replica=1, physical=FOUR, others=others)
    assert pool == ("GPU-3",)


def test_mig_instances_are_units_but_a_multi_gpu_replica_gets_whole_gpus() -> None:
    units = [Gpu(0, "MIG-a", "A100 MIG 1g.10gb", 10 << 30, "GPU-0"), Gpu(0, "MIG-b", "A100 MIG 1g.10gb", 10 << 30, "GPU-0"),
             Gpu(1, "GPU-1", "A100"), Gpu(2, "GPU-2", "A100")]
    one_each = allocate_pool(service="s", cluster="c", capacity=4, replicas=4, gpus_per_replica=1, physical=units, others={})
    assert set(one_each) == {"MIG-a", "MIG-b", "GPU-1", "GPU-2"}
    two_each = allocate_pool(service="t", cluster="c", capacity=4, replicas=1, gpus_per_replica=2, physical=units, others={})
    assert set(two_each) == {"GPU-1", "GPU-2"}


def test_replicas_on_a_gpu_grow_tensorflow_memory_unless_their_environment_says_otherwise() -> None:
    assert replica_environment(("GPU-1",), {}) == {"CUDA_VISIBLE_DEVICES": "GPU-1", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    assert replica_environment(("GPU-1",), {"TF_FORCE_GPU_ALLOW_GROWTH": "false"})["TF_FORCE_GPU_ALLOW_GROWTH"] == "false"
    assert replica_environment(("virtual:c:0",), {}) == {"CUDA_VISIBLE_DEVICES": ""}


def test_an_inventory_file_replaces_discovery(tmp_path: Path) -> None:
    path = write_inventory(tmp_path / "gpus.json", FOUR)
    found = discover_gpus({INVENTORY_ENV: str(path)})
    assert list(found) == FOUR and found.source == f"file {path}"
    empty = discover_gpus({INVENTORY_ENV: str(write_inventory(tmp_path / "none.json", []))})
    assert list(empty) == [] and "lists no GPU" in empty.reason


def test_a_broken_inventory_file_is_an_error_naming_the_file_and_entry(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps([{"uuid": "GPU-a"}, {"name": "no uuid"}]))
    with pytest.raises(PermanentError, match=r"gpus.json: entry 1: field 'uuid'") as err:
        read_inventory(path)
    assert err.value.reason == "InvalidGpuInventory"
    path.write_text("{not json")
    with pytest.raises(PermanentError, match="cannot read a JSON GPU list"):
        read_inventory(path)


def test_without_nvml_or_a_driver_discovery_is_empty_and_says_why() -> None:
    found = probe_nvml()
    if len(found):
        pytest.skip(f"NVML reports {len(found)} GPU(s) here; the GPU-less path needs a machine without a driver")
    assert found.source == "nvml" and found.reason  # e.g. "NVML is unavailable (no NVIDIA driver?): ..."
    assert discover_gpus({}).reason == found.reason
