"""Azure ML v1 web services (MMS): create, update (JSON patch), delete, keys, tokens, logs and operations."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from controller.emulator.deploying import Deployment, DeployOutcome
from controller.emulator.records import (
    MMS_API,
    WorkspaceRef,
    first_set,
    now_iso,
    public,
    req_verdict,
    tags_match,
    workspace_key,
)
from controller.emulator.routetables import WS_TEMPLATE, Request, Response, Router, json_response, mms_error
from controller.emulator.v1assets import V1AssetRoutes, _model_public
from controller.structs.logformats import event_logger
from controller.structs.vmsizes import gpus_per_node

log = event_logger(__name__)

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")


class V1ServiceRoutes(V1AssetRoutes):
    """Azure ML v1 web services (MMS): create, update (JSON patch), delete, keys, tokens, logs and operations."""

    def _register_v1_services(self, router: Router) -> None:
        r = router.add
        mms = MMS_API + WS_TEMPLATE
        r("POST", "api", mms + "/services", self.create_service)
        # The SDK's pre-flight checks (a dry run that writes nothing); it skips them on any non-200.
        r("POST", "api", mms + "/services/validate", self.validation_not_emulated)
        r("POST", "api", mms + "/services/validate/resource", self.validation_not_emulated)
        r("POST", "api", mms + "/services/validate/name/{name}", self.validation_not_emulated)
        r("GET", "api", mms + "/services", self.list_services)
        r("GET", "api", mms + "/services/{name}", self.get_service)
        r("PATCH", "api", mms + "/services/{name}", self.update_service)
        r("DELETE", "api", mms + "/services/{name}", self.delete_service)
        r("POST", "api", mms + "/services/{name}/listkeys", self.list_keys)
        r("POST", "api", mms + "/services/{name}/regenerateKeys", self.regenerate_keys)
        r("POST", "api", mms + "/services/{name}/token", self.service_token)
        r("GET", "api", mms + "/services/{name}/logs", self.service_logs)
        r("GET", "api", mms + "/operations/{id}", self.get_operation)

    def _service_key(self, params: dict[str, str]) -> str:
        return f"{workspace_key(params)}/{params['name']}"

    def _service_public(self, rec: dict[str, Any]) -> dict[str, Any]:
        out = public(rec)
        ws_key = rec["_workspace"]
        out["models"] = [_model_public(m) for mid in (rec.get("environmentImageRequest") or {}).get("modelIds", [])
                         if (m := self.store.get("model", f"{ws_key}/{mid}")) is not None]
        return out

    def list_services(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        services = self.store.list("service", workspace_key(req.params) + "/")
        q = req.query
        if q.get("computeType"):
            services = [s for s in services if s["computeType"].lower() == q["computeType"].lower()]
        if q.get("tags"):
            services = [s for s in services if tags_match(s.get("kvTags") or {}, q["tags"])]
        if q.get("properties"):
            services = [s for s in services if tags_match(s.get("properties") or {}, q["properties"])]
        if q.get("modelName"):
            services = [s for s in services if any(m.split(":")[0] == q["modelName"] for m in s["environmentImageRequest"].get("modelIds", []))]
        if q.get("modelId"):
            services = [s for s in services if q["modelId"] in s["environmentImageRequest"].get("modelIds", [])]
        return json_response(200, {"value": [self._service_public(s) for s in services]})

    def get_service(self, req: Request) -> Response:
        rec = self.store.get("service", self._service_key(req.params))
        if rec is None:
            if self._workspace(req.params) is None:
                return self._no_workspace(req.params)
            return mms_error(404, "ServiceNotFound", f"Service {req.params['name']} not found in workspace {req.params['ws']}.")
        return json_response(200, self._service_public(rec))

    def _resolve_deployment(self, ws_key: str, rec: dict[str, Any]) -> Deployment | Response:
        """What the data plane needs: unpacked sources, model folders and the environment."""
        image = rec.get("environmentImageRequest") or {}
        models = []
        for mid in image.get("modelIds") or []:
            model = self.store.get("model", f"{ws_key}/{mid}")
            if model is None:
                return mms_error(400, "BadRequest", f"Model {mid} does not exist in the workspace.")
            folder = None
            if str(model["url"]).startswith("aml://asset/"):
                asset = self.store.get("asset", f"{ws_key}/{model['url'].removeprefix('aml://asset/')}")
                prefix = ((asset or {}).get("artifacts") or [{}])[0].get("prefix", "")
                found = self.artifact_prefix_dir(ws_key, prefix)
                folder = found.parent if found is not None else None
            if folder is None:
                return mms_error(400, "BadRequest", f"The files of model {mid} were never uploaded.")
            models.append((model["name"], int(model["version"]), folder))
        assets: dict[str, Path] = {}
        for asset in image.get("assets") or []:
            url = str(asset.get("url", ""))
            if not url.startswith("aml://artifact/"):
                return mms_error(400, "BadRequest", f"Asset {asset.get('id')} has an unsupported url {url!r}.")
            local = self.artifact_file(ws_key, url.removeprefix("aml://artifact/"))
            if local is None:
                return mms_error(400, "BadRequest", f"Asset {asset.get('id')} ({url}) was never uploaded.")
            assets[str(asset.get("id"))] = local
        env = image.get("environment") or {}
        compute = self.store.get("compute", f"{ws_key}/{str(rec['computeName']).lower()}") or {}
        cprops = (compute.get("properties") or {}).get("properties") or {}
        vm_size, agent_count = str(cprops.get("agentVmSize") or "Standard_D3_v2"), int(cprops.get("agentCount") or 3)
        return Deployment(
            name=rec["name"], workspace_key=ws_key, compute=rec["computeName"], models=tuple(models),
            driver_program=image.get("driverProgram"), assets=assets,
            unpack={str(a.get("id")) for a in image.get("assets") or [] if a.get("unpack")},
            environment=env, replicas=int(rec["numReplicas"] or 1), vm_size=vm_size, agent_count=agent_count,
            autoscale=dict(rec["autoScaler"]), resources=dict(rec["containerResourceRequirements"]),
            auth="key" if rec["authEnabled"] else ("token" if rec["aadAuthEnabled"] else "none"),
            scoring_timeout_ms=int(rec["scoringTimeoutMs"]),
            max_concurrent=int(rec["maxConcurrentRequestsPerContainer"]), max_queue_wait_ms=int(rec["maxQueueWaitMs"]),
        )

    def _gpu_check(self, ws_key: str, rec: dict[str, Any]) -> str | None:
        """AKS's scheduler verdict: None if the pods fit, else the message Kubernetes gives."""
        gpu = int(rec["containerResourceRequirements"].get("gpu") or 0)
        if gpu == 0:
            return None
        compute = self.store.get("compute", f"{ws_key}/{rec['computeName'].lower()}")
        if compute is None:
            return None
        props = compute["properties"]["properties"]
        nodes, per_node = int(props["agentCount"]), gpus_per_node(str(props["agentVmSize"]))
        used = sum(int(s["numReplicas"] or 0) * int(s["containerResourceRequirements"].get("gpu") or 0)
                   for s in self.store.list("service", ws_key + "/")
                   if s["name"] != rec["name"] and s["computeName"].lower() == rec["computeName"].lower()
                   and s["state"] in ("Healthy", "Transitioning", "Unhealthy"))
        free = nodes * per_node - used
        wanted = int(rec["numReplicas"] or 1) * gpu
        if gpu <= per_node and wanted <= free:
            return None
        fits_per_node = 0 if gpu > per_node else nodes
        return (f"0/{nodes} nodes are available: {nodes - fits_per_node if fits_per_node else nodes} Insufficient "
                f"nvidia.com/gpu. Service {rec['name']} asks for {rec['numReplicas']} replicas × {gpu} GPU = {wanted} "
                f"GPUs; cluster {rec['computeName']} has {nodes} × {per_node} GPU ({props['agentVmSize']}), "
                f"{max(free, 0)} free.")

    def _run_deployment(self, key: str, op_id: str, action: str, fail: str | None) -> None:
        """Bring the data plane to the service record, then settle the record and its operation."""
        rec = self.store.get("service", key)
        if rec is None:
            self._finish_operation(op_id, "Failed", {"code": "NotFound", "message": "service vanished"})
            return
        ws_key = rec["_workspace"]
        outcome: DeployOutcome
        if fail is not None:
            outcome = DeployOutcome("Failed", error={"code": "DeploymentFailed", "message": fail})
        elif (unschedulable := self._gpu_check(ws_key, rec)) is not None:
            self.dataplane.delete(rec["name"])
            outcome = DeployOutcome("Unschedulable", error={
                "code": "DeploymentTimedOut",
                "message": "Couldn't Schedule because the kubernetes cluster didn't have available resources after "
                           f"trying for 00:05:00. Pod scheduling failed: {unschedulable}",
                "details": [{"code": "Unschedulable", "message": unschedulable}]})
        else:
            deployment = self._resolve_deployment(ws_key, rec)
            if isinstance(deployment, Response):
                outcome = DeployOutcome("Failed", error=json.loads(deployment.body))
            else:
                outcome = self.dataplane.apply(deployment)
        with self._lock:
            rec = self.store.get("service", key)
            if rec is None:
                return
            rec["state"] = outcome.state
            rec["error"] = outcome.error
            rec["updatedTime"] = now_iso()
            if outcome.scoring_uri:
                rec["scoringUri"] = outcome.scoring_uri
                rec["swaggerUri"] = outcome.scoring_uri.rsplit("/", 1)[0] + "/swagger.json"
            if outcome.notes:
                rec["properties"] = {**(rec.get("properties") or {}), **outcome.notes}
            rec["deploymentStatus"] = {"desiredReplicas": rec["numReplicas"],
                                       "availableReplicas": rec["numReplicas"] if outcome.state == "Healthy" else 0,
                                       "updatedReplicas": rec["numReplicas"] if outcome.state == "Healthy" else 0,
                                       "error": outcome.error}
            self.store.put("service", key, rec)
        state = "Succeeded" if outcome.state == "Healthy" else "Failed"
        self._finish_operation(op_id, state, outcome.error)
        log.info("service.settled", action=action, name=rec["name"], state=outcome.state)

    def _start(self, key: str, op_id: str, action: str, fail: str | None) -> None:
        worker = threading.Thread(target=self._run_deployment, args=(key, op_id, action, fail),
                                  name=f"deploy-{key.rsplit('/', 1)[-1]}", daemon=True)
        worker.start()
        self._workers = [w for w in self._workers if w.is_alive()] + [worker]
        # Answer after the work when it is quick, so the SDK's first poll sees a terminal state.
        worker.join(self.deploy_wait_s)

    def _op_headers(self, req: Request, op_id: str) -> dict[str, str]:
        return {"Operation-Location": f"https://{self.api_host}{MMS_API}{WorkspaceRef(req.params['sub'], req.params['rg'], req.params['ws']).scope}/operations/{op_id}"}

    def create_service(self, req: Request) -> Response:
        wsrec = self._workspace(req.params)
        if wsrec is None:
            return self._no_workspace(req.params)
        try:
            body = dict(req.json())
        except (ValueError, TypeError):
            return mms_error(400, "BadRequest", "The service must be a JSON object.")
        name = str(body.get("name") or "")
        if not _SERVICE_NAME.match(name):
            return mms_error(400, "BadRequest", f"Service name {name!r} is invalid: it must be 3-32 characters of "
                             "lowercase letters, digits and '-', start with a letter and end with a letter or digit.")
        if str(body.get("computeType", "")).upper() != "AKS":
            return mms_error(400, "BadRequest", f"Compute type {body.get('computeType')!r} is not supported; use AKS.")
        ws_key = WorkspaceRef(req.params["sub"], req.params["rg"], req.params["ws"]).key
        key = f"{ws_key}/{name}"
        if self.store.get("service", key) is not None:
            return mms_error(409, "Conflict", f"Service {name} already exists in workspace {req.params['ws']}. "
                             "Update it, or delete it first.")
        compute_name = str(body.get("computeName") or "")
        compute = self.store.get("compute", f"{ws_key}/{compute_name.lower()}")
        if compute is None:
            return mms_error(400, "BadRequest", f"Compute {compute_name!r} was not found in workspace {req.params['ws']}.")
        if compute["properties"]["provisioningState"] != "Succeeded":
            return mms_error(400, "BadRequest", f"Compute {compute_name!r} is in state {compute['properties']['provisioningState']}.")
        rec, problem = _service_record(body, ws_key)
        if problem:
            return mms_error(400, "BadRequest", problem)
        for mid in rec["environmentImageRequest"].get("modelIds", []):
            if self.store.get("model", f"{ws_key}/{mid}") is None:
                return mms_error(400, "BadRequest", f"Model {mid} does not exist in workspace {req.params['ws']}.")
        verdict = req_verdict(req)
        op_id = self._new_operation("service", "Running", verdict.pending_polls,
                                    extra={"operationType": "Deploy", "resourceLocation": f"/api/v1/services/{name}",
                                           "operationDetails": {"subOperationType": "DeployService"}})
        rec["createdBy"] = self._created_by()
        self.store.put("service", key, rec)
        self._start(key, op_id, "created", verdict.fail_operation)
        return Response(202, b"", self._op_headers(req, op_id))

    def update_service(self, req: Request) -> Response:
        key = self._service_key(req.params)
        rec = self.store.get("service", key)
        if rec is None:
            return mms_error(404, "ServiceNotFound", f"Service {req.params['name']} not found.")
        try:
            ops = list(req.json())
        except (ValueError, TypeError):
            return mms_error(400, "BadRequest", "The body must be a JSON patch document (a list of operations).")
        body = public(rec)
        for op in ops:
            if not isinstance(op, dict) or op.get("op") not in ("replace", "add", "remove") or not str(op.get("path", "")).startswith("/"):
                return mms_error(400, "BadRequest", f"Unsupported patch operation {op!r}.")
            parts = [p.replace("~1", "/").replace("~0", "~") for p in str(op["path"]).split("/")[1:]]
            target: Any = body
            for part in parts[:-1]:
                if not isinstance(target, dict):
                    return mms_error(400, "BadRequest", f"Path {op['path']} does not exist.")
                target = target.setdefault(part, {})
            if op["op"] == "remove":
                target.pop(parts[-1], None)
            else:
                target[parts[-1]] = op.get("value")
        new, problem = _service_record(body, rec["_workspace"])
        if problem:
            return mms_error(400, "BadRequest", problem)
        for keep in ("createdTime", "createdBy", "scoringUri", "swaggerUri"):
            new[keep] = rec.get(keep)
        verdict = req_verdict(req)
        op_id = self._new_operation("service", "Running", verdict.pending_polls,
                                    extra={"operationType": "Update", "resourceLocation": f"/api/v1/services/{rec['name']}",
                                           "operationDetails": {"subOperationType": "DeployService"}})
        self.store.put("service", key, new)
        self._start(key, op_id, "updated", verdict.fail_operation)
        return Response(202, b"", self._op_headers(req, op_id))

    def delete_service(self, req: Request) -> Response:
        key = self._service_key(req.params)
        rec = self.store.get("service", key)
        if rec is None:
            return Response(204)
        self.dataplane.delete(rec["name"])
        self.store.delete("service", key)
        op_id = self._new_operation("service", "Succeeded", req_verdict(req).pending_polls,
                                    extra={"operationType": "Delete", "resourceLocation": f"/api/v1/services/{rec['name']}"})
        return Response(202, b"", self._op_headers(req, op_id))

    def validation_not_emulated(self, req: Request) -> Response:
        return mms_error(404, "NotFound", "Service pre-flight validation is not emulated; the SDK skips it.")

    def get_operation(self, req: Request) -> Response:
        op = self._poll_operation(req.params["id"])
        if op is None or op.get("kind") != "service":
            return mms_error(404, "OperationNotFound", f"Operation {req.params['id']} not found.")
        body = {k: v for k, v in op.items() if k not in ("kind", "pendingPolls") and v is not None}
        return json_response(200, body)

    def _keyed_service(self, req: Request) -> dict[str, Any] | Response:
        rec = self.store.get("service", self._service_key(req.params))
        if rec is None:
            return mms_error(404, "ServiceNotFound", f"Service {req.params['name']} not found.")
        if not rec["authEnabled"]:
            return mms_error(400, "BadRequest", f"Service {req.params['name']} does not use key authentication.")
        return rec

    def list_keys(self, req: Request) -> Response:
        rec = self._keyed_service(req)
        if isinstance(rec, Response):
            return rec
        keys = self.dataplane.keys(rec["name"])
        if keys is None:
            return mms_error(409, "Conflict", f"Service {rec['name']} has no running deployment ({rec['state']}).")
        return json_response(200, {"primaryKey": keys[0], "secondaryKey": keys[1]})

    def service_token(self, req: Request) -> Response:
        rec = self.store.get("service", self._service_key(req.params))
        if rec is None:
            return mms_error(404, "ServiceNotFound", f"Service {req.params['name']} not found.")
        if not rec.get("aadAuthEnabled"):
            return mms_error(400, "BadRequest", f"Service {req.params['name']} does not use token authentication.")
        token = self.dataplane.token(rec["name"])
        if token is None:
            return mms_error(409, "Conflict", f"Service {rec['name']} has no running deployment ({rec['state']}).")
        return json_response(200, {"accessToken": token.access_token, "tokenType": token.token_type,
                                   "refreshAfter": token.refresh_after, "expiryOn": token.expiry_on})

    def regenerate_keys(self, req: Request) -> Response:
        rec = self._keyed_service(req)
        if isinstance(rec, Response):
            return rec
        try:
            which = str(dict(req.json()).get("keyType", "")).lower()
        except (ValueError, TypeError):
            which = ""
        if which not in ("primary", "secondary"):
            return mms_error(400, "BadRequest", "keyType must be Primary or Secondary.")
        if not self.dataplane.regenerate(rec["name"], which):
            return mms_error(409, "Conflict", f"Service {rec['name']} has no running deployment ({rec['state']}).")
        # Like Azure, an operation; the SDK sleeps 5 s before its first poll whatever we answer.
        op_id = self._new_operation("service", "Succeeded", req_verdict(req).pending_polls,
                                    extra={"operationType": "RegenerateKeys"})
        return Response(202, b"", self._op_headers(req, op_id))

    def service_logs(self, req: Request) -> Response:
        rec = self.store.get("service", self._service_key(req.params))
        if rec is None:
            return mms_error(404, "ServiceNotFound", f"Service {req.params['name']} not found.")
        tail = int(req.query.get("tail", "5000")) if req.query.get("tail", "5000").isdigit() else 5000
        return json_response(200, {"content": self.dataplane.logs(rec["name"], tail)})


def _service_record(body: dict[str, Any], ws_key: str) -> tuple[dict[str, Any], str | None]:
    """A stored AKS service record from a create body (or a patched record), with Azure's defaults."""
    autoscaler = dict(body.get("autoScaler") or {})
    enabled = autoscaler.get("autoscaleEnabled")
    replicas = body.get("numReplicas")
    if enabled is None:
        enabled = replicas is None
    lo = int(first_set(autoscaler.get("minReplicas"), 1))
    hi = int(first_set(autoscaler.get("maxReplicas"), 10))
    if lo > hi:
        return {}, f"autoScaler.minReplicas ({lo}) must not exceed maxReplicas ({hi})."
    num = int(replicas) if replicas is not None and not enabled else (int(replicas) if replicas else lo)
    if num < 1 or num > 1000:
        return {}, f"numReplicas must be between 1 and 1000 (got {num})."
    crr = dict(body.get("containerResourceRequirements") or {})
    cpu = float(first_set(crr.get("cpu"), 0.1))
    mem = float(first_set(crr.get("memoryInGB"), 0.5))
    gpu = int(first_set(crr.get("gpu"), 0))
    if cpu <= 0 or mem <= 0 or gpu < 0:
        return {}, "containerResourceRequirements: cpu and memoryInGB must be > 0, gpu ≥ 0."
    if crr.get("cpuLimit") is not None and float(crr["cpuLimit"]) < cpu:
        return {}, "containerResourceRequirements.cpuLimit must be ≥ cpu."
    if crr.get("memoryInGBLimit") is not None and float(crr["memoryInGBLimit"]) < mem:
        return {}, "containerResourceRequirements.memoryInGBLimit must be ≥ memoryInGB."
    probe = dict(body.get("livenessProbeRequirements") or {})
    auth = body.get("authEnabled")
    aad = bool(body.get("aadAuthEnabled"))
    if auth and aad:
        return {}, "authEnabled and aadAuthEnabled cannot both be true."
    now = now_iso()
    record = {
        "_workspace": ws_key,
        "id": body["name"], "name": body["name"], "description": body.get("description"),
        "kvTags": body.get("kvTags") or {}, "properties": body.get("properties") or {},
        "state": "Transitioning", "error": None, "createdTime": body.get("createdTime") or now, "updatedTime": now,
        "computeType": "AKS", "computeName": body.get("computeName"), "namespace": body.get("namespace") or "default",
        "appInsightsEnabled": bool(body.get("appInsightsEnabled")),
        "authEnabled": (not aad) if auth is None else bool(auth), "aadAuthEnabled": aad,
        "autoScaler": {"autoscaleEnabled": bool(enabled), "minReplicas": lo, "maxReplicas": hi,
                       "refreshPeriodInSeconds": int(first_set(autoscaler.get("refreshPeriodInSeconds"), 1)),
                       "targetUtilization": int(first_set(autoscaler.get("targetUtilization"), 70))},
        "containerResourceRequirements": {"cpu": cpu, "cpuLimit": crr.get("cpuLimit"), "memoryInGB": mem,
                                          "memoryInGBLimit": crr.get("memoryInGBLimit"), "gpu": gpu, "fpga": None},
        "dataCollection": {"eventHubEnabled": False,
                           "storageEnabled": bool((body.get("dataCollection") or {}).get("storageEnabled"))},
        "maxConcurrentRequestsPerContainer": int(first_set(body.get("maxConcurrentRequestsPerContainer"), 1)),
        "maxQueueWaitMs": int(first_set(body.get("maxQueueWaitMs"), 500)),
        "numReplicas": num,
        "scoringTimeoutMs": int(first_set(body.get("scoringTimeoutMs"), 60000)),
        "scoringUri": body.get("scoringUri"), "swaggerUri": body.get("swaggerUri"),
        "livenessProbeRequirements": {
            "periodSeconds": int(first_set(probe.get("periodSeconds"), 10)),
            "initialDelaySeconds": int(first_set(probe.get("initialDelaySeconds"), 310)),
            "timeoutSeconds": int(first_set(probe.get("timeoutSeconds"), 2)),
            "successThreshold": int(first_set(probe.get("successThreshold"), 1)),
            "failureThreshold": int(first_set(probe.get("failureThreshold"), 3))},
        "environmentImageRequest": dict(body.get("environmentImageRequest") or {}),
        "deploymentStatus": None,
        "isDefault": None, "trafficPercentile": None, "type": None,
    }
    image = record["environmentImageRequest"]
    image.setdefault("modelIds", [])
    for top in ("driverProgram", "assets", "environment", "modelIds"):
        if body.get(top) is not None and top not in image:
            image[top] = body[top]
    return record, None
