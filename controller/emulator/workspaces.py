"""ARM: subscriptions, the workspace, workspace discovery, and computes (v1 AKS clusters)."""

from __future__ import annotations

import re
import secrets
from typing import Any

from controller.emulator.records import (
    ARM_HOST,
    EmulatorBase,
    WorkspaceRef,
    now_iso,
    req_verdict,
    workspace_key,
)
from controller.emulator.routetables import WS_TEMPLATE, Request, Response, Router, arm_error, json_response

_COMPUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,22}$")


class WorkspaceRoutes(EmulatorBase):
    """ARM: subscriptions, the workspace, workspace discovery, and computes (v1 AKS clusters)."""

    def _register_workspaces(self, router: Router) -> None:
        r = router.add
        ws = WS_TEMPLATE
        r("GET", "arm", "/subscriptions", self.list_subscriptions)
        r("GET", "arm", "/subscriptions/{sub}", self.get_subscription)
        r("GET", "arm", ws, self.get_workspace)
        r("GET", "arm", ws + "/computes/{name}", self.get_compute)
        r("PUT", "arm", ws + "/computes/{name}", self.put_compute)
        r("DELETE", "arm", ws + "/computes/{name}", self.delete_compute)
        r("GET", "arm", "/subscriptions/{sub}/providers/Microsoft.MachineLearningServices/locations/{loc}/computeOperationsStatus/{op}",
          self.get_compute_operation)
        # discovery and the api host
        r("GET", "api", "/discovery", self.discovery, authenticated=False)
        r("GET", "api", "/rp/workspaces" + ws + "/computes", self.list_computes)
        r("GET", "api", "/rp/workspaces" + ws + "/computes/{name}", self.get_compute)

    def _subscriptions(self) -> list[str]:
        return sorted({w["subscription"] for w in self.store.list("workspace")})

    def _subscription_body(self, sub: str) -> dict[str, Any]:
        return {"id": f"/subscriptions/{sub}", "subscriptionId": sub, "tenantId": self.issuer.principal.tenant_id,
                "displayName": f"amlops emulator {sub[:8]}", "state": "Enabled",
                "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01", "quotaId": "PayAsYouGo_2014-09-01",
                                         "spendingLimit": "Off"}, "authorizationSource": "RoleBased"}

    def list_subscriptions(self, req: Request) -> Response:
        return json_response(200, {"value": [self._subscription_body(s) for s in self._subscriptions()]})

    def get_subscription(self, req: Request) -> Response:
        sub = req.params["sub"]
        if sub not in self._subscriptions():
            return arm_error(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
        return json_response(200, self._subscription_body(sub))

    def get_workspace(self, req: Request) -> Response:
        rec = self._workspace(req.params)
        if rec is None:
            return self._no_workspace(req.params)
        return json_response(200, self._workspace_body(rec))

    def discovery(self, req: Request) -> Response:
        base = f"https://{self.api_host}"
        return json_response(200, {"api": base, "catalog": base, "experimentation": base, "gallery": base,
                                   "history": base, "hyperdrive": base, "labeling": base, "modelmanagement": base,
                                   "pipelines": base, "studio": "https://ml.azure.com"})

    # -- computes ------------------------------------------------------------------------------

    def _compute_key(self, params: dict[str, str]) -> str:
        return f"{workspace_key(params)}/{params['name'].lower()}"

    def get_compute(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        rec = self.store.get("compute", self._compute_key(req.params))
        if rec is None:
            return arm_error(404, "ResourceNotFound",
                             f"The Resource 'Microsoft.MachineLearningServices/workspaces/{req.params['ws']}/computes/"
                             f"{req.params['name']}' under resource group '{req.params['rg']}' was not found.")
        return json_response(200, rec)

    def list_computes(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        return json_response(200, {"value": self.store.list("compute", workspace_key(req.params) + "/")})

    def put_compute(self, req: Request) -> Response:
        wsrec = self._workspace(req.params)
        if wsrec is None:
            return self._no_workspace(req.params)
        name = req.params["name"]
        if not _COMPUTE_NAME.match(name):
            return arm_error(400, "ValidationError", f"Compute name '{name}' is invalid: it must be 2-24 characters "
                             "of letters, digits and '-', starting with a letter.")
        try:
            body = req.json()
            props = body["properties"]
        except (ValueError, KeyError, TypeError):
            return arm_error(400, "BadRequest", "The request body must be a compute resource with 'properties'.")
        if props.get("computeType") != "AKS":
            return arm_error(400, "BadRequest", f"Compute type '{props.get('computeType')}' is not supported by this "
                             "emulator; only AKS inference clusters are.")
        inner = dict(props.get("properties") or {})
        attached = bool(props.get("resourceId"))
        agent_count = int(inner.get("agentCount") or 3)
        vm_size = str(inner.get("agentVmSize") or "Standard_D3_v2")
        if agent_count < 1:
            return arm_error(400, "BadRequest", "agentCount must be at least 1.")
        key = self._compute_key(req.params)
        existing = self.store.get("compute", key)
        sub, rg = req.params["sub"], req.params["rg"]
        location = props.get("computeLocation") or body.get("location") or wsrec["location"]
        record = {
            "id": f"{WorkspaceRef(sub, rg, req.params['ws']).scope}/computes/{name}",
            "name": name, "type": "Microsoft.MachineLearningServices/workspaces/computes",
            "location": location, "tags": body.get("tags"),
            "properties": {
                "computeType": "AKS", "computeLocation": location, "description": props.get("description"),
                "createdOn": existing["properties"]["createdOn"] if existing else now_iso(), "modifiedOn": now_iso(),
                "resourceId": props.get("resourceId") or (f"/subscriptions/{sub}/resourceGroups/{rg}/providers/"
                                                          f"Microsoft.ContainerService/managedClusters/{name}{secrets.token_hex(3)}"),
                "provisioningState": "Creating", "provisioningErrors": None, "isAttachedCompute": attached,
                "disableLocalAuth": False,
                "properties": {
                    "agentCount": agent_count, "agentVmSize": vm_size,
                    "clusterPurpose": inner.get("clusterPurpose") or "FastProd",
                    "clusterFqdn": f"{name.lower()}-{secrets.token_hex(4)}.hcp.{location}.azmk8s.io",
                    "loadBalancerType": inner.get("loadBalancerType") or "PublicIp",
                    "loadBalancerSubnet": inner.get("loadBalancerSubnet"),
                    "systemServices": [], "sslConfiguration": {"status": "Disabled"},
                    "aksNetworkingConfiguration": inner.get("aksNetworkingConfiguration"),
                },
            },
        }
        if existing is not None:
            before, after = existing["properties"]["properties"], record["properties"]["properties"]
            changed = [f for f in ("agentCount", "agentVmSize", "clusterPurpose") if before.get(f) != after.get(f)]
            if changed:
                return arm_error(409, "Conflict", f"Compute '{name}' already exists with different "
                                 f"{', '.join(changed)}; AKS compute properties cannot be updated in place. "
                                 "Delete it and create it again.")
            record["properties"]["resourceId"] = existing["properties"]["resourceId"]
            record["properties"]["properties"]["clusterFqdn"] = existing["properties"]["properties"]["clusterFqdn"]
        verdict = req_verdict(req)
        failed = verdict.fail_operation is not None
        record["properties"]["provisioningState"] = "Failed" if failed else "Succeeded"
        if failed:
            record["properties"]["provisioningErrors"] = [{"error": {"code": "ProvisioningFailed", "message": verdict.fail_operation}}]
        self.store.put("compute", key, record)
        op = self._new_operation("compute", "Failed" if failed else "Succeeded", verdict.pending_polls,
                                 error={"code": "ProvisioningFailed", "message": verdict.fail_operation} if failed else None)
        status = 200 if existing else 201
        return json_response(status, record, {"Azure-AsyncOperation": self._compute_op_url(sub, location, op)})

    def _compute_op_url(self, sub: str, location: str, op: str) -> str:
        return (f"https://{ARM_HOST}/subscriptions/{sub}/providers/Microsoft.MachineLearningServices/locations/"
                f"{location}/computeOperationsStatus/{op}?api-version=2021-01-01&service=new")

    def delete_compute(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        key = self._compute_key(req.params)
        rec = self.store.get("compute", key)
        if rec is None:
            return Response(204)
        users = [s["name"] for s in self.store.list("service", workspace_key(req.params) + "/")
                 if s["computeName"].lower() == req.params["name"].lower()]
        if users:
            return arm_error(409, "Conflict", f"Compute '{req.params['name']}' still hosts services: "
                             f"{', '.join(users)}. Delete them first.")
        self.store.delete("compute", key)
        op = self._new_operation("compute", "Succeeded", req_verdict(req).pending_polls)
        return Response(202, b"", {"Azure-AsyncOperation": self._compute_op_url(req.params["sub"], rec["location"], op),
                                   "Location": self._compute_op_url(req.params["sub"], rec["location"], op)})

    def get_compute_operation(self, req: Request) -> Response:
        op = self._poll_operation(req.params["op"])
        if op is None:
            return arm_error(404, "NotFound", f"Operation '{req.params['op']}' not found.")
        status = {"NotStarted": "InProgress", "Running": "InProgress"}.get(op["state"], op["state"])
        body: dict[str, Any] = {"id": req.path, "name": op["id"], "status": status, "startTime": op["createdTime"]}
        if op.get("error"):
            body["error"] = op["error"]
        if status != "InProgress":
            body["endTime"] = op.get("endTime") or now_iso()
        return json_response(200, body)
