"""Azure ML v2 computes: ``KubernetesCompute`` attach/detach, and the AKS clusters they attach to.

Azure ML v2 cannot create AKS clusters; it attaches an existing one (``properties.resourceId``, a
``Microsoft.ContainerService/managedClusters`` or ``Microsoft.Kubernetes/connectedClusters`` id)
with a namespace. The clusters themselves are ARM resources of the AKS provider, answered here
with the little the emulator needs (``PUT``/``GET …/managedClusters/{name}``, agent pools with VM
size and count), or declared at start (``amlops emulator --aks-cluster``). Their GPUs (VM size ×
nodes) bound what the deployments on an attached compute may ask for. Attaching a cluster ARM
does not know is a 400, as Azure answers it.

Detaching (or deleting) a Kubernetes compute that online endpoints still use is refused (409),
so a detach never leaves replicas running behind a compute that is gone.
"""

from __future__ import annotations

import re
from typing import Any, Final

from controller.emulator.records import WorkspaceRef, now_iso, req_verdict, workspace_key
from controller.emulator.routetables import WS_TEMPLATE, Request, Response, Router, arm_error, json_response
from controller.emulator.workspaces import WorkspaceRoutes
from controller.structs.vmsizes import gpus_per_node

_AKS: Final = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{cluster}"
_CLUSTER_ID: Final = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    r"(Microsoft\.ContainerService/managedClusters|Microsoft\.Kubernetes/connectedClusters)/[^/]+$", re.IGNORECASE)


def parse_cluster_flag(text: str) -> tuple[str, str, int]:
    """``NAME=VMSIZE:COUNT`` (or a full cluster ARM id instead of NAME) → (name or id, vm size, nodes)."""
    name, sep, rest = text.partition("=")
    size, _, count = rest.partition(":")
    if not sep or not name.strip() or not size.strip() or not count.strip().isdigit() or int(count) < 1:
        raise ValueError(f"an AKS cluster is NAME=VMSIZE:COUNT, e.g. aks1=Standard_NC6s_v3:2 (got {text!r})")
    return name.strip(), size.strip(), int(count)


class V2ComputeRoutes(WorkspaceRoutes):
    """Azure ML v2 computes: ``KubernetesCompute`` attach/detach, and the AKS clusters they attach to."""

    poll_ms: int

    def _register_v2_computes(self, router: Router) -> None:
        r = router.add
        r("GET", "arm", _AKS, self.get_managed_cluster)
        r("PUT", "arm", _AKS, self.put_managed_cluster)
        r("GET", "arm", WS_TEMPLATE + "/computes", self.list_computes)  # v2 lists on ARM, v1 on the api host

    # -- AKS clusters (the AKS resource provider, minimally) ---------------------------------------

    def add_managed_cluster(self, cluster_id: str, vm_size: str, count: int, location: str | None = None) -> dict[str, Any]:
        """Record an AKS cluster with one agent pool."""
        name = cluster_id.rstrip("/").rsplit("/", 1)[-1]
        rec = {"id": cluster_id, "name": name, "type": "Microsoft.ContainerService/ManagedClusters",
               "location": location or self.region,
               "properties": {"provisioningState": "Succeeded", "kubernetesVersion": "1.30.5",
                              "fqdn": f"{name.lower()}.hcp.{location or self.region}.azmk8s.io",
                              "agentPoolProfiles": [{"name": "nodepool1", "count": count, "vmSize": vm_size,
                                                     "mode": "System", "osType": "Linux"}]}}
        self.store.put("aks", cluster_id.lower(), rec)
        return rec

    def get_managed_cluster(self, req: Request) -> Response:
        rec = self.store.get("aks", req.path.rstrip("/").lower())
        if rec is None:
            return arm_error(404, "ResourceNotFound", f"The Resource 'Microsoft.ContainerService/managedClusters/"
                             f"{req.params['cluster']}' under resource group '{req.params['rg']}' was not found.")
        return json_response(200, rec)

    def put_managed_cluster(self, req: Request) -> Response:
        try:
            body = dict(req.json())
            pools = list(dict(body.get("properties") or {}).get("agentPoolProfiles") or [])
            pool = dict(pools[0])
            vm_size, count = str(pool["vmSize"]), int(pool["count"])
        except (ValueError, TypeError, KeyError, IndexError):
            return arm_error(400, "InvalidParameter", "A managed cluster needs properties.agentPoolProfiles "
                             "[{vmSize, count}].")
        cluster_id = (f"/subscriptions/{req.params['sub']}/resourceGroups/{req.params['rg']}/providers/"
                      f"Microsoft.ContainerService/managedClusters/{req.params['cluster']}")
        existed = self.store.get("aks", cluster_id.lower()) is not None
        rec = self.add_managed_cluster(cluster_id, vm_size, count, body.get("location"))
        return json_response(200 if existed else 201, rec)

    def cluster_capacity(self, compute: dict[str, Any]) -> tuple[int, int, str] | None:
        """``(nodes, GPUs per node, VM size)`` of the cluster behind a compute, or None if unknown."""
        props = compute.get("properties") or {}
        if props.get("computeType") == "AKS":
            inner = props.get("properties") or {}
            return int(inner.get("agentCount") or 0), gpus_per_node(str(inner.get("agentVmSize") or "")), \
                str(inner.get("agentVmSize") or "")
        cluster = self.store.get("aks", str(props.get("resourceId") or "").lower())
        if cluster is None:
            return None
        pools = cluster["properties"]["agentPoolProfiles"]
        nodes = sum(int(p["count"]) for p in pools)
        per_node = max((gpus_per_node(str(p["vmSize"])) for p in pools), default=0)
        return nodes, per_node, str(pools[0]["vmSize"])

    # -- Kubernetes computes ---------------------------------------------------------------------------

    def put_compute(self, req: Request) -> Response:
        try:
            body = dict(req.json())
            props = dict(body["properties"])
        except (ValueError, KeyError, TypeError):
            props, body = {}, {}
        if props.get("computeType") != "Kubernetes":
            response = super().put_compute(req)
        else:
            response = self._attach_kubernetes(req, body, props)
        response.headers.setdefault("retry-after-ms", str(self.poll_ms))
        return response

    def _attach_kubernetes(self, req: Request, body: dict[str, Any], props: dict[str, Any]) -> Response:
        wsrec = self._workspace(req.params)
        if wsrec is None:
            return self._no_workspace(req.params)
        name = req.params["name"]
        resource_id = str(props.get("resourceId") or "")
        if not _CLUSTER_ID.match(resource_id):
            return arm_error(400, "UserError", "A Kubernetes compute attaches an existing cluster: "
                             "properties.resourceId must be a Microsoft.ContainerService/managedClusters or "
                             f"Microsoft.Kubernetes/connectedClusters id (got {resource_id!r}).")
        if self.store.get("aks", resource_id.lower()) is None:
            return arm_error(400, "UserError", f"The Kubernetes cluster {resource_id} was not found. Create the AKS "
                             "cluster first (Azure ML v2 attaches clusters, it does not create them) and install "
                             "the Azure ML extension on it.")
        inner = dict(props.get("properties") or {})
        namespace = str(inner.get("namespace") or "default")
        key = self._compute_key(req.params)
        existing = self.store.get("compute", key)
        if existing is not None and existing["properties"]["resourceId"].lower() != resource_id.lower():
            return arm_error(409, "UserError", f"Compute '{name}' already attaches {existing['properties']['resourceId']}; "
                             "detach it before attaching another cluster under this name.")
        location = props.get("computeLocation") or body.get("location") or wsrec["location"]
        failed = req_verdict(req).fail_operation
        record = {
            "id": f"{WorkspaceRef(req.params['sub'], req.params['rg'], req.params['ws']).scope}/computes/{name}", "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/computes", "location": location,
            "tags": body.get("tags") or {}, "identity": body.get("identity"),
            "properties": {
                "computeType": "Kubernetes", "computeLocation": location, "description": props.get("description"),
                "createdOn": existing["properties"]["createdOn"] if existing else now_iso(), "modifiedOn": now_iso(),
                "resourceId": resource_id, "provisioningState": "Failed" if failed else "Succeeded",
                "provisioningErrors": [{"error": {"code": "AttachFailed", "message": failed}}] if failed else None,
                "isAttachedCompute": True, "disableLocalAuth": bool(props.get("disableLocalAuth")),
                "properties": {"namespace": namespace, "defaultInstanceType": "defaultinstancetype",
                               "instanceTypes": inner.get("instanceTypes") or {},
                               "extensionInstanceReleaseTrain": "stable", "vcName": None},
            },
        }
        self.store.put("compute", key, record)
        op = self._new_operation("compute", "Failed" if failed else "Succeeded", req_verdict(req).pending_polls,
                                 error={"code": "AttachFailed", "message": failed} if failed else None)
        return json_response(200 if existing else 201, record,
                             {"Azure-AsyncOperation": self._compute_op_url(req.params["sub"], location, op)})

    def delete_compute(self, req: Request) -> Response:
        users = [e["name"] for e in self.store.list("endpoint", workspace_key(req.params) + "/")
                 if str(e["properties"].get("compute") or "").rsplit("/", 1)[-1].lower() == req.params["name"].lower()]
        if users:
            return arm_error(409, "UserError", f"Compute '{req.params['name']}' is used by online endpoints "
                             f"{', '.join(users)}; delete them before detaching the compute.")
        response = super().delete_compute(req)
        response.headers.setdefault("retry-after-ms", str(self.poll_ms))
        return response

