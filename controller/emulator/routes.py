"""The handlers: AAD login, ARM, workspace discovery, compute, environments, artifacts, blobs, MMS.

Shapes follow what azureml-core 1.61 reads (see /work/shared/azureml-v1-wire-notes.md, checked
against the SDK source). Control-plane operations are long-running as in Azure
(``Azure-AsyncOperation`` for computes, ``Operation-Location`` for services) but answer their
terminal state on the first poll unless a fault asks for pending polls: every non-final poll
costs the SDK 5 seconds.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, quote

from controller.emulator import logins
from controller.emulator.deploying import DataPlane, Deployment, DeployOutcome
from controller.emulator.faults import Faults
from controller.emulator.routing import (
    WS_TEMPLATE,
    Request,
    Response,
    Router,
    arm_error,
    json_response,
    mms_error,
)
from controller.emulator.stores import Store
from controller.structs.vmsizes import gpus_per_node

log = logging.getLogger(__name__)

LOGIN_HOST: Final = "login.microsoftonline.com"
ARM_HOST: Final = "management.azure.com"
STORAGE_ACCOUNT: Final = "amlopsemulator"
MMS_API: Final = "/modelmanagement/v1.0"
_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
_COMPUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,22}$")


def now_iso() -> str:
    """UTC now in the ISO form Azure answers."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class WorkspaceRef:
    """A workspace the emulator serves."""

    subscription: str
    resource_group: str
    name: str

    @classmethod
    def parse(cls, text: str) -> WorkspaceRef:
        """``SUB/RG/NAME`` → a reference."""
        parts = text.strip("/").split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"a workspace is SUBSCRIPTION/RESOURCE_GROUP/NAME (got {text!r})")
        return cls(*parts)

    @property
    def scope(self) -> str:
        return (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/"
                f"Microsoft.MachineLearningServices/workspaces/{self.name}")

    @property
    def key(self) -> str:
        return self.scope.lower()


def _key(params: dict[str, str]) -> str:
    return WorkspaceRef(params["sub"], params["rg"], params["ws"]).key


class Emulator:
    """Every route, over one store, one token issuer, one fault table and one data plane."""

    def __init__(self, state_dir: Path, store: Store, issuer: logins.Issuer, faults: Faults,
                 dataplane: DataPlane, region: str = "westeurope", deploy_wait_s: float = 120.0) -> None:
        self.state_dir = state_dir
        self.store = store
        self.issuer = issuer
        self.faults = faults
        self.dataplane = dataplane
        self.region = region
        self.api_host = f"{region}.api.azureml.ms"
        self.blob_host = f"{STORAGE_ACCOUNT}.blob.core.windows.net"
        self.deploy_wait_s = deploy_wait_s
        self.blob_dir = state_dir / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._sas_key = issuer.key + b"/sas"
        self._blocks: dict[str, dict[str, bytes]] = {}
        self._lock = threading.RLock()
        self._workers: list[threading.Thread] = []
        self.router = Router()
        self._register_routes()

    # -- hosts ---------------------------------------------------------------------------------

    def host_kind(self, host: str) -> str | None:
        """Which emulated service answers ``host``; None if the host is not emulated."""
        host = host.lower().split(":")[0]
        if host == LOGIN_HOST:
            return "login"
        if host == ARM_HOST:
            return "arm"
        if host.endswith(".api.azureml.ms"):
            return "api"
        if host.endswith(".blob.core.windows.net"):
            return "blob"
        return None

    # -- workspaces ----------------------------------------------------------------------------

    def ensure_workspace(self, ws: WorkspaceRef, location: str | None = None) -> dict[str, Any]:
        """The workspace record, created on first start."""
        rec = self.store.get("workspace", ws.key)
        if rec is None:
            rec = {"subscription": ws.subscription, "resourceGroup": ws.resource_group, "name": ws.name,
                   "location": location or self.region, "workspaceId": str(uuid.uuid4()), "createdOn": now_iso()}
            self.store.put("workspace", ws.key, rec)
        return rec

    def _workspace(self, params: dict[str, str]) -> dict[str, Any] | None:
        return self.store.get("workspace", _key(params))

    def _workspace_body(self, rec: dict[str, Any]) -> dict[str, Any]:
        ws = WorkspaceRef(rec["subscription"], rec["resourceGroup"], rec["name"])
        sub, rg = rec["subscription"], rec["resourceGroup"]
        arm = f"/subscriptions/{sub}/resourceGroups/{rg}/providers"
        return {
            "id": ws.scope, "name": rec["name"], "type": "Microsoft.MachineLearningServices/workspaces",
            "location": rec["location"], "tags": {}, "etag": None,
            "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid5(uuid.NAMESPACE_URL, ws.key)),
                         "tenantId": self.issuer.principal.tenant_id},
            "sku": {"name": "Basic", "tier": "Basic"},
            "properties": {
                "friendlyName": rec["name"], "description": "", "workspaceId": rec["workspaceId"],
                "provisioningState": "Succeeded", "creationTime": rec["createdOn"],
                "discoveryUrl": f"https://{self.api_host}/discovery",
                "storageAccount": f"{arm}/Microsoft.Storage/storageAccounts/{STORAGE_ACCOUNT}",
                "keyVault": f"{arm}/Microsoft.KeyVault/vaults/amlopsemulatorkv",
                "applicationInsights": f"{arm}/Microsoft.Insights/components/amlopsemulatorai",
                "containerRegistry": None, "hbiWorkspace": False, "allowPublicAccessWhenBehindVnet": False,
                "v1LegacyMode": True, "publicNetworkAccess": "Enabled",
                "mlFlowTrackingUri": f"azureml://{self.region}.api.azureml.ms/mlflow/v1.0{ws.scope}",
            },
        }

    # -- route table ---------------------------------------------------------------------------

    def _register_routes(self) -> None:
        r = self.router.add
        ws = WS_TEMPLATE
        # Azure AD
        r("GET", "login", "/{tenant}/v2.0/.well-known/openid-configuration", self.openid_configuration, authenticated=False)
        r("GET", "login", "/{tenant}/.well-known/openid-configuration", self.openid_configuration, authenticated=False)
        r("GET", "login", "/common/discovery/instance", self.instance_discovery, authenticated=False)
        r("GET", "login", "/{tenant}/discovery/instance", self.instance_discovery, authenticated=False)
        r("POST", "login", "/{tenant}/oauth2/v2.0/token", self.token, authenticated=False)
        r("POST", "login", "/{tenant}/oauth2/token", self.token, authenticated=False)
        # ARM
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
        # environments
        env = "/environment/v1.0" + ws + "/environments"
        r("GET", "api", env, self.list_environments)
        r("GET", "api", env + "/{name}", self.get_environment)
        r("PUT", "api", env + "/{name}", self.put_environment)
        r("GET", "api", env + "/{name}/versions/{version}", self.get_environment)
        r("PUT", "api", env + "/{name}/versions/{version}", self.put_environment)
        # artifacts (SAS upload links)
        r("POST", "api", "/artifact/v2.0" + ws + "/artifacts/batch/metadata/{origin}/{container}", self.create_artifacts)
        # model management
        mms = MMS_API + ws
        r("POST", "api", mms + "/assets", self.create_asset)
        r("GET", "api", mms + "/assets/{id}", self.get_asset)
        r("POST", "api", mms + "/models", self.register_model)
        r("GET", "api", mms + "/models", self.list_models)
        r("GET", "api", mms + "/models/{id}", self.get_model)
        r("DELETE", "api", mms + "/models/{id}", self.delete_model)
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
        # blob storage
        r("PUT", "blob", "/{container}/{blob+}", self.put_blob, authenticated=False)
        r("HEAD", "blob", "/{container}/{blob+}", self.head_blob, authenticated=False)
        r("GET", "blob", "/{container}/{blob+}", self.get_blob, authenticated=False)

    # -- Azure AD ------------------------------------------------------------------------------

    def openid_configuration(self, req: Request) -> Response:
        return json_response(200, logins.openid_configuration(LOGIN_HOST, req.params["tenant"]))

    def instance_discovery(self, req: Request) -> Response:
        return json_response(200, logins.instance_discovery(LOGIN_HOST))

    def token(self, req: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(req.body.decode(errors="replace")).items()}
        principal = self.issuer.principal
        tenant = req.params["tenant"]
        if tenant not in (principal.tenant_id, "organizations", "common"):
            return json_response(400, logins.aad_error(
                "AADSTS90002", f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID.",
                "invalid_request"))
        if form.get("grant_type") != "client_credentials":
            return json_response(400, logins.aad_error(
                "AADSTS70003", "The app requested an unsupported grant type.", "unsupported_grant_type"))
        client_id = form.get("client_id", "")
        if client_id != principal.client_id:
            return json_response(400, logins.aad_error(
                "AADSTS700016", f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'. This can happen if the application has not been installed by the administrator "
                "of the tenant or consented to by any user in the tenant.", "unauthorized_client"))
        if not hmac.compare_digest(form.get("client_secret", "").encode(), principal.client_secret.encode()):
            return json_response(401, logins.aad_error(
                "AADSTS7000215", "Invalid client secret provided. Ensure the secret being sent in the request is "
                f"the client secret value, not the client secret ID, for a secret added to app '{client_id}'."))
        audience = logins.scope_audience(form.get("scope") or form.get("resource", logins.ARM_AUDIENCE))
        token = self.issuer.mint(audience)
        return json_response(200, {"token_type": "Bearer", "expires_in": logins.TOKEN_LIFETIME_S,
                                   "ext_expires_in": logins.TOKEN_LIFETIME_S, "access_token": token})

    # -- ARM -----------------------------------------------------------------------------------

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

    def _no_workspace(self, params: dict[str, str]) -> Response:
        return arm_error(404, "ResourceNotFound",
                         f"The Resource 'Microsoft.MachineLearningServices/workspaces/{params['ws']}' under resource "
                         f"group '{params['rg']}' was not found. For more details please go to "
                         "https://aka.ms/ARMResourceNotFoundFix")

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
        return f"{_key(params)}/{params['name'].lower()}"

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
        return json_response(200, {"value": self.store.list("compute", _key(req.params) + "/")})

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
        users = [s["name"] for s in self.store.list("service", _key(req.params) + "/")
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

    # -- operations (shared) ---------------------------------------------------------------------

    def _new_operation(self, kind: str, state: str, pending_polls: int = 0, error: dict[str, Any] | None = None,
                       extra: dict[str, Any] | None = None) -> str:
        op_id = str(uuid.uuid4())
        self.store.put("operation", op_id, {"id": op_id, "kind": kind, "state": state, "pendingPolls": pending_polls,
                                            "createdTime": now_iso(), "endTime": None, "error": error, **(extra or {})})
        return op_id

    def _finish_operation(self, op_id: str, state: str, error: dict[str, Any] | None = None) -> None:
        with self._lock:
            op = self.store.get("operation", op_id)
            if op is None:
                return
            op.update(state=state, error=error, endTime=now_iso())
            self.store.put("operation", op_id, op)

    def _poll_operation(self, op_id: str) -> dict[str, Any] | None:
        """The operation as a poll sees it: ``Running`` while pending polls remain."""
        with self._lock:
            op = self.store.get("operation", op_id)
            if op is None:
                return None
            if op["state"] in ("Succeeded", "Failed", "Cancelled", "TimedOut") and op.get("pendingPolls", 0) > 0:
                op["pendingPolls"] -= 1
                self.store.put("operation", op_id, op)
                return {**op, "state": "Running", "error": None}
            return op

    # -- environments --------------------------------------------------------------------------

    def _env_prefix(self, params: dict[str, str]) -> str:
        return f"{_key(params)}/{params['name']}/"

    def list_environments(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        latest: dict[str, dict[str, Any]] = {}
        for env in self.store.list("environment", _key(req.params) + "/"):
            if env["name"] not in latest or int(env["version"]) > int(latest[env["name"]]["version"]):
                latest[env["name"]] = env
        return json_response(200, {"value": list(latest.values())})

    def get_environment(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        versions = self.store.list("environment", self._env_prefix(req.params))
        wanted = req.params.get("version")
        found = [v for v in versions if wanted is None or str(v["version"]) == wanted]
        if not found:
            what = f"{req.params['name']}" + (f" version {wanted}" if wanted else "")
            return mms_error(404, "EnvironmentNotFound", f"Environment {what} was not found in the workspace.")
        return json_response(200, max(found, key=lambda v: int(v["version"])))

    def put_environment(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        try:
            body = {k[:1].lower() + k[1:]: v for k, v in dict(req.json()).items()}
        except (ValueError, TypeError):
            return mms_error(400, "BadRequest", "The environment definition must be a JSON object.")
        name = req.params["name"]
        if body.get("name") not in (None, name):
            return mms_error(400, "BadRequest", f"The environment name in the body ({body.get('name')!r}) does not match the URL ({name!r}).")
        content = {k: body.get(k) for k in ("python", "environmentVariables", "docker", "spark", "inferencingStackVersion", "r")}
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        versions = self.store.list("environment", self._env_prefix(req.params))
        wanted = req.params.get("version")
        if wanted is None:
            same = [v for v in versions if v.get("_digest") == digest]
            if same:
                return json_response(200, _public(max(same, key=lambda v: int(v["version"]))))
            wanted = str(max((int(v["version"]) for v in versions if str(v["version"]).isdigit()), default=0) + 1)
        record = {"name": name, "version": wanted, **content, "_digest": digest, "createdTime": now_iso()}
        self.store.put("environment", f"{self._env_prefix(req.params)}{wanted}", record)
        return json_response(200, _public(record))

    # -- artifacts and blobs -------------------------------------------------------------------

    def _sas(self, blob_path: str) -> str:
        expiry = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        sig = base64.b64encode(hmac.new(self._sas_key, f"{blob_path}\n{expiry}".encode(), hashlib.sha256).digest()).decode()
        return f"skoid=emulator&sv=2019-07-07&st={quote(now_iso()[:19] + 'Z')}&se={quote(expiry)}&sr=b&sp=rcw&sig={quote(sig, safe='')}"

    def _sas_ok(self, blob_path: str, query: dict[str, str]) -> bool:
        expiry, sig = query.get("se", ""), query.get("sig", "")
        expected = base64.b64encode(hmac.new(self._sas_key, f"{blob_path}\n{expiry}".encode(), hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected.encode(), sig.encode()):
            return False
        try:
            return datetime.datetime.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC) > datetime.datetime.now(datetime.UTC)
        except ValueError:
            return False

    def create_artifacts(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        try:
            paths = [p["path"] for p in req.json().get("paths", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return arm_error(400, "BadRequest", "Expected {'paths': [{'path': ...}]}.")
        origin, container = req.params["origin"], req.params["container"]
        artifacts, contents = {}, {}
        for path in paths:
            if ".." in path.split("/") or path.startswith("/"):
                return arm_error(400, "BadRequest", f"Invalid artifact path {path!r}.")
            artifact_id = f"{origin}/{container}/{path}"
            blob_path = f"azureml/ExperimentRun/dcid.{container}/{path}"
            self.store.put("artifact", f"{_key(req.params)}/{artifact_id}",
                           {"artifactId": artifact_id, "origin": origin, "container": container, "path": path,
                            "blob": blob_path, "createdTime": now_iso()})
            artifacts[path] = {"artifactId": artifact_id, "origin": origin, "container": container, "path": path,
                               "etag": None, "createdTime": now_iso(), "dataPath": None}
            contents[path] = {"contentUri": f"https://{self.blob_host}/{quote(blob_path)}?{self._sas(blob_path)}",
                              "origin": origin, "container": container, "path": path}
        return json_response(200, {"artifacts": artifacts, "artifactContentInformation": contents, "errors": {}})

    def _blob_file(self, blob_path: str) -> Path:
        target = (self.blob_dir / blob_path).resolve()
        if not target.is_relative_to(self.blob_dir.resolve()):
            raise ValueError(blob_path)
        return target

    def _blob_denied(self) -> Response:
        body = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code><Message>Server failed '
                b"to authenticate the request. Make sure the value of Authorization header is formed correctly including "
                b"the signature.</Message></Error>")
        return Response(403, body, {"Content-Type": "application/xml", "x-ms-error-code": "AuthenticationFailed"})

    def _blob_headers(self, data: bytes) -> dict[str, str]:
        return {"ETag": '"0x' + hashlib.md5(data).hexdigest()[:16].upper() + '"',
                "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
                "x-ms-request-id": str(uuid.uuid4()), "x-ms-version": "2019-07-07",
                "Date": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())}

    def put_blob(self, req: Request) -> Response:
        blob_path = f"{req.params['container']}/{req.params['blob']}"
        if not self._sas_ok(blob_path, req.query):
            return self._blob_denied()
        comp = req.query.get("comp")
        if comp == "block":
            with self._lock:
                self._blocks.setdefault(blob_path, {})[req.query.get("blockid", "")] = req.body
            return Response(201, b"", {**self._blob_headers(req.body),
                                       "Content-MD5": base64.b64encode(hashlib.md5(req.body).digest()).decode(),
                                       "x-ms-request-server-encrypted": "true"})
        if comp == "blocklist":
            ids = re.findall(rb"<(?:Latest|Committed|Uncommitted)>([^<]*)</", req.body)
            with self._lock:
                blocks = self._blocks.pop(blob_path, {})
            try:
                data = b"".join(blocks[i.decode()] for i in ids)
            except KeyError:
                return Response(400, b"<Error><Code>InvalidBlockList</Code></Error>", {"Content-Type": "application/xml"})
        else:
            data = req.body
        target = self._blob_file(blob_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return Response(201, b"", {**self._blob_headers(data), "Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode(),
                                   "x-ms-request-server-encrypted": "true"})

    def _stored_blob(self, req: Request) -> bytes | Response:
        """A blob's bytes, or the error response Azure Storage gives (bad SAS, missing blob)."""
        blob_path = f"{req.params['container']}/{req.params['blob']}"
        if not self._sas_ok(blob_path, req.query):
            return self._blob_denied()
        target = self._blob_file(blob_path)
        if not target.is_file():
            return Response(404, b"", {"x-ms-error-code": "BlobNotFound"})
        return target.read_bytes()

    def head_blob(self, req: Request) -> Response:
        data = self._stored_blob(req)
        if isinstance(data, Response):
            return data
        return Response(200, b"", {**self._blob_headers(data), "Content-Length": str(len(data)),
                                   "x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream",
                                   "x-ms-creation-time": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
                                   "x-ms-lease-state": "available", "x-ms-lease-status": "unlocked",
                                   "x-ms-server-encrypted": "true", "Accept-Ranges": "bytes"})

    def get_blob(self, req: Request) -> Response:
        data = self._stored_blob(req)
        if isinstance(data, Response):
            return data
        return Response(200, data, {**self._blob_headers(data), "x-ms-blob-type": "BlockBlob",
                                    "Content-Type": "application/octet-stream"})

    def artifact_file(self, ws_key: str, artifact_id: str) -> Path | None:
        """The local file holding an uploaded artifact, if it was uploaded."""
        rec = self.store.get("artifact", f"{ws_key}/{artifact_id}")
        if rec is None:
            return None
        path = self._blob_file(rec["blob"])
        return path if path.is_file() else None

    def artifact_prefix_dir(self, ws_key: str, prefix: str) -> Path | None:
        """The local folder holding artifacts under ``origin/container/…`` (a model asset's prefix)."""
        parts = prefix.split("/", 2)
        if len(parts) < 3:
            return None
        folder = self._blob_file(f"azureml/ExperimentRun/dcid.{parts[1]}/{parts[2]}")
        return folder if folder.exists() else None

    # -- model management: assets and models -----------------------------------------------------

    def create_asset(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        try:
            body = dict(req.json())
        except (ValueError, TypeError):
            return mms_error(400, "BadRequest", "The asset must be a JSON object.")
        if not body.get("name") or not body.get("artifacts"):
            return mms_error(400, "BadRequest", "An asset needs a name and at least one artifact.")
        asset_id = uuid.uuid4().hex
        record = {"id": asset_id, "name": body["name"], "type": body.get("type"), "description": body.get("description"),
                  "artifacts": body["artifacts"], "kvTags": body.get("kvTags"), "properties": body.get("properties"),
                  "runid": body.get("runid"), "meta": body.get("meta"), "createdTime": now_iso()}
        self.store.put("asset", f"{_key(req.params)}/{asset_id}", record)
        return json_response(200, record)

    def get_asset(self, req: Request) -> Response:
        rec = self.store.get("asset", f"{_key(req.params)}/{req.params['id']}")
        if rec is None:
            return mms_error(404, "AssetNotFound", f"Asset {req.params['id']} not found.")
        return json_response(200, rec)

    def _created_by(self) -> dict[str, Any]:
        p = self.issuer.principal
        return {"userObjectId": p.client_id, "userPuId": None, "userIdp": None, "userAltSecId": None,
                "userIss": f"https://sts.windows.net/{p.tenant_id}/", "userTenantId": p.tenant_id,
                "userName": p.client_id}

    def register_model(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        try:
            body = dict(req.json())
        except (ValueError, TypeError):
            return mms_error(400, "BadRequest", "The model must be a JSON object.")
        name = body.get("name") or ""
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$", name):
            return mms_error(400, "BadRequest", f"Model name {name!r} is invalid.")
        url = str(body.get("url") or "")
        if url.startswith("aml://asset/") and \
                self.store.get("asset", f"{_key(req.params)}/{url.removeprefix('aml://asset/')}") is None:
            return mms_error(400, "BadRequest", f"Asset {url} does not exist.")
        version = self.store.next_value(f"model-version:{_key(req.params)}/{name}")
        created = now_iso()
        record = {
            "id": f"{name}:{version}", "name": name, "version": version, "framework": body.get("framework") or "Custom",
            "frameworkVersion": body.get("frameworkVersion"), "description": body.get("description"),
            "url": url, "mimeType": body.get("mimeType") or "application/json", "unpack": bool(body.get("unpack")),
            "createdTime": created, "modifiedTime": created, "experimentName": body.get("experimentName"),
            "runId": body.get("runId"), "datasets": body.get("datasets") or [], "kvTags": body.get("kvTags") or {},
            "properties": body.get("properties") or {}, "derivedModelIds": None, "parentModelId": None,
            "sampleInputData": body.get("sampleInputData"), "sampleOutputData": body.get("sampleOutputData"),
            "resourceRequirements": body.get("resourceRequirements"), "createdBy": self._created_by(),
        }
        self.store.put("model", f"{_key(req.params)}/{name}:{version}", record)
        return json_response(200, _model_public(record))

    def get_model(self, req: Request) -> Response:
        rec = self.store.get("model", f"{_key(req.params)}/{req.params['id']}")
        if rec is None:
            return mms_error(404, "ModelNotFound", f"Model with id {req.params['id']} not found in the workspace.")
        return json_response(200, _model_public(rec))

    def list_models(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        models = self.store.list("model", _key(req.params) + "/")
        q = req.query
        if q.get("name"):
            models = [m for m in models if m["name"] == q["name"]]
        if q.get("framework"):
            models = [m for m in models if m["framework"] == q["framework"]]
        if q.get("tags"):
            models = [m for m in models if _tags_match(m.get("kvTags") or {}, q["tags"])]
        if q.get("tag"):
            models = [m for m in models if q["tag"] in (m.get("kvTags") or {})]
        if q.get("properties"):
            models = [m for m in models if _tags_match(m.get("properties") or {}, q["properties"])]
        models.sort(key=lambda m: (m["createdTime"], m["version"]), reverse=True)
        if q.get("latestVersionOnly", "").lower() == "true":
            seen: set[str] = set()
            models = [m for m in models if not (m["name"] in seen or seen.add(m["name"]))]  # type: ignore[func-returns-value]
        if q.get("count", "").isdigit():
            models = models[: int(q["count"])]
        return json_response(200, {"value": [_model_public(m) for m in models]})

    def delete_model(self, req: Request) -> Response:
        ws = _key(req.params)
        users = [s["name"] for s in self.store.list("service", ws + "/")
                 if req.params["id"] in (s.get("environmentImageRequest") or {}).get("modelIds", [])]
        if users:
            return mms_error(409, "Conflict", f"Model {req.params['id']} is used by services: {', '.join(users)}.")
        if not self.store.delete("model", f"{ws}/{req.params['id']}"):
            return mms_error(404, "ModelNotFound", f"Model with id {req.params['id']} not found in the workspace.")
        return Response(200)

    # -- model management: services --------------------------------------------------------------

    def _service_key(self, params: dict[str, str]) -> str:
        return f"{_key(params)}/{params['name']}"

    def _service_public(self, rec: dict[str, Any]) -> dict[str, Any]:
        out = _public(rec)
        ws_key = rec["_workspace"]
        out["models"] = [_model_public(m) for mid in (rec.get("environmentImageRequest") or {}).get("modelIds", [])
                         if (m := self.store.get("model", f"{ws_key}/{mid}")) is not None]
        return out

    def list_services(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        services = self.store.list("service", _key(req.params) + "/")
        q = req.query
        if q.get("computeType"):
            services = [s for s in services if s["computeType"].lower() == q["computeType"].lower()]
        if q.get("tags"):
            services = [s for s in services if _tags_match(s.get("kvTags") or {}, q["tags"])]
        if q.get("properties"):
            services = [s for s in services if _tags_match(s.get("properties") or {}, q["properties"])]
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
        log.info("service_%s name=%s state=%s", action, rec["name"], outcome.state)

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
        body = _public(rec)
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

    def close(self) -> None:
        """Wait briefly for deployments in flight (they run in daemon threads)."""
        for worker in self._workers:
            worker.join(5)


# -- helpers -------------------------------------------------------------------------------------

_VERDICT_ATTR: Final = "_emulator_verdict"


def req_verdict(req: Request) -> Any:
    """The fault verdict the server attached to this request (no faults if none)."""
    from controller.emulator.faults import Verdict

    return getattr(req, _VERDICT_ATTR, Verdict())


def attach_verdict(req: Request, verdict: Any) -> None:
    """Attach the fault verdict to a request, for handlers that start operations."""
    setattr(req, _VERDICT_ATTR, verdict)


def _public(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in rec.items() if not k.startswith("_")}


def _model_public(rec: dict[str, Any]) -> dict[str, Any]:
    return _public(rec)


def _tags_match(tags: dict[str, Any], query: str) -> bool:
    """MMS's tag filter: comma-separated ``key`` or ``key=value`` terms, all of which must hold."""
    for term in filter(None, query.split(",")):
        key, sep, value = term.partition("=")
        if key not in tags or (sep and str(tags[key]) != value):
            return False
    return True


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _service_record(body: dict[str, Any], ws_key: str) -> tuple[dict[str, Any], str | None]:
    """A stored AKS service record from a create body (or a patched record), with Azure's defaults."""
    autoscaler = dict(body.get("autoScaler") or {})
    enabled = autoscaler.get("autoscaleEnabled")
    replicas = body.get("numReplicas")
    if enabled is None:
        enabled = replicas is None
    lo = int(_first(autoscaler.get("minReplicas"), 1))
    hi = int(_first(autoscaler.get("maxReplicas"), 10))
    if lo > hi:
        return {}, f"autoScaler.minReplicas ({lo}) must not exceed maxReplicas ({hi})."
    num = int(replicas) if replicas is not None and not enabled else (int(replicas) if replicas else lo)
    if num < 1 or num > 1000:
        return {}, f"numReplicas must be between 1 and 1000 (got {num})."
    crr = dict(body.get("containerResourceRequirements") or {})
    cpu = float(_first(crr.get("cpu"), 0.1))
    mem = float(_first(crr.get("memoryInGB"), 0.5))
    gpu = int(_first(crr.get("gpu"), 0))
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
                       "refreshPeriodInSeconds": int(_first(autoscaler.get("refreshPeriodInSeconds"), 1)),
                       "targetUtilization": int(_first(autoscaler.get("targetUtilization"), 70))},
        "containerResourceRequirements": {"cpu": cpu, "cpuLimit": crr.get("cpuLimit"), "memoryInGB": mem,
                                          "memoryInGBLimit": crr.get("memoryInGBLimit"), "gpu": gpu, "fpga": None},
        "dataCollection": {"eventHubEnabled": False,
                           "storageEnabled": bool((body.get("dataCollection") or {}).get("storageEnabled"))},
        "maxConcurrentRequestsPerContainer": int(_first(body.get("maxConcurrentRequestsPerContainer"), 1)),
        "maxQueueWaitMs": int(_first(body.get("maxQueueWaitMs"), 500)),
        "numReplicas": num,
        "scoringTimeoutMs": int(_first(body.get("scoringTimeoutMs"), 60000)),
        "scoringUri": body.get("scoringUri"), "swaggerUri": body.get("swaggerUri"),
        "livenessProbeRequirements": {
            "periodSeconds": int(_first(probe.get("periodSeconds"), 10)),
            "initialDelaySeconds": int(_first(probe.get("initialDelaySeconds"), 310)),
            "timeoutSeconds": int(_first(probe.get("timeoutSeconds"), 2)),
            "successThreshold": int(_first(probe.get("successThreshold"), 1)),
            "failureThreshold": int(_first(probe.get("failureThreshold"), 3))},
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

