"""What every route family shares: the emulator's state, workspaces, long-running operations, helpers.

The route families (``identities``, ``workspaces``, ``v1assets``, ``v1services``, ``blobs``,
``v2assets``, ``v2endpoints``) are mixins over :class:`EmulatorBase`; ``emulating.Emulator``
puts them together and owns the route table.
"""

from __future__ import annotations

import copy
import datetime
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from controller.emulator import logins
from controller.emulator.deploying import DataPlane
from controller.emulator.faults import Faults, Verdict
from controller.emulator.routetables import Request, Response, Router, arm_error
from controller.emulator.stores import Store

LOGIN_HOST: Final = "login.microsoftonline.com"
ARM_HOST: Final = "management.azure.com"
STORAGE_ACCOUNT: Final = "amlopsemulator"
MMS_API: Final = "/modelmanagement/v1.0"


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


def workspace_key(params: dict[str, str]) -> str:
    return WorkspaceRef(params["sub"], params["rg"], params["ws"]).key


class EmulatorBase:
    """One store, one token issuer, one fault table and one data plane, shared by every route family."""

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
        return self.store.get("workspace", workspace_key(params))

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
                "v1LegacyMode": False, "publicNetworkAccess": "Enabled",
                "mlFlowTrackingUri": f"azureml://{self.region}.api.azureml.ms/mlflow/v1.0{ws.scope}",
            },
        }

    def _no_workspace(self, params: dict[str, str]) -> Response:
        return arm_error(404, "ResourceNotFound",
                         f"The Resource 'Microsoft.MachineLearningServices/workspaces/{params['ws']}' under resource "
                         f"group '{params['rg']}' was not found. For more details please go to "
                         "https://aka.ms/ARMResourceNotFoundFix")
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

    def _created_by(self) -> dict[str, Any]:
        p = self.issuer.principal
        return {"userObjectId": p.client_id, "userPuId": None, "userIdp": None, "userAltSecId": None,
                "userIss": f"https://sts.windows.net/{p.tenant_id}/", "userTenantId": p.tenant_id,
                "userName": p.client_id}

# -- helpers -------------------------------------------------------------------------------------

_VERDICT_ATTR: Final = "_emulator_verdict"


def req_verdict(req: Request) -> Verdict:
    """The fault verdict the server attached to this request (no faults if none)."""
    verdict = getattr(req, _VERDICT_ATTR, None)
    return verdict if isinstance(verdict, Verdict) else Verdict()


def attach_verdict(req: Request, verdict: Verdict) -> None:
    """Attach the fault verdict to a request, for handlers that start operations."""
    setattr(req, _VERDICT_ATTR, verdict)


def public(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in rec.items() if not k.startswith("_")}


def _model_public(rec: dict[str, Any]) -> dict[str, Any]:
    return public(rec)


def tags_match(tags: dict[str, Any], query: str) -> bool:
    """MMS's tag filter: comma-separated ``key`` or ``key=value`` terms, all of which must hold."""
    for term in filter(None, query.split(",")):
        key, sep, value = term.partition("=")
        if key not in tags or (sep and str(tags[key]) != value):
            return False
    return True


def first_set(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)

