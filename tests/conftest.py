"""Suite-wide: tests marked ``gpu`` run only where NVML reports a GPU, and are skipped with its reason elsewhere."""

from __future__ import annotations

import functools

import pytest

from controller.backends.local.gpus import GpuInventory, probe_nvml


@functools.cache
def real_gpus() -> GpuInventory:
    """The GPUs NVML reports on this machine (never an injected inventory: these tests need the real thing)."""
    return probe_nvml()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not marked or len(real_gpus()):
        return
    skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU: {real_gpus().reason}")
    for item in marked:
        item.add_marker(skip)
