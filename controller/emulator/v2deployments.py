"""Azure ML v2 online deployments on ARM, run for real: each deployment is scoring replicas on this machine.

Routes: ``PUT|GET|DELETE {WS}/onlineEndpoints/{ep}/deployments/{name}``, ``GET …/deployments``,
``POST …/deployments/{name}/getLogs`` (``{"tail", "containerType"}`` → ``{"content"}``).

A PUT answers at once (201/200, ``provisioningState`` Creating/Updating, LRO headers) and a worker
thread does what Azure does: check that ``instance_count × GPUs`` fits the free GPUs of the cluster
behind the endpoint's Kubernetes compute (else ``Failed`` with Kubernetes' scheduling message),
then start the replicas on the local backend (the entry script from the uploaded code asset, the
model from the uploaded model asset, the environment's conda spec resolved as the local backend
does) and wait until they are ready. ``Succeeded`` makes the deployment routable through the
endpoint's front; an ``init()`` that fails ends ``Failed``, keeps the replicas' log for
``getLogs``, stops them, and the deployment never takes a request. Answers carry the server
defaults azure-ai-ml needs (``scaleSettings``, request settings PT5S/1/PT0.5S, probes with
failure threshold 30 and initial delay PT10S, ``containerResourceRequirements``, injected
``AZUREML_*`` variables).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

import yaml

from controller.backends.keys import read_keys
from controller.emulator.deploying import Deployment, DeployOutcome
from controller.emulator.frontends import Upstream
from controller.emulator.records import now_iso, req_verdict, workspace_key
from controller.emulator.routetables import WS_TEMPLATE, Request, Response, Router, arm_error, json_response
from controller.emulator.v2assets import system_data, ws_scope
from controller.emulator.v2computes import V2ComputeRoutes
from controller.emulator.v2endpoints import V2EndpointRoutes
from controller.structs.logformats import event_logger

log = event_logger(__name__)

_DEPLOYMENT_NAME: Final = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")
_LOCAL_NAME: Final = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
_DURATION: Final = re.compile(r"^P(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
_DELETED_MEANWHILE: Final = {"code": "NotFound", "message": "The deployment was deleted before it finished."}
_PROBE_DEFAULTS: Final = {"initialDelay": "PT10S", "period": "PT10S", "timeout": "PT2S",
                          "successThreshold": 1, "failureThreshold": 30}


def duration_ms(text: Any, default_ms: int) -> int:
    """An ISO-8601 duration (``PT1M``, ``PT0.5S``) in milliseconds; ``default_ms`` when absent or unreadable."""
    m = _DURATION.match(str(text or "").upper())
    if not text or m is None:
        return default_ms
    hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
    return round((hours * 3600 + minutes * 60 + seconds) * 1000)


def quantity(text: Any, default: float, memory: bool = False) -> float:
    """A Kubernetes quantity: CPU (``"500m"``, ``"1"``) in cores, memory (``"4Gi"``, ``"512Mi"``) in GB."""
    if text is None or str(text).strip() == "":
        return default
    s = str(text).strip()
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    for suffix, factor in units.items():
        if s.endswith(suffix):
            value = float(s[: -len(suffix)]) * factor
            return value / 1e9 if memory else value
    return float(s) / 1e9 if memory else float(s)


def local_service_name(endpoint: str, deployment: str) -> str:
    """The data plane's name for a deployment's replicas (a valid local service name, unique per pair)."""
    plain = f"{endpoint}-{deployment}".lower()
    if _LOCAL_NAME.match(plain) and len(plain) <= 26:
        return f"v2-{plain}"
    digest = hashlib.sha256(f"{endpoint}/{deployment}".lower().encode()).hexdigest()[:8]
    return f"v2-{re.sub(r'[^a-z0-9-]', '', endpoint.lower())[:10]}-{digest}"


class V2DeploymentRoutes(V2EndpointRoutes, V2ComputeRoutes):
    """Azure ML v2 online deployments on ARM, run for real: each deployment is scoring replicas on this machine."""

    def _register_v2_deployments(self, router: Router) -> None:
        r = router.add
        base = WS_TEMPLATE + "/onlineEndpoints/{endpoint}/deployments"
        r("GET", "arm", base, self.list_deployments)
        r("GET", "arm", base + "/{name}", self.get_deployment)
        r("PUT", "arm", base + "/{name}", self.put_deployment)
        r("DELETE", "arm", base + "/{name}", self.delete_deployment)
        r("POST", "arm", base + "/{name}/getLogs", self.deployment_logs)

    # -- records -------------------------------------------------------------------------------------

    def _ep_params(self, params: dict[str, str]) -> dict[str, str]:
        return {**params, "name": params["endpoint"]}

    def _deployment_key(self, params: dict[str, str]) -> str:
        return f"{workspace_key(params)}/{params['endpoint'].lower()}/{params['name'].lower()}"

    @staticmethod
    def deployment_public(rec: dict[str, Any]) -> dict[str, Any]:
        """The deployment as ARM answers it."""
        return {k: v for k, v in rec.items() if not k.startswith("_")}

    def list_deployments(self, req: Request) -> Response:
        if self.endpoint_record(self._ep_params(req.params)) is None:
            return self._endpoint_missing(req.params, req.params["endpoint"])
        prefix = f"{workspace_key(req.params)}/{req.params['endpoint'].lower()}/"
        return json_response(200, {"value": [self.deployment_public(d) for d in self.store.list("deployment", prefix)]})

    def get_deployment(self, req: Request) -> Response:
        rec = self.store.get("deployment", self._deployment_key(req.params))
        if rec is None:
            return arm_error(404, "UserError", f"Could not find deployment {req.params['name']} of endpoint "
                             f"{req.params['endpoint']}.")
        return json_response(200, self.deployment_public(rec))

    def _record(self, req: Request, body: dict[str, Any], endpoint: dict[str, Any],
                existing: dict[str, Any] | None) -> dict[str, Any] | Response:
        """The stored deployment, with Azure's server defaults filled in; a 400 response if invalid."""
        props = dict(body.get("properties") or {})
        kind = str(props.get("endpointComputeType") or ("Kubernetes" if endpoint["properties"].get("compute") else "Managed"))
        if kind not in ("Kubernetes", "Managed"):
            return arm_error(400, "UserError", f"endpointComputeType {kind!r} is not supported.")
        for field, what in (("model", "a model"), ("environmentId", "an environment")):
            if not props.get(field):
                return arm_error(400, "UserError", f"A deployment needs {what} ({field}).")
        code = dict(props.get("codeConfiguration") or {})
        if not code.get("codeId") or not code.get("scoringScript"):
            return arm_error(400, "UserError", "A deployment needs codeConfiguration {codeId, scoringScript}: this "
                             "emulator runs the scoring script itself (no custom containers).")
        sku = dict(body.get("sku") or {})
        scale = dict(props.get("scaleSettings") or {"scaleType": "Default"})
        capacity = int(sku.get("capacity") or (scale.get("minInstances") or 1))
        if capacity < 1:
            return arm_error(400, "UserError", "sku.capacity (instance_count) must be at least 1.")
        crr = dict(props.get("containerResourceRequirements") or {})
        crr.setdefault("containerResourceRequests", None)
        crr.setdefault("containerResourceLimits", None)
        request_settings = {"requestTimeout": "PT5S", "maxConcurrentRequestsPerInstance": 1, "maxQueueWait": "PT0.5S",
                            **{k: v for k, v in dict(props.get("requestSettings") or {}).items() if v is not None}}
        env_vars = {**dict(props.get("environmentVariables") or {}), "AML_APP_ROOT": "/var/azureml-app",
                    "AZUREML_ENTRY_SCRIPT": str(code["scoringScript"]),
                    "AZUREML_MODEL_DIR": "/var/azureml-app/azureml-models"}
        name = req.params["name"]
        created = existing["systemData"]["createdAt"] if existing else now_iso()
        stored_props: dict[str, Any] = {
            **props, "endpointComputeType": kind, "codeConfiguration": code, "scaleSettings": scale,
            "containerResourceRequirements": crr if kind == "Kubernetes" else props.get("containerResourceRequirements"),
            "requestSettings": request_settings, "environmentVariables": env_vars,
            "livenessProbe": {**_PROBE_DEFAULTS, **{k: v for k, v in dict(props.get("livenessProbe") or {}).items() if v is not None}},
            "readinessProbe": {**_PROBE_DEFAULTS, **{k: v for k, v in dict(props.get("readinessProbe") or {}).items() if v is not None}},
            "appInsightsEnabled": bool(props.get("appInsightsEnabled")), "description": props.get("description"),
            "properties": dict(props.get("properties") or {}), "instanceType": props.get("instanceType"),
            "egressPublicNetworkAccess": props.get("egressPublicNetworkAccess") or "Enabled",
            "provisioningState": "Updating" if existing else "Creating",
        }
        return {"_workspace": workspace_key(req.params), "_endpoint": endpoint["name"],
                "_local": local_service_name(endpoint["name"], name), "_error": None, "_logs": None,
                "id": f"{ws_scope(req.params)}/onlineEndpoints/{endpoint['name']}/deployments/{name}",
                "name": name, "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
                "location": body.get("location") or endpoint["location"], "tags": body.get("tags") or {},
                "kind": body.get("kind"), "sku": {"name": sku.get("name") or "Default", "capacity": capacity,
                                                  **({"tier": sku["tier"]} if sku.get("tier") else {})},
                "systemData": system_data(created, now_iso()), "properties": stored_props}

    def put_deployment(self, req: Request) -> Response:
        endpoint = self.endpoint_record(self._ep_params(req.params))
        if endpoint is None:
            return self._endpoint_missing(req.params, req.params["endpoint"])
        if not _DEPLOYMENT_NAME.match(req.params["name"]):
            return arm_error(400, "UserError", f"Deployment name '{req.params['name']}' is invalid: 3-32 characters "
                             "of letters, digits and '-', starting with a letter.")
        try:
            body = dict(req.json())
        except (ValueError, TypeError):
            return arm_error(400, "UserError", "The request body must be an online deployment.")
        key = self._deployment_key(req.params)
        existing = self.store.get("deployment", key)
        if existing is not None and existing["properties"]["provisioningState"] in ("Creating", "Updating", "Deleting"):
            return arm_error(409, "UserError", f"Deployment {req.params['name']} is "
                             f"{existing['properties']['provisioningState']}; wait for that operation to finish.")
        rec = self._record(req, body, endpoint, existing)
        if isinstance(rec, Response):
            return rec
        for field in ("model", "environmentId"):
            if self.asset_version(str(rec["properties"][field])) is None:
                return arm_error(400, "UserError", f"{field} {rec['properties'][field]} does not exist in the workspace.")
        if self.asset_version(str(rec["properties"]["codeConfiguration"]["codeId"])) is None:
            return arm_error(400, "UserError", f"Code {rec['properties']['codeConfiguration']['codeId']} does not exist.")
        op_id, headers = self.mfe_operation(req.params, "odidp", req)
        rec["properties"]["properties"]["AzureAsyncOperationUri"] = headers["Azure-AsyncOperation"]
        self.store.put("deployment", key, rec)
        fail = req_verdict(req).fail_operation
        self.settle_later(lambda: self._run_v2_deployment(key, op_id, fail), f"deployment-{req.params['name']}")
        return json_response(200 if existing else 201, self.deployment_public(rec), headers)

    # -- running it ------------------------------------------------------------------------------------

    def _gpu_shortfall(self, rec: dict[str, Any], endpoint: dict[str, Any]) -> str | None:
        """Kubernetes' scheduler verdict for this deployment on its endpoint's cluster; None if it fits."""
        requests = (rec["properties"].get("containerResourceRequirements") or {}).get("containerResourceRequests") or {}
        gpu = int(quantity(requests.get("gpu") or requests.get("nvidia.com/gpu"), 0))
        if gpu == 0 or not endpoint["properties"].get("compute"):
            return None
        compute_name = str(endpoint["properties"]["compute"]).rsplit("/", 1)[-1].lower()
        compute = self.store.get("compute", f"{rec['_workspace']}/{compute_name}")
        capacity = self.cluster_capacity(compute) if compute else None
        if capacity is None:
            return None
        nodes, per_node, vm_size = capacity
        cluster = str(compute["properties"]["resourceId"]).lower() if compute else ""
        used = 0
        for other in self.store.list("deployment"):
            if other["id"] == rec["id"] or other["properties"]["provisioningState"] not in ("Succeeded", "Creating", "Updating"):
                continue
            ep = self.store.get("endpoint", f"{other['_workspace']}/{other['_endpoint'].lower()}")
            other_compute = self.store.get("compute", f"{other['_workspace']}/"
                                           f"{str((ep or {}).get('properties', {}).get('compute') or '').rsplit('/', 1)[-1].lower()}")
            if other_compute is None or str(other_compute["properties"]["resourceId"]).lower() != cluster:
                continue
            other_req = (other["properties"].get("containerResourceRequirements") or {}).get("containerResourceRequests") or {}
            used += int(other["sku"]["capacity"]) * int(quantity(other_req.get("gpu"), 0))
        free = nodes * per_node - used
        wanted = int(rec["sku"]["capacity"]) * gpu
        if gpu <= per_node and wanted <= free:
            return None
        return (f"0/{nodes} nodes are available: {nodes} Insufficient nvidia.com/gpu. Deployment {rec['name']} asks "
                f"for {rec['sku']['capacity']} instances × {gpu} GPU = {wanted} GPUs; the cluster has {nodes} × "
                f"{per_node} GPU ({vm_size}), {max(free, 0)} free.")

    def _v2_deployment(self, rec: dict[str, Any], endpoint: dict[str, Any]) -> Deployment | str:
        """What the data plane needs, from the uploaded assets; a message if something is missing."""
        params = {"sub": rec["id"].split("/")[2], "rg": rec["id"].split("/")[4], "ws": rec["id"].split("/")[8]}
        model = self.asset_version(str(rec["properties"]["model"]))
        env = self.asset_version(str(rec["properties"]["environmentId"]))
        code = self.asset_version(str(rec["properties"]["codeConfiguration"]["codeId"]))
        if model is None or env is None or code is None:
            return "the model, environment or code of the deployment no longer exists"
        model_path = self.blob_folder_of(str(model["properties"].get("modelUri") or ""), params)
        code_path = self.blob_folder_of(str(code["properties"].get("codeUri") or ""), params)
        if model_path is None or code_path is None:
            return "the model or code asset does not point at the workspace's blob store"
        model_file, code_dir = self._blob_file(model_path), self._blob_file(code_path)
        if not model_file.exists():
            return f"the files of model {model['id']} were never uploaded"
        if not code_dir.is_dir():
            return f"the files of code {code['id']} were never uploaded"
        conda: Any = None
        if env["properties"].get("condaFile"):
            try:
                conda = yaml.safe_load(str(env["properties"]["condaFile"]))
            except yaml.YAMLError as exc:
                return f"the environment's conda file is not YAML: {exc}"
        props = rec["properties"]
        crr = props.get("containerResourceRequirements") or {}
        requests, limits = crr.get("containerResourceRequests") or {}, crr.get("containerResourceLimits") or {}
        scale = props.get("scaleSettings") or {}
        autoscale: dict[str, Any] = {"autoscaleEnabled": False}
        if str(scale.get("scaleType", "")).lower() == "targetutilization":
            autoscale = {"autoscaleEnabled": True, "minReplicas": int(scale.get("minInstances") or 1),
                         "maxReplicas": int(scale.get("maxInstances") or 1),
                         "targetUtilization": int(scale.get("targetUtilizationPercentage") or 70),
                         "refreshPeriodInSeconds": max(1, duration_ms(scale.get("pollingInterval"), 1000) // 1000)}
        user_vars = {k: str(v) for k, v in (props.get("environmentVariables") or {}).items()
                     if k not in ("AML_APP_ROOT", "AZUREML_ENTRY_SCRIPT", "AZUREML_MODEL_DIR")}
        compute = self.store.get("compute", f"{rec['_workspace']}/"
                                 f"{str(endpoint['properties'].get('compute') or '').rsplit('/', 1)[-1].lower()}")
        capacity = self.cluster_capacity(compute) if compute else None
        nodes, _, vm_size = capacity if capacity else (3, 0, "Standard_D3_v2")
        settings = props.get("requestSettings") or {}
        return Deployment(
            name=rec["_local"], workspace_key=rec["_workspace"], compute=f"v2-{rec['_endpoint'].lower()}"[:32],
            models=((f"v2.{model['id'].split('/')[-3]}", int(model["name"]) if str(model["name"]).isdigit() else 1,
                     model_file.parent),),
            driver_program=None, assets={}, unpack=set(),
            environment={"python": {"condaDependencies": conda}, "docker": {"baseImage": env["properties"].get("image")},
                         "environmentVariables": user_vars},
            replicas=int(rec["sku"]["capacity"]), autoscale=autoscale,
            resources={"cpu": quantity(requests.get("cpu"), 0.1), "memoryInGB": quantity(requests.get("memory"), 0.5, True),
                       "gpu": int(quantity(requests.get("gpu"), 0)),
                       "cpuLimit": quantity(limits["cpu"], 0.1) if limits.get("cpu") else None,
                       "memoryInGBLimit": quantity(limits["memory"], 0.5, True) if limits.get("memory") else None},
            auth="key", scoring_timeout_ms=duration_ms(settings.get("requestTimeout"), 5000),
            max_concurrent=int(settings.get("maxConcurrentRequestsPerInstance") or 1),
            max_queue_wait_ms=duration_ms(settings.get("maxQueueWait"), 500),
            vm_size=vm_size or "Standard_D3_v2", agent_count=max(nodes, 1),
            code_dir=code_dir, scoring_script=str(props["codeConfiguration"]["scoringScript"]),
        )

    def _run_v2_deployment(self, key: str, op_id: str, fail: str | None) -> None:
        """Bring the replicas to the deployment record, then settle the record, the router and the operation."""
        rec = self.store.get("deployment", key)
        endpoint = self.store.get("endpoint", key.rsplit("/", 1)[0]) if rec else None
        if rec is None or endpoint is None:
            self._finish_operation(op_id, "Failed", _DELETED_MEANWHILE)
            return
        error: dict[str, Any] | None = None
        outcome: DeployOutcome | None = None
        logs: str | None = None
        if fail is not None:
            error = {"code": "DeploymentFailed", "message": fail}
        elif (shortfall := self._gpu_shortfall(rec, endpoint)) is not None:
            error = {"code": "DeploymentFailed",
                     "message": "Couldn't schedule because the kubernetes cluster didn't have available resources "
                                f"after trying for 00:05:00. Pod scheduling failed: {shortfall}",
                     "details": [{"code": "ResourceNotReady", "message": shortfall}]}
        else:
            deployment = self._v2_deployment(rec, endpoint)
            if isinstance(deployment, str):
                error = {"code": "DeploymentFailed", "message": f"Cannot start the deployment: {deployment}."}
            else:
                outcome = self.dataplane.apply(deployment)
                if outcome.state != "Healthy":
                    logs = self.dataplane.logs(rec["_local"], 5000)
                    self.dataplane.delete(rec["_local"])  # a failed deployment keeps nothing running
                    detail = (outcome.error or {}).get("message", "the replicas did not become ready")
                    error = {"code": "DeploymentFailed",
                             "message": f"The deployment's containers did not become ready: {detail}. "
                                        "Check the deployment logs (get_logs) for the init() failure."}
        keys = self.dataplane.keys(rec["_local"]) if error is None else None
        self.await_release(op_id)
        local = rec["_local"]
        current = self.store.get("deployment", key)
        if current is None or current["properties"]["provisioningState"] == "Deleting":
            # deleted while its replicas started: stop what this run started, then end the operation
            self.dataplane.delete(local)
            self._finish_operation(op_id, "Failed", _DELETED_MEANWHILE)
            return
        with self._lock:
            rec = self.store.get("deployment", key)
            if rec is None:
                self._finish_operation(op_id, "Failed", _DELETED_MEANWHILE)
                self.dataplane.delete(local)
                return
            rec["properties"]["provisioningState"] = "Failed" if error else "Succeeded"
            rec["_error"], rec["_logs"] = error, logs
            if outcome is not None and outcome.notes:
                rec["properties"]["properties"] = {**rec["properties"]["properties"], **outcome.notes}
            self.store.put("deployment", key, rec)
            if error is None and outcome is not None and outcome.scoring_uri:
                self.frontend.set_upstream(rec["_endpoint"], rec["name"], Upstream(outcome.scoring_uri, keys[0] if keys else None))
            elif error is not None:
                self.frontend.set_upstream(rec["_endpoint"], rec["name"], None)
            self._finish_operation(op_id, "Failed" if error else "Succeeded", error)
        log.info("deployment.settled", endpoint=rec["_endpoint"], name=rec["name"],
                 state=rec["properties"]["provisioningState"])

    def restore_routes(self) -> None:
        """After a restart: make every endpoint and Succeeded deployment routable again (replicas were re-adopted)."""
        for ep in self.store.list("endpoint"):
            keys_path = self._keys_path(ep)
            if not keys_path.exists():
                continue
            self.frontend.set_endpoint(ep["name"], ep["properties"]["authMode"], read_keys(keys_path), self._token_key(ep))
            for dep in self.store.list("deployment", f"{ep['_workspace']}/{ep['name'].lower()}/"):
                keys = self.dataplane.keys(dep["_local"])
                uri = self.dataplane.scoring_uri(dep["_local"])
                if dep["properties"]["provisioningState"] == "Succeeded" and uri:
                    self.frontend.set_upstream(ep["name"], dep["name"], Upstream(uri, keys[0] if keys else None))
            self.frontend.set_traffic(ep["name"], dict(ep["properties"]["traffic"]))

    def stop_deployment(self, dep: dict[str, Any]) -> None:
        self.frontend.set_upstream(dep["_endpoint"], dep["name"], None)
        self.dataplane.delete(dep["_local"])

    def delete_deployment(self, req: Request) -> Response:
        key = self._deployment_key(req.params)
        rec = self.store.get("deployment", key)
        if rec is None:
            return Response(204)
        endpoint = self.endpoint_record(self._ep_params(req.params))
        share = int(((endpoint or {}).get("properties", {}).get("traffic") or {}).get(rec["name"], 0))
        if share > 0:
            return arm_error(400, "UserError", f"Deployment {rec['name']} takes {share}% of endpoint "
                             f"{req.params['endpoint']}'s traffic; set its traffic to 0 before deleting it.")
        rec["properties"]["provisioningState"] = "Deleting"
        self.store.put("deployment", key, rec)
        op_id, headers = self.mfe_operation(req.params, "odidp", req)
        self.frontend.set_upstream(rec["_endpoint"], rec["name"], None)

        def work() -> None:
            self.await_release(op_id)
            self.dataplane.delete(rec["_local"])
            self.store.delete("deployment", key)
            self._finish_operation(op_id, "Succeeded")

        self.settle_later(work, f"deployment-delete-{rec['name']}")
        return Response(202, b"", headers)

    def deployment_logs(self, req: Request) -> Response:
        rec = self.store.get("deployment", self._deployment_key(req.params))
        if rec is None:
            return arm_error(404, "UserError", f"Could not find deployment {req.params['name']}.")
        try:
            body = dict(req.json())
        except (ValueError, TypeError):
            body = {}
        tail = int(body.get("tail") or 5000)
        if str(body.get("containerType") or "").lower() == "storageinitializer":
            model = rec["properties"].get("model")
            return json_response(200, {"content": f"Downloading model {model}\nModel downloaded.\n"})
        content = rec["_logs"] if rec.get("_logs") is not None else self.dataplane.logs(rec["_local"], tail)
        lines = str(content).splitlines()[-tail:]
        return json_response(200, {"content": "\n".join(lines) + ("\n" if lines else "")})
