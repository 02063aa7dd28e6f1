"""GPU discovery and placement for the local backend.

Placement follows AKS's rule that pods never share a GPU: every replica of a service gets its own
whole GPUs. A service holds a *pool* of GPU ids (its replicas × GPUs per replica, plus one spare
replica's worth when free, so rolling updates can start the new replica before stopping an old
one). Pools are the unit of accounting; which replica holds which ids of its pool is decided by
the supervisor.

Ids are the physical GPU indices (as ``nvidia-smi`` numbers them, what ``CUDA_VISIBLE_DEVICES``
takes) when the machine has GPUs; then every cluster draws from the same machine-wide set and the
cluster's manifest capacity caps how many it may hold. Without physical GPUs the ids are virtual
(``virtual:<cluster>:<n>``), the arithmetic is the same, and replicas run on CPU.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.structs.errors import PermanentError

CPU_ONLY_VISIBLE_DEVICES = ""
"""``CUDA_VISIBLE_DEVICES`` for replicas when no physical GPU exists: empty hides every device."""


@dataclass(frozen=True)
class Gpu:
    """One physical GPU as ``nvidia-smi`` reports it."""

    index: int
    uuid: str
    name: str


@dataclass(frozen=True)
class Allocation:
    """GPU ids one service holds on one cluster."""

    cluster: str
    ids: tuple[str, ...]


def parse_nvidia_smi(output: str) -> list[Gpu]:
    """GPUs from ``nvidia-smi --query-gpu=index,uuid,name --format=csv,noheader`` output."""
    gpus = []
    for line in output.splitlines():
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) == 3 and parts[0].isdigit():
            gpus.append(Gpu(index=int(parts[0]), uuid=parts[1], name=parts[2]))
    return gpus


def discover_gpus() -> list[Gpu]:
    """Physical GPUs on this machine; empty when ``nvidia-smi`` is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        done = subprocess.run(
            [exe, "--query-gpu=index,uuid,name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(done.stdout) if done.returncode == 0 else []


def candidate_ids(cluster: str, capacity: int, physical: Sequence[Gpu]) -> list[str]:
    """Every GPU id a cluster could ever be given (before subtracting what others hold)."""
    if physical:
        return [str(g.index) for g in physical]
    return [f"virtual:{cluster}:{n}" for n in range(capacity)]


def _plural(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def allocate_pool(
    *,
    service: str,
    cluster: str,
    capacity: int,
    replicas: int,
    gpus_per_replica: int,
    physical: Sequence[Gpu],
    others: Mapping[str, Allocation],
    current: Sequence[str] = (),
    gpus_per_node: int | None = None,
) -> tuple[str, ...]:
    """The GPU ids ``service`` should hold, or ``PermanentError(reason="Unschedulable")``.

    ``others`` are the pools of every other service (any cluster). Ids the service already holds
    come first, so a re-placement keeps running replicas on their GPUs.
    """
    if gpus_per_replica == 0:
        return ()
    need = replicas * gpus_per_replica
    if gpus_per_node is not None and gpus_per_replica > gpus_per_node:
        raise PermanentError(
            f"0/1 nodes are available: 1 Insufficient nvidia.com/gpu. Service '{service}' requests "
            f"{_plural(gpus_per_replica)} per replica but a node of cluster '{cluster}' has {_plural(gpus_per_node)}.",
            reason="Unschedulable",
        )
    same_cluster_used = sum(len(a.ids) for s, a in others.items() if a.cluster == cluster)
    if physical:
        taken = {i for a in others.values() for i in a.ids}
    else:
        taken = {i for a in others.values() if a.cluster == cluster for i in a.ids}
    candidates = [i for i in candidate_ids(cluster, capacity, physical) if i not in taken]
    free = max(0, min(capacity - same_cluster_used, len(candidates)))
    if need > free:
        physical_note = f", {len(physical)} physical on this machine" if physical else ""
        raise PermanentError(
            f"Unschedulable: 0/{max(capacity, 1)} GPUs are available: Insufficient nvidia.com/gpu. "
            f"Service '{service}' requests {_plural(need)} ({replicas} replicas × {_plural(gpus_per_replica)}) "
            f"but cluster '{cluster}' has {_plural(free)} free (capacity {capacity}, "
            f"{same_cluster_used} in use by other services{physical_note}).",
            reason="Unschedulable",
        )
    size = need + gpus_per_replica if need + gpus_per_replica <= free else need
    kept = [i for i in current if i in candidates]
    ordered = kept + [i for i in candidates if i not in kept]
    return tuple(ordered[:size])


def visible_devices(ids: Sequence[str]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a replica holding ``ids``: physical indices, or CPU-only."""
    physical = [i for i in ids if not i.startswith("virtual:")]
    return ",".join(physical) if physical else CPU_ONLY_VISIBLE_DEVICES
