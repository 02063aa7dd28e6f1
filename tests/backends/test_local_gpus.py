"""GPU placement as pure arithmetic over GPU lists given as data."""

from __future__ import annotations

import pytest

from controller.backends.local.gpus import Allocation, Gpu, allocate_pool, parse_nvidia_smi, visible_devices
from controller.structs.errors import PermanentError

FOUR = [Gpu(i, f"GPU-{i}", "Tesla T4") for i in range(4)]


def test_nvidia_smi_output_is_parsed_into_gpus() -> None:
    out = "0, GPU-aaa, NVIDIA H100 80GB HBM3\n1, GPU-bbb, NVIDIA H100 80GB HBM3\n"
    assert parse_nvidia_smi(out) == [Gpu(0, "GPU-aaa", "NVIDIA H100 80GB HBM3"), Gpu(1, "GPU-bbb", "NVIDIA H100 80GB HBM3")]
    assert parse_nvidia_smi("NVIDIA-SMI has failed") == []


def test_each_replica_gets_whole_gpus_plus_one_spare_replica_for_rolling() -> None:
    pool = allocate_pool(service="s", cluster="c", capacity=4, replicas=1, gpus_per_replica=2, physical=FOUR, others={})
    assert pool == ("0", "1", "2", "3")
    pool = allocate_pool(service="s", cluster="c", capacity=3, replicas=3, gpus_per_replica=1, physical=FOUR, others={})
    assert pool == ("0", "1", "2")  # no spare: the roll stops an old replica first


def test_gpus_held_by_other_services_are_never_shared() -> None:
    others = {"a": Allocation("c", ("0", "2"))}
    pool = allocate_pool(service="s", cluster="c", capacity=4, replicas=2, gpus_per_replica=1, physical=FOUR, others=others)
    assert set(pool).isdisjoint({"0", "2"}) and len(pool) == 2


def test_physical_gpus_are_shared_across_clusters_but_capacity_is_per_cluster() -> None:
    others = {"a": Allocation("other", ("0", "1", "2"))}
    with pytest.raises(PermanentError) as err:
        allocate_pool(service="s", cluster="c", capacity=4, replicas=2, gpus_per_replica=1, physical=FOUR, others=others)
    assert err.value.reason == "Unschedulable"


def test_a_placement_keeps_the_gpus_a_service_already_holds() -> None:
    pool = allocate_pool(service="s", cluster="c", capacity=4, replicas=2, gpus_per_replica=1, physical=FOUR,
                         others={}, current=("3", "1"))
    assert pool[:2] == ("3", "1")


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
    assert visible_devices(("1", "3")) == "1,3"
    assert allocate_pool(service="s", cluster="c", capacity=0, replicas=5, gpus_per_replica=0, physical=[], others={}) == ()
