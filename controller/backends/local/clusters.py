"""A local cluster: a record of its declared GPU capacity, mapped onto the GPUs this machine has."""

from __future__ import annotations

from typing import Any

from controller.backends.base import ApplyContext
from controller.backends.local.records import RecordedKind
from controller.structs.errors import PermanentError
from controller.structs.manifests import AksClusterManifest, Kind
from controller.structs.states import Condition, ConditionType, DesiredResource, ResourceId


class ClusterHandler(RecordedKind):
    """AksCluster on the local backend."""

    kind = Kind.AKS_CLUSTER
    # As on Azure: a cluster's machines and purpose are chosen when it is made.
    replace_fields = frozenset({"vmSize", "location", "clusterPurpose", "attach"})

    def apply(self, resource: DesiredResource, ctx: ApplyContext) -> tuple[list[Condition], dict[str, Any]]:
        """The cluster's GPU capacity and this machine's GPUs; GpuUnavailable when it has none."""
        manifest = resource.manifest
        assert isinstance(manifest, AksClusterManifest)
        machine = self.machine
        capacity = manifest.spec.gpu_capacity()
        details = {"gpuCapacity": capacity, "physicalGpus": [g.to_json() for g in machine.gpus],
                   "gpuInventory": {k: v for k, v in machine.inventory.to_json().items() if k != "gpus"}}
        conditions = []
        if capacity and not machine.gpus:
            conditions.append(Condition(ConditionType.GPU_UNAVAILABLE, True, "NoPhysicalGpu",
                                        f"cluster declares {capacity} GPUs but this machine has none "
                                        f"({machine.inventory.reason}); replicas run on CPU"))
        return conditions, details

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Forget the cluster, unless services still run on it."""
        with self.machine.store.snapshot() as conn:
            users = [s.name for s in self.machine.store.all_services(conn) if s.cluster == id.name]
        if users:
            raise PermanentError(f"cluster '{id.name}' still runs services: {', '.join(sorted(users))}", reason="InUse")
        super().delete(id, ctx)
