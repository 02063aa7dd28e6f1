"""AksCluster on v2: a ``KubernetesCompute`` attachment of an AKS cluster made outside Azure ML.

Azure ML v2 cannot create AKS clusters: the cluster is made with ``az aks create`` and the Azure ML
extension (``az k8s-extension create``), then attached here into ``attach.namespace``. The VM size
and node count stay in the manifest for the GPU rule only. Deleting keeps the cluster itself
(``Detach``); ``deletionPolicy: Retain`` (the default) keeps the attachment too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from controller.backends.azureml.tags import ownership_tags, split_ownership
from controller.backends.azureml.v2.sessions import V2Session
from controller.backends.base import ApplyContext
from controller.structs.errors import PermanentError
from controller.structs.manifests import AksClusterManifest, Kind
from controller.structs.plans import Change
from controller.structs.states import ActualResource, Condition, ConditionType, DesiredResource, ResourceId

DEFAULT_NAMESPACE = "default"
V1_SUFFIX = "-k8s"


def compute_name(session: V2Session, cluster: str) -> str:
    """The KubernetesCompute of AksCluster ``cluster``: named after it, unless a v1 AKS compute holds that
    name (a workspace moving from v1), then ``<cluster>-k8s`` beside it."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        found = session.call(f"get compute {cluster}", lambda: session.client.compute.get(cluster))
    except PermanentError as exc:
        if isinstance(exc.__cause__, ResourceNotFoundError):
            return cluster
        raise
    return cluster if str(getattr(found, "type", "")).lower() == "kubernetes" else cluster + V1_SUFFIX


class ComputeHandler:
    """AksCluster on v2."""

    kind = Kind.AKS_CLUSTER
    # An attachment's cluster and namespace are fixed at attach time.
    replace_fields = frozenset({"workspace", "attach"})

    def __init__(self, session: V2Session) -> None:
        self.session = session

    def read(self) -> Iterable[ActualResource]:
        """One list call: the Kubernetes computes of the workspace."""
        s = self.session
        computes = s.call("list computes", lambda: list(s.client.compute.list()))
        return [_observe(c) for c in computes if str(getattr(c, "type", "")).lower() == "kubernetes"]

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Attach the AKS cluster as a KubernetesCompute and wait for the attach operation."""
        from azure.ai.ml.entities import KubernetesCompute

        m = resource.manifest
        assert isinstance(m, AksClusterManifest)
        if m.spec.attach is None:
            raise PermanentError(f"AksCluster {m.name}: Azure ML v2 cannot create AKS clusters; set attach.resourceId "
                                 "(see amlops validate)", reason="InvalidSpec")
        s = self.session
        compute = KubernetesCompute(name=compute_name(s, m.name), resource_id=m.spec.attach.resourceId,
                                    namespace=m.spec.attach.namespace or DEFAULT_NAMESPACE,
                                    tags=ownership_tags(resource, ctx))
        ctx.progress(f"attaching cluster {m.name}", None)
        poller = s.call(f"attach compute {m.name}", lambda: s.client.compute.begin_attach(compute))
        s.wait(f"attach compute {m.name}", poller, ctx.progress)
        ctx.progress(f"cluster {m.name} attached", 1.0)

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> None:
        """The same attach (tags; what the manifest may change in place)."""
        self.create(resource, ctx)

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Detach (the AKS cluster itself is never deleted by Azure ML v2); already gone is fine."""
        from azure.core.exceptions import ResourceNotFoundError

        s = self.session
        name = compute_name(s, id.name)
        try:
            poller = s.call(f"detach compute {name}", lambda: s.client.compute.begin_delete(name, action="Detach"))
        except PermanentError as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError):
                return
            raise
        s.wait(f"detach compute {name}", poller, ctx.progress)


def _observe(c: Any) -> ActualResource:
    own, spec = split_ownership(c.tags)
    attach = dict(spec.get("attach") or {})
    if c.resource_id:
        attach["resourceId"] = c.resource_id
    if getattr(c, "namespace", None):
        attach["namespace"] = c.namespace
    spec["attach"] = attach
    state = getattr(c, "provisioning_state", None) or "Unknown"
    ready = state == "Succeeded"
    errors = getattr(c, "provisioning_errors", None)
    name = c.name[: -len(V1_SUFFIX)] if c.name.endswith(V1_SUFFIX) and own else c.name
    return ActualResource(ResourceId(Kind.AKS_CLUSTER, name), spec, own,
                          (Condition(ConditionType.READY, ready, state, "" if ready else str(errors or "")[:500]),),
                          {"provisioningState": state, "api": "v2", "computeType": "Kubernetes"})
