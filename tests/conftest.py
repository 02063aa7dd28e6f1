"""Suite-wide GPU settings, and fixtures tests in several folders share.

Every process the suite starts sees the GPUs ``AMLOPS_GPU_INVENTORY`` lists: none, unless the
variable is already set (to run the suite as a machine with some GPUs) or a test hands its own
list. So the suite means the same on a machine with 0, 1 or 8 GPUs; real hardware is exercised
by the tests marked ``gpu``, which ask NVML directly and are skipped with its reason where it
reports no GPU (never passing silently), and by ``make gpu-check``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.backends.local.gpus import INVENTORY_ENV, GpuInventory, probe_nvml, write_inventory

_made: list[Path] = []


@functools.cache
def real_gpus() -> GpuInventory:
    """The GPUs NVML reports on this machine (never an injected inventory: these tests need the real thing)."""
    return probe_nvml()


def pytest_configure(config: pytest.Config) -> None:
    if INVENTORY_ENV not in os.environ:
        folder = Path(tempfile.mkdtemp(prefix="amlops-test-gpus-"))
        _made.append(folder)
        os.environ[INVENTORY_ENV] = str(write_inventory(folder / "none.json", []))


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _made:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not marked or len(real_gpus()):
        return
    skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU: {real_gpus().reason}")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture
def silent_remote() -> Iterator[str]:
    """An HTTP Git remote that accepts connections and never answers (a hung proxy or server)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/org/repo.git"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()
