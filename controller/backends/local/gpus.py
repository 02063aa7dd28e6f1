"""GPU discovery and placement for the local backend.

Discovery asks NVML (NVIDIA's management library, through ``nvidia-ml-py``) for every GPU: index,
UUID, name, memory and MIG mode. A GPU in MIG mode is not placed itself: each of its MIG
instances is a unit of its own (``MIG-…`` UUID). Without NVML or a driver the inventory is empty
and says why. ``AMLOPS_GPU_INVENTORY`` may name a JSON file that replaces discovery (a list of
``{"uuid", "name", "index", "memoryBytes", "migParent"}``): the controller, the CLI and the
emulator's data plane all read it, so a machine can be made to look like one with 0, 1 or 8 GPUs.

Placement follows AKS's rule that pods never share a GPU: every replica of a service gets its own
units, named by UUID in ``CUDA_VISIBLE_DEVICES`` (indices change with the variable's order and
with MIG; UUIDs do not). A service holds a *pool* of unit ids (its replicas × GPUs per replica).
A rolling update may *surge* (start the new replica before stopping an old one) only into a unit
that no declared service needs: the pool then carries one spare replica's worth. Otherwise the
roll replaces one replica at a time (stop first, like ``maxUnavailable: 1``). A spare unit no
replica holds is given up to any service that needs it, so a set that fits is never refused.

When the machine has GPUs every cluster draws from the same machine-wide set and the cluster's
manifest capacity caps how many it may hold. Without GPUs the ids are virtual
(``virtual:<cluster>:<n>``), the arithmetic is the same, and replicas run on CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.backends.local.stores import ReplicaRow, ServiceRow
from controller.structs.errors import PermanentError
from controller.structs.manifests import WebserviceManifest
from controller.structs.states import DesiredResource

INVENTORY_ENV = "AMLOPS_GPU_INVENTORY"
"""Names a JSON file listing the GPUs to place on, instead of asking NVML."""

CPU_ONLY_VISIBLE_DEVICES = ""
"""``CUDA_VISIBLE_DEVICES`` for replicas without a physical GPU: empty hides every device."""

ALLOW_GROWTH_ENV = "TF_FORCE_GPU_ALLOW_GROWTH"
"""Set to ``true`` for replicas on a GPU (unless their Environment sets it): TensorFlow then takes
device memory as it needs it instead of reserving the whole device at start."""


@dataclass(frozen=True)
class Gpu:
    """One unit a replica can be given: a whole GPU, or one MIG instance of a GPU in MIG mode."""

    index: int
    """NVML index of the GPU (of the parent GPU for a MIG instance)."""
    uuid: str
    name: str
    memory_bytes: int = 0
    mig_parent: str | None = None
    """UUID of the GPU this MIG instance is carved from; None for a whole GPU."""

    def to_json(self) -> dict[str, Any]:
        """The unit as the inventory file and ``read()`` details spell it."""
        return {"index": self.index, "uuid": self.uuid, "name": self.name, "memoryBytes": self.memory_bytes,
                "migParent": self.mig_parent}


@dataclass(frozen=True)
class GpuInventory:
    """The units found on this machine, where they came from, and why there are none (if none)."""

    gpus: tuple[Gpu, ...]
    source: str
    reason: str = ""
    notes: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Gpu]:
        return iter(self.gpus)

    def __len__(self) -> int:
        return len(self.gpus)

    def to_json(self) -> dict[str, Any]:
        """What ``read()`` reports under a cluster's details."""
        return {"source": self.source, "reason": self.reason, "notes": list(self.notes),
                "gpus": [g.to_json() for g in self.gpus]}


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value  # older bindings return bytes


def probe_nvml() -> GpuInventory:
    """Every placeable unit NVML reports; an empty inventory with the reason when it cannot."""
    try:
        import pynvml  # nvidia-ml-py: a ctypes binding, loads libnvidia-ml only at nvmlInit()
    except ImportError:
        return GpuInventory((), "nvml", "nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return GpuInventory((), "nvml", f"NVML is unavailable (no NVIDIA driver?): {exc}")
    try:
        units: list[Gpu] = []
        notes: list[str] = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpu = Gpu(index, _text(pynvml.nvmlDeviceGetUUID(handle)), _text(pynvml.nvmlDeviceGetName(handle)),
                      int(pynvml.nvmlDeviceGetMemoryInfo(handle).total))
            try:
                mig_on = pynvml.nvmlDeviceGetMigMode(handle)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
            except pynvml.NVMLError:  # NotSupported: a GPU without MIG
                mig_on = False
            if not mig_on:
                units.append(gpu)
                continue
            instances = list(_mig_instances(pynvml, handle, gpu))
            if not instances:
                notes.append(f"GPU {index} ({gpu.uuid}) is in MIG mode with no MIG instance: nothing to place on it")
            units.extend(instances)
        reason = "" if units else ("NVML reports no GPU" if not notes else "; ".join(notes))
        return GpuInventory(tuple(units), "nvml", reason, tuple(notes))
    except pynvml.NVMLError as exc:
        return GpuInventory((), "nvml", f"NVML failed while listing GPUs: {exc}")
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _mig_instances(pynvml: Any, handle: Any, parent: Gpu) -> Iterator[Gpu]:
    for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except pynvml.NVMLError:  # NotFound: this slot holds no instance
            continue
        yield Gpu(parent.index, _text(pynvml.nvmlDeviceGetUUID(mig)), _text(pynvml.nvmlDeviceGetName(mig)),
                  int(pynvml.nvmlDeviceGetMemoryInfo(mig).total), parent.uuid)


def read_inventory(path: str | Path) -> GpuInventory:
    """The units listed in an inventory file; ``PermanentError(reason="InvalidGpuInventory")`` naming the entry and field."""
    where = f"{INVENTORY_ENV}={path}"
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PermanentError(f"{where}: cannot read a JSON GPU list: {exc}", reason="InvalidGpuInventory") from exc
    entries = document.get("gpus") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise PermanentError(f"{where}: expected a JSON list of GPUs (or {{\"gpus\": [...]}})", reason="InvalidGpuInventory")
    units = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("uuid"), str) or not entry["uuid"]:
            raise PermanentError(f"{where}: entry {number}: field 'uuid' must be a non-empty string",
                                 reason="InvalidGpuInventory")
        try:
            units.append(Gpu(int(entry.get("index", number)), entry["uuid"], str(entry.get("name", "GPU")),
                             int(entry.get("memoryBytes", 0)), entry.get("migParent")))
        except (TypeError, ValueError) as exc:
            raise PermanentError(f"{where}: entry {number}: {exc}", reason="InvalidGpuInventory") from exc
    uuids = [u.uuid for u in units]
    if len(set(uuids)) != len(uuids):
        raise PermanentError(f"{where}: a uuid is listed twice", reason="InvalidGpuInventory")
    return GpuInventory(tuple(units), f"file {path}", "" if units else f"{where} lists no GPU")


def discover_gpus(environ: Mapping[str, str] | None = None) -> GpuInventory:
    """The units to place on: the inventory file ``AMLOPS_GPU_INVENTORY`` names, else what NVML reports."""
    path = (os.environ if environ is None else environ).get(INVENTORY_ENV)
    return read_inventory(path) if path else probe_nvml()


def write_inventory(path: Path, gpus: Sequence[Gpu]) -> Path:
    """Write an inventory file for ``AMLOPS_GPU_INVENTORY`` (what tests and benchmarks hand to processes)."""
    path.write_text(json.dumps([g.to_json() for g in gpus], indent=2))
    return path


@dataclass(frozen=True)
class Allocation:
    """The GPU ids one service holds on one cluster.

    ``needed`` is how many of ``ids`` its replicas need (the rest is a surge spare); None means all
    of them. ``held`` are the ids its live replicas run on right now, which are never given away.
    """

    cluster: str
    ids: tuple[str, ...]
    needed: int | None = None
    held: frozenset[str] = field(default_factory=frozenset)

    def spare(self) -> tuple[str, ...]:
        """Ids of the pool no replica needs or holds: what another service may take."""
        if self.needed is None:
            return ()
        count = len(self.ids) - max(self.needed, len(self.held & set(self.ids)))
        if count <= 0:
            return ()
        return tuple([i for i in self.ids if i not in self.held][-count:])

    def locked(self) -> frozenset[str]:
        """Ids nobody else may take: the pool less its spare, plus whatever a replica still runs on."""
        return (frozenset(self.ids) - frozenset(self.spare())) | self.held


def allocations(services: Sequence[ServiceRow], replicas: Sequence[ReplicaRow], *, but: str) -> dict[str, Allocation]:
    """Every service's GPU pool but ``but``'s: how much of it its replicas need, and what they run on now."""
    held: dict[str, set[str]] = {}
    for rep in replicas:
        held.setdefault(rep.service, set()).update(rep.gpus)
    found = {}
    for row in services:
        if row.name == but:
            continue
        policy = row.launch.get("autoscale")
        count = int(policy.get("max", row.replicas)) if isinstance(policy, dict) else row.replicas
        found[row.name] = Allocation(row.cluster, row.gpu_pool, count * row.gpus_per_replica,
                                     frozenset(held.get(row.name, ())))
    return found


def pending_gpus(desired: Iterable[DesiredResource], name: str, cluster: str, others: Mapping[str, Allocation], *,
                 physical: bool) -> int:
    """GPUs the declared services other than ``name`` need and do not hold yet (what a surge spare must leave free)."""
    pending = 0
    for resource in desired:
        manifest = resource.manifest
        if not isinstance(manifest, WebserviceManifest) or manifest.name == name or not manifest.spec.resources.gpu:
            continue
        spec = manifest.spec
        if not physical and spec.cluster != cluster:
            continue  # virtual GPUs are per cluster
        count = spec.replicas if spec.replicas is not None else spec.max_replicas()
        holding = others.get(manifest.name)
        pending += max(0, count * spec.resources.gpu - (len(holding.ids) if holding else 0))
    return pending


def candidate_ids(cluster: str, capacity: int, physical: Sequence[Gpu], gpus_per_replica: int = 1) -> list[str]:
    """Every GPU id a cluster could ever be given (before subtracting what others hold).

    A replica with several GPUs gets whole GPUs only: a CUDA process sees one MIG instance at most.
    """
    if physical:
        return [g.uuid for g in physical if gpus_per_replica == 1 or g.mig_parent is None]
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
    pending: int = 0,
) -> tuple[str, ...]:
    """The GPU ids ``service`` should hold, or ``PermanentError(reason="Unschedulable")``.

    ``others`` are the pools of every other service (any cluster); their spare ids count as free.
    ``pending`` is how many GPUs other declared services still need and do not hold yet: the
    pool gets a surge spare only when it fits beside them. Ids in ``current`` come first, so a
    re-placement keeps running replicas on their GPUs.
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
    sharing = [a for a in others.values() if physical or a.cluster == cluster]  # who draws from the same ids
    locked = {i for a in sharing for i in a.locked()}
    spare = {i for a in sharing for i in a.spare()} - locked
    same_cluster_locked = sum(len(a.locked()) for a in others.values() if a.cluster == cluster)
    same_cluster_spare = sum(len(a.spare()) for a in others.values() if a.cluster == cluster)
    candidates = candidate_ids(cluster, capacity, physical, gpus_per_replica)
    open_ids = [i for i in candidates if i not in locked and i not in spare]
    given_up = [i for i in candidates if i in spare]
    free = max(0, min(capacity - same_cluster_locked, len(open_ids) + len(given_up)))
    if need > free:
        physical_note = f", {len(physical)} physical on this machine" if physical else ""
        raise PermanentError(
            f"Unschedulable: 0/{max(capacity, 1)} GPUs are available: Insufficient nvidia.com/gpu. "
            f"Service '{service}' requests {_plural(need)} ({replicas} replicas × {_plural(gpus_per_replica)}) "
            f"but cluster '{cluster}' has {_plural(free)} free (capacity {capacity}, "
            f"{same_cluster_locked} in use by other services{physical_note}).",
            reason="Unschedulable",
        )
    # Surge only into units nobody else holds, needs now, or is declared to need.
    surge_room = min(capacity - same_cluster_locked - same_cluster_spare, len(open_ids)) - pending
    size = need + gpus_per_replica if need + gpus_per_replica <= surge_room else need
    usable = set(open_ids) | set(given_up)
    kept = list(dict.fromkeys(i for i in current if i in usable))
    ordered = kept + [i for i in open_ids if i not in kept] + [i for i in given_up if i not in kept]
    return tuple(ordered[:size])


def replica_environment(ids: Sequence[str], declared: Mapping[str, str]) -> dict[str, str]:
    """What a replica holding ``ids`` gets on top of its Environment's variables.

    ``CUDA_VISIBLE_DEVICES`` lists its units by UUID (empty: no device at all), and a replica on a
    GPU grows its TensorFlow memory on demand unless its Environment says otherwise.
    """
    physical = [i for i in ids if not i.startswith("virtual:")]
    env = {"CUDA_VISIBLE_DEVICES": ",".join(physical) if physical else CPU_ONLY_VISIBLE_DEVICES}
    if physical:
        env[ALLOW_GROWTH_ENV] = declared.get(ALLOW_GROWTH_ENV, "true")
    return env


def visible_devices(ids: Sequence[str]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a replica holding ``ids``: their UUIDs, or CPU-only."""
    return replica_environment(ids, {})["CUDA_VISIBLE_DEVICES"]
