"""Azure ML v2 online endpoints on ARM, and the long-running operations of every v2 write.

Routes (method + lower-cased path, any api-version), ``{WS}`` the workspace's ARM id:

- ``PUT|GET|DELETE {WS}/onlineEndpoints/{name}``, ``GET {WS}/onlineEndpoints``
- ``POST {WS}/onlineEndpoints/{name}/listKeys | token | regenerateKeys`` (``keyValue`` sets a key)
- ``GET /subscriptions/{sub}/providers/Microsoft.MachineLearningServices/locations/{region}/mfeOperationsStatus/{id}``
  (the ``Azure-AsyncOperation`` URL: ``{"status": InProgress|Succeeded|Failed, "error"}``) and
  ``…/mfeOperationResults/{id}`` (the ``Location`` URL: 202 while running, 200 when done).

Writes answer 200/201 (PUT) or 202 (DELETE, regenerateKeys) with ``Azure-AsyncOperation``,
``Location`` and ``retry-after-ms`` (never a fractional ``Retry-After``: the SDK parses it as an
int). An endpoint PUT's traffic table reaches the router only when its operation reaches
``Succeeded`` (``Frontend.set_traffic`` in the same step), and only deployments whose
provisioning succeeded may take traffic.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Final

from controller.backends.keys import ensure_keys, ensure_token_key, read_keys, token_for, write_keys
from controller.backends.keys import new_key as fresh_key
from controller.emulator.frontends import Frontend
from controller.emulator.records import ARM_HOST, now_iso, public, req_verdict, workspace_key
from controller.emulator.routetables import WS_TEMPLATE, Request, Response, Router, arm_error, json_response
from controller.emulator.v2assets import V2AssetRoutes, system_data, ws_scope
from controller.structs.logformats import event_logger

log = event_logger(__name__)

_ENDPOINT_NAME: Final = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")
_OPS: Final = "/subscriptions/{sub}/providers/Microsoft.MachineLearningServices/locations/{loc}"
TERMINAL: Final = ("Succeeded", "Failed", "Canceled")


class V2EndpointRoutes(V2AssetRoutes):
    """Azure ML v2 online endpoints on ARM, and the long-running operations of every v2 write."""

    frontend: Frontend
    poll_ms: int
    lro_delay_s: float

    def _register_v2_endpoints(self, router: Router) -> None:
        r = router.add
        ep = WS_TEMPLATE + "/onlineEndpoints"
        r("GET", "arm", ep, self.list_endpoints)
        r("GET", "arm", ep + "/{name}", self.get_endpoint)
        r("PUT", "arm", ep + "/{name}", self.put_endpoint)
        r("DELETE", "arm", ep + "/{name}", self.delete_endpoint)
        r("POST", "arm", ep + "/{name}/listKeys", self.endpoint_keys)
        r("POST", "arm", ep + "/{name}/token", self.endpoint_token)
        r("POST", "arm", ep + "/{name}/regenerateKeys", self.regenerate_endpoint_keys)
        r("GET", "arm", _OPS + "/mfeOperationsStatus/{op}", self.mfe_operation_status)
        r("GET", "arm", _OPS + "/mfeOperationResults/{op}", self.mfe_operation_result)

    # -- operations ----------------------------------------------------------------------------

    def mfe_operation(self, params: dict[str, str], prefix: str, req: Request, **extra: Any) -> tuple[str, dict[str, str]]:
        """A new running operation and the LRO headers that point at it."""
        op_id = f"{prefix}:{uuid.uuid4()}:{uuid.uuid4()}"
        # A ``pendingPolls`` fault holds the operation InProgress for that many status polls: its work
        # (a traffic switch, a deployment becoming routable) waits for them (``await_release``).
        self.store.put("operation", op_id, {"id": op_id, "kind": "mfe", "state": "Running", "pendingPolls": 0,
                                            "holdPolls": req_verdict(req).pending_polls, "createdTime": now_iso(),
                                            "endTime": None, "error": None, **extra})
        ws = self._workspace(params) or {}
        base = f"https://{ARM_HOST}/subscriptions/{params['sub']}/providers/Microsoft.MachineLearningServices/" \
               f"locations/{ws.get('location', self.region)}"
        return op_id, {"Azure-AsyncOperation": f"{base}/mfeOperationsStatus/{op_id}?api-version=2023-04-01-preview",
                       "Location": f"{base}/mfeOperationResults/{op_id}?api-version=2023-04-01-preview",
                       "retry-after-ms": str(self.poll_ms), "x-ms-async-operation-timeout": "PT1H"}

    def _poll_mfe(self, op_id: str) -> dict[str, Any] | None:
        with self._lock:
            op = self.store.get("operation", op_id)
            if op is not None and op["state"] not in TERMINAL and op.get("holdPolls", 0) > 0:
                op["holdPolls"] -= 1
                self.store.put("operation", op_id, op)
            return op

    def await_release(self, op_id: str, limit_s: float = 600.0) -> None:
        """Block until the operation's held polls (a ``pendingPolls`` fault) have all been made."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            op = self.store.get("operation", op_id)
            if op is None or op.get("holdPolls", 0) <= 0:
                return
            time.sleep(0.02)

    def mfe_operation_status(self, req: Request) -> Response:
        op = self._poll_mfe(req.params["op"])
        if op is None or op.get("kind") != "mfe":
            return arm_error(404, "NotFound", f"Operation {req.params['op']} was not found.")
        status = "InProgress" if op["state"] not in TERMINAL else op["state"]
        body: dict[str, Any] = {"id": req.path, "name": op["id"], "status": status, "startTime": op["createdTime"]}
        if op.get("error"):
            body["error"] = op["error"]
        if status != "InProgress":
            body["endTime"] = op.get("endTime") or now_iso()
            return json_response(200, body)
        return json_response(200, body, {"retry-after-ms": str(self.poll_ms)})

    def mfe_operation_result(self, req: Request) -> Response:
        op = self._poll_mfe(req.params["op"])
        if op is None or op.get("kind") != "mfe":
            return arm_error(404, "NotFound", f"Operation {req.params['op']} was not found.")
        if op["state"] not in TERMINAL:
            return Response(202, b"", {"Location": f"https://{ARM_HOST}{req.path}?api-version=2023-04-01-preview",
                                       "retry-after-ms": str(self.poll_ms)})
        if op["state"] != "Succeeded":
            error = op.get("error") or {"code": "OperationFailed", "message": "The operation failed."}
            return json_response(400, {"error": error})
        return json_response(200, {})

    def settle_later(self, work: Any, name: str) -> None:
        """Run ``work`` in a daemon thread (the operation completes there)."""
        worker = threading.Thread(target=work, name=name, daemon=True)
        worker.start()
        self._workers = [w for w in self._workers if w.is_alive()] + [worker]

    # -- endpoint records ------------------------------------------------------------------------

    def _endpoint_key(self, params: dict[str, str], name: str | None = None) -> str:
        return f"{workspace_key(params)}/{(name or params['name']).lower()}"

    def endpoint_record(self, params: dict[str, str], name: str | None = None) -> dict[str, Any] | None:
        """The stored endpoint (with private ``_`` fields), or None."""
        return self.store.get("endpoint", self._endpoint_key(params, name))

    def _keys_path(self, rec: dict[str, Any]) -> Path:
        return self.state_dir / "endpoint-keys" / f"{rec['_uid']}.json"

    def _token_path(self, rec: dict[str, Any]) -> Path:
        return self.state_dir / "endpoint-keys" / f"{rec['_uid']}.token.json"

    def _token_key(self, rec: dict[str, Any]) -> bytes | None:
        path = self._token_path(rec)
        if not path.exists():
            return None
        return str(json.loads(path.read_text())["tokenSigningKey"]).encode()

    def _endpoint_missing(self, params: dict[str, str], name: str | None = None) -> Response:
        return arm_error(404, "UserError", f"Could not find endpoint {name or params['name']} in workspace "
                         f"{params['ws']}.")

    def endpoint_public(self, rec: dict[str, Any]) -> dict[str, Any]:
        """The endpoint as ARM answers it."""
        return public(rec)

    def list_endpoints(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        found = self.store.list("endpoint", workspace_key(req.params) + "/")
        if req.query.get("name"):
            found = [e for e in found if e["name"] == req.query["name"]]
        return json_response(200, {"value": [self.endpoint_public(e) for e in found]})

    def get_endpoint(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        rec = self.endpoint_record(req.params)
        if rec is None:
            return self._endpoint_missing(req.params)
        return json_response(200, self.endpoint_public(rec))

    def _traffic_problem(self, params: dict[str, str], traffic: dict[str, Any]) -> str | None:
        if any(not isinstance(v, int) or v < 0 or v > 100 for v in traffic.values()):
            return "Traffic values must be integers between 0 and 100."
        total = sum(traffic.values())
        if total not in (0, 100):
            return f"Traffic values must sum to 100 (or 0); they sum to {total}."
        for name, percent in traffic.items():
            dep = self.store.get("deployment", f"{self._endpoint_key(params)}/{name.lower()}")
            if dep is None:
                return f"Deployment {name} named in the traffic table does not exist on endpoint {params['name']}."
            state = dep["properties"]["provisioningState"]
            if percent > 0 and state not in ("Succeeded", "Updating"):
                return (f"Deployment {name} is in provisioning state {state}; only a deployment whose provisioning "
                        "succeeded can take traffic.")
        return None

    def put_endpoint(self, req: Request) -> Response:
        wsrec = self._workspace(req.params)
        if wsrec is None:
            return self._no_workspace(req.params)
        name = req.params["name"]
        if not _ENDPOINT_NAME.match(name):
            return arm_error(400, "UserError", f"Endpoint name '{name}' is invalid: 3-32 characters of letters, "
                             "digits and '-', starting with a letter and ending with a letter or digit.")
        try:
            body = dict(req.json())
            props = dict(body.get("properties") or {})
        except (ValueError, TypeError):
            return arm_error(400, "UserError", "The request body must be an online endpoint with 'properties'.")
        auth = str(props.get("authMode") or "Key")
        compute = props.get("compute")
        canonical = {"key": "Key", "amltoken": "AMLToken", "aadtoken": "AADToken"}.get(auth.lower())
        if canonical is None or (canonical == "AADToken" and compute):
            return arm_error(400, "UserError", f"authMode {auth!r} is not supported for this endpoint; "
                             "Kubernetes online endpoints support Key and AMLToken.")
        if compute:
            target = self.store.get("compute", f"{workspace_key(req.params)}/{str(compute).rsplit('/', 1)[-1].lower()}")
            if target is None or target["properties"]["computeType"] != "Kubernetes":
                return arm_error(400, "UserError", f"Compute {compute} is not a Kubernetes compute attached to "
                                 f"workspace {req.params['ws']}.")
        for other in self.store.list("endpoint"):
            if other["name"].lower() == name.lower() and other["_workspace"] != workspace_key(req.params):
                return arm_error(409, "UserError", f"An endpoint named {name} already exists in this region; "
                                 "endpoint names are unique per region.")
        traffic = {str(k): v for k, v in dict(props.get("traffic") or {}).items()}
        existing = self.endpoint_record(req.params)
        if existing is not None:
            if existing["properties"]["provisioningState"] in ("Creating", "Updating", "Deleting"):
                return arm_error(409, "UserError", f"Endpoint {name} is {existing['properties']['provisioningState']}"
                                 "; wait for that operation to finish.")
            if existing["properties"]["authMode"] != canonical:
                return arm_error(400, "UserError", "The auth mode of an existing endpoint cannot be changed.")
        problem = self._traffic_problem(req.params, traffic)
        if problem:
            return arm_error(400, "UserError", problem)
        created = existing["systemData"]["createdAt"] if existing else now_iso()
        uid = existing["_uid"] if existing else uuid.uuid4().hex
        op_id, headers = self.mfe_operation(req.params, "oeidp", req)
        rec: dict[str, Any] = {
            "_workspace": workspace_key(req.params), "_uid": uid, "_pendingTraffic": traffic,
            "id": f"{ws_scope(req.params)}/onlineEndpoints/{name}", "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
            "location": body.get("location") or wsrec["location"], "tags": body.get("tags") or {},
            "kind": body.get("kind") or ("K8S" if compute else "Managed"),
            "identity": body.get("identity") or {"type": "SystemAssigned"},
            "systemData": system_data(created, now_iso()),
            "properties": {
                "authMode": canonical, "description": props.get("description"),
                "properties": {**dict(props.get("properties") or {}), "azureml.onlineendpointid": uid,
                               "AzureAsyncOperationUri": headers["Azure-AsyncOperation"]},
                "traffic": dict(existing["properties"]["traffic"]) if existing else {},
                "mirrorTraffic": dict(props.get("mirrorTraffic") or {}), "compute": compute,
                "scoringUri": self.frontend.scoring_uri(name),
                "swaggerUri": self.frontend.scoring_uri(name).rsplit("/", 1)[0] + "/swagger.json",
                "publicNetworkAccess": props.get("publicNetworkAccess") or "Enabled",
                "provisioningState": "Updating" if existing else "Creating",
            },
        }
        self.store.put("endpoint", self._endpoint_key(req.params), rec)
        ensure_keys(self._keys_path(rec))
        if canonical == "AMLToken":
            ensure_token_key(self._token_path(rec))
        self.frontend.set_endpoint(name, canonical, read_keys(self._keys_path(rec)), self._token_key(rec))
        fail = req_verdict(req).fail_operation
        key = self._endpoint_key(req.params)
        self.settle_later(lambda: self._settle_endpoint(key, op_id, fail), f"endpoint-{name}")
        return json_response(200 if existing else 201, self.endpoint_public(rec), headers)

    def _settle_endpoint(self, key: str, op_id: str, fail: str | None) -> None:
        """End an endpoint PUT: the traffic table switches in the same step as the operation succeeds."""
        time.sleep(self.lro_delay_s)
        self.await_release(op_id)
        with self._lock:
            rec = self.store.get("endpoint", key)
            if rec is None:
                self._finish_operation(op_id, "Failed", {"code": "NotFound", "message": "The endpoint was deleted."})
                return
            traffic = dict(rec.pop("_pendingTraffic", {}) or {})
            if fail is not None:
                rec["properties"]["provisioningState"] = "Failed"
                self.store.put("endpoint", key, rec)
                self._finish_operation(op_id, "Failed", {"code": "EndpointUpdateFailed", "message": fail})
                return
            self.frontend.set_traffic(rec["name"], traffic)
            rec["properties"]["traffic"] = traffic
            rec["properties"]["provisioningState"] = "Succeeded"
            self.store.put("endpoint", key, rec)
            self._finish_operation(op_id, "Succeeded")
        log.info("endpoint.settled", name=rec["name"], traffic=traffic)

    def delete_endpoint(self, req: Request) -> Response:
        rec = self.endpoint_record(req.params)
        if rec is None:
            return Response(204)
        rec["properties"]["provisioningState"] = "Deleting"
        key = self._endpoint_key(req.params)
        self.store.put("endpoint", key, rec)
        op_id, headers = self.mfe_operation(req.params, "oeidp", req)
        self.frontend.remove_endpoint(rec["name"])

        def work() -> None:
            self.await_release(op_id)
            for dep in self.store.list("deployment", key + "/"):
                self.stop_deployment(dep)
                self.store.delete("deployment", f"{key}/{dep['name'].lower()}")
            self.store.delete("endpoint", key)
            for path in (self._keys_path(rec), self._token_path(rec)):
                path.unlink(missing_ok=True)
            self._finish_operation(op_id, "Succeeded")
            log.info("endpoint.deleted", name=rec["name"])

        self.settle_later(work, f"endpoint-delete-{rec['name']}")
        return Response(202, b"", headers)

    def stop_deployment(self, dep: dict[str, Any]) -> None:
        """Stop a deployment's replicas (the deployments family overrides this)."""

    # -- keys and tokens -------------------------------------------------------------------------

    def _keyed_endpoint(self, req: Request, mode: str) -> dict[str, Any] | Response:
        rec = self.endpoint_record(req.params)
        if rec is None:
            return self._endpoint_missing(req.params)
        if rec["properties"]["authMode"] != mode:
            return arm_error(400, "UserError", f"Endpoint {rec['name']} uses {rec['properties']['authMode']} auth, "
                             f"not {mode}.")
        return rec

    def endpoint_keys(self, req: Request) -> Response:
        rec = self._keyed_endpoint(req, "Key")
        if isinstance(rec, Response):
            return rec
        primary, secondary = read_keys(self._keys_path(rec))
        return json_response(200, {"primaryKey": primary, "secondaryKey": secondary})

    def endpoint_token(self, req: Request) -> Response:
        rec = self._keyed_endpoint(req, "AMLToken")
        if isinstance(rec, Response):
            return rec
        token = token_for(self._token_path(rec), rec["name"])
        return json_response(200, {"accessToken": token.access_token, "tokenType": token.token_type,
                                   "expiryTimeUtc": token.expiry_on, "refreshAfterTimeUtc": token.refresh_after})

    def regenerate_endpoint_keys(self, req: Request) -> Response:
        rec = self._keyed_endpoint(req, "Key")
        if isinstance(rec, Response):
            return rec
        try:
            body = dict(req.json())
        except (ValueError, TypeError):
            body = {}
        which = str(body.get("keyType") or "").lower()
        if which not in ("primary", "secondary"):
            return arm_error(400, "UserError", "keyType must be Primary or Secondary.")
        value = body.get("keyValue")
        primary, secondary = read_keys(self._keys_path(rec))
        current = primary if which == "primary" else secondary
        # ``keyValue`` sets the key; the SDK sends the current value, which means "regenerate".
        new = str(value) if value and str(value) != current else fresh_key()
        if len(new) < 16:
            return arm_error(400, "UserError", "keyValue must be at least 16 characters.")
        primary, secondary = (new, secondary) if which == "primary" else (primary, new)
        write_keys(self._keys_path(rec), primary, secondary)
        self.frontend.set_keys(rec["name"], (primary, secondary))
        op_id, headers = self.mfe_operation(req.params, "oeidp", req)
        self._finish_operation(op_id, "Succeeded")
        return Response(202, b"", {k: v for k, v in headers.items() if k != "Azure-AsyncOperation"})
