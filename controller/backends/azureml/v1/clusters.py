"""AKS computes through azureml-core: created (``AksCompute.provisioning_configuration``) or attached."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from controller.backends.azureml.tags import ownership_tags, split_ownership
from controller.backends.azureml.v1.sdk import quiet
from controller.backends.azureml.v1.sessions import V1Session
from controller.backends.base import ApplyContext
from controller.structs.errors import PermanentError
from controller.structs.manifests import AksClusterManifest, Kind
from controller.structs.plans import Change
from controller.structs.states import ActualResource, Condition, ConditionType, DesiredResource, ResourceId


class ClusterHandler:
    """AksCluster on v1."""

    kind = Kind.AKS_CLUSTER
    # AKS computes made by SDK v1 cannot change size, count or purpose in place.
    replace_fields = frozenset({"vmSize", "agentCount", "location", "clusterPurpose", "attach"})

    def __init__(self, session: V1Session) -> None:
        self.session = session

    def read(self) -> Iterable[ActualResource]:
        """One list call: every AKS compute of the workspace."""
        from azureml.core.compute import AksCompute, ComputeTarget

        ws = self.session.ws
        computes = self.session.call("list computes", lambda: ComputeTarget.list(ws))
        return [_observe(c) for c in computes if isinstance(c, AksCompute)]

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Provision or attach the cluster and wait for Azure's operation."""
        from azureml.core.compute import AksCompute, ComputeTarget

        m = resource.manifest
        assert isinstance(m, AksClusterManifest)
        s = self.session
        ws, spec = s.ws, m.spec
        if spec.attach is not None:
            rg = spec.attach.resourceId.split("/")[4]
            config = AksCompute.attach_configuration(resource_group=rg, cluster_name=spec.attach.resourceId.rsplit("/", 1)[-1],
                                                     cluster_purpose=spec.clusterPurpose)
            payload = AksCompute._build_attach_payload(config, spec.attach.resourceId)
        else:
            config = AksCompute.provisioning_configuration(vm_size=spec.vmSize, agent_count=spec.agentCount,
                                                           cluster_purpose=spec.clusterPurpose, location=spec.location)
            payload = AksCompute._build_create_payload(config, spec.location or ws.location, ws.subscription_id)
        # SDK v1 has no tags argument; the ARM payload does, so ownership goes there.
        payload["tags"] = ownership_tags(resource, ctx)
        ctx.progress(f"provisioning cluster {m.name}", None)
        compute = s.call(f"create compute {m.name}",
                         lambda: ComputeTarget._create_compute_target(ws, m.name, payload, AksCompute))
        with quiet():
            s.call(f"wait for compute {m.name}", lambda: compute.wait_for_completion(show_output=False))
        ctx.progress(f"cluster {m.name} ready", 1.0)

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> None:
        """The same PUT as create (tags and what may change in place)."""
        self.create(resource, ctx)

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Delete (or detach) the compute and wait; already gone is fine."""
        from azureml.core.compute import ComputeTarget
        from azureml.exceptions import ComputeTargetException

        s = self.session
        ws = s.ws
        try:
            compute = s.call(f"get compute {id.name}", lambda: ComputeTarget(ws, id.name))
        except PermanentError as exc:
            if isinstance(exc.__cause__, ComputeTargetException):
                return
            raise
        ctx.progress(f"deleting cluster {id.name}", None)
        with quiet():
            s.call(f"delete compute {id.name}", compute.delete)
            s.call(f"wait for compute {id.name} deletion", lambda: compute.wait_for_completion(is_delete_operation=True))


def _observe(c: Any) -> ActualResource:
    own, spec = split_ownership(c.tags)
    spec.update(vmSize=c.agent_vm_size or spec.get("vmSize"), agentCount=c.agent_count or spec.get("agentCount"),
                clusterPurpose=c.cluster_purpose or spec.get("clusterPurpose"))
    if c.is_attached:
        spec["attach"] = {"resourceId": c.cluster_resource_id}
    state = c.provisioning_state
    ready = state == "Succeeded"
    conds = [Condition(ConditionType.READY, ready, state or "Unknown",
                       "" if ready else json.dumps(c.provisioning_errors)[:500])]
    return ActualResource(ResourceId(Kind.AKS_CLUSTER, c.name), spec, own, tuple(conds),
                          {"provisioningState": state, "location": c.cluster_location or c.location,
                           "clusterFqdn": c.cluster_fqdn})
