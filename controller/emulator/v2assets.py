"""Azure ML v2 assets on ARM: datastores (+ listSecrets), and models, environments and codes (containers + versions).

Shapes follow what azure-ai-ml 1.35 reads (``_from_rest_object``): a model version carries
``flavors`` (an object), an environment version PUT again with a different body is a 409 (the
SDK's "overwrite latest, else next version" fallback depends on it), and a code version can be
looked up by content hash. ``startPendingUpload`` hands out a container SAS in the workspace's
blob store. Models are one registry, as in Azure: a model registered with azureml-core (MMS) is also a v2
model version (its ``modelUri`` the blob folder v1 uploaded), and v1 numbers its next
registration after every v2 version. Environments of the v1 environment service and v2
environment versions live side by side, unshared.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from controller.emulator.blobs import BlobRoutes
from controller.emulator.records import ARM_HOST, WorkspaceRef, now_iso, workspace_key
from controller.emulator.routetables import WS_TEMPLATE, Request, Response, Router, arm_error, json_response

ASSET_KINDS: Final = {"models": "model", "environments": "environment", "codes": "code"}
# Store kinds of their own: v1's MMS models and environment-service environments keep theirs.
STORE_KINDS: Final = {"models": "v2model", "environments": "v2environment", "codes": "v2code"}
DATASTORE: Final = "workspaceblobstore"
# Fields of a version body that are the asset's content: a re-PUT that changes any of them is a conflict.
_CONTENT_FIELDS: Final = {
    "models": ("modelUri", "modelType"),
    "environments": ("image", "condaFile", "build", "inferenceConfig", "osType"),
    "codes": ("codeUri",),
}


def system_data(created: str, modified: str | None = None) -> dict[str, Any]:
    """ARM ``systemData`` for a record created (and last modified) at these times."""
    return {"createdAt": created, "createdBy": "amlops-emulator", "createdByType": "Application",
            "lastModifiedAt": modified or created, "lastModifiedBy": "amlops-emulator",
            "lastModifiedByType": "Application"}


def ws_scope(params: dict[str, str]) -> str:
    """The workspace ARM id of a routed request."""
    return WorkspaceRef(params["sub"], params["rg"], params["ws"]).scope


class V2AssetRoutes(BlobRoutes):
    """Azure ML v2 assets on ARM: datastores (+ listSecrets), and models, environments and codes (containers + versions)."""

    def _register_v2_assets(self, router: Router) -> None:
        r = router.add
        ws = WS_TEMPLATE
        r("GET", "arm", ws + "/datastores", self.list_datastores)
        r("GET", "arm", ws + "/datastores/{name}", self.get_datastore)
        r("POST", "arm", ws + "/datastores/{name}/listSecrets", self.datastore_secrets)
        for plural in ASSET_KINDS:
            base = f"{ws}/{plural}"
            r("GET", "arm", base, self._bound(self.list_asset_containers, plural))
            r("GET", "arm", base + "/{name}", self._bound(self.get_asset_container, plural))
            r("DELETE", "arm", base + "/{name}", self._bound(self.delete_asset_container, plural))
            r("GET", "arm", base + "/{name}/versions", self._bound(self.list_asset_versions, plural))
            r("GET", "arm", base + "/{name}/versions/{version}", self._bound(self.get_asset_version, plural))
            r("PUT", "arm", base + "/{name}/versions/{version}", self._bound(self.put_asset_version, plural))
            r("DELETE", "arm", base + "/{name}/versions/{version}", self._bound(self.delete_asset_version, plural))
            r("POST", "arm", base + "/{name}/versions/{version}/startPendingUpload",
              self._bound(self.start_pending_upload, plural))

    @staticmethod
    def _bound(handler: Callable[[str, Request], Response], plural: str) -> Callable[[Request], Response]:
        return lambda req: handler(plural, req)

    # -- datastores ----------------------------------------------------------------------------

    def blob_container(self, params: dict[str, str]) -> str:
        """The workspace blob store's container (named after the workspace id, as Azure does)."""
        ws = self._workspace(params) or {}
        return f"azureml-blobstore-{ws.get('workspaceId', 'unknown')}"

    def _datastore_body(self, params: dict[str, str]) -> dict[str, Any]:
        ws = self._workspace(params) or {}
        created = str(ws.get("createdOn") or now_iso())
        return {"id": f"{ws_scope(params)}/datastores/{DATASTORE}", "name": DATASTORE,
                "type": "Microsoft.MachineLearningServices/workspaces/datastores",
                "systemData": system_data(created),
                "properties": {"datastoreType": "AzureBlob", "accountName": self.blob_host.split(".")[0],
                               "containerName": self.blob_container(params), "endpoint": "core.windows.net",
                               "protocol": "https", "isDefault": True, "description": None, "tags": {},
                               "properties": {}, "serviceDataAccessAuthIdentity": "None",
                               "credentials": {"credentialsType": "AccountKey"}}}

    def list_datastores(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        # One datastore, the default: an ``isDefault=true`` filter answers the same list.
        return json_response(200, {"value": [self._datastore_body(req.params)]})

    def get_datastore(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        if req.params["name"].lower() != DATASTORE:
            return arm_error(404, "UserError", f"Datastore {req.params['name']} was not found in the workspace.")
        return json_response(200, self._datastore_body(req.params))

    def datastore_secrets(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        if req.params["name"].lower() != DATASTORE:
            return arm_error(404, "UserError", f"Datastore {req.params['name']} was not found in the workspace.")
        return json_response(200, {"secretsType": "Sas", "sasToken": self._sas(self.blob_container(req.params), "c")})

    # -- containers and versions -----------------------------------------------------------------

    def _asset_prefix(self, plural: str, params: dict[str, str]) -> str:
        return f"{workspace_key(params)}/{params['name'].lower()}/"

    def _versions(self, plural: str, params: dict[str, str]) -> list[dict[str, Any]]:
        found = self.store.list(STORE_KINDS[plural], self._asset_prefix(plural, params))
        if plural == "models":  # one model registry: v1 registrations are v2 versions too
            have = {str(v["name"]) for v in found}
            found += [m for m in self._v1_models(params) if str(m["name"]) not in have]
            found.sort(key=lambda v: (v["systemData"]["createdAt"], str(v["name"])))
        return found

    def _version(self, plural: str, params: dict[str, str], version: str) -> dict[str, Any] | None:
        rec = self.store.get(STORE_KINDS[plural], self._asset_prefix(plural, params) + version)
        if rec is None and plural == "models":
            rec = next((m for m in self._v1_models(params) if str(m["name"]) == version), None)
        return rec

    def _v1_models(self, params: dict[str, str]) -> list[dict[str, Any]]:
        """The v1 (MMS) registrations of model ``params['name']``, in the v2 shape."""
        out = []
        for model in self.store.list("model", workspace_key(params) + "/"):
            if str(model["name"]).lower() != params["name"].lower():
                continue
            uri = None
            url = str(model.get("url") or "")
            asset = self.store.get("asset", f"{workspace_key(params)}/{url.removeprefix('aml://asset/')}") \
                if url.startswith("aml://asset/") else None
            prefix = str(((asset or {}).get("artifacts") or [{}])[0].get("prefix", ""))
            parts = prefix.split("/", 2)
            if len(parts) == 3:  # where v1's artifact service put the files (see v1assets)
                uri = f"https://{self.blob_host}/azureml/ExperimentRun/dcid.{parts[1]}/{parts[2]}"
            out.append({"id": f"{ws_scope(params)}/models/{model['name']}/versions/{model['version']}",
                        "name": str(model["version"]), "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
                        "systemData": system_data(str(model["createdTime"])),
                        "properties": {"description": model.get("description"), "tags": model.get("kvTags") or {},
                                       "properties": model.get("properties") or {}, "flavors": {},
                                       "modelType": "custom_model", "modelUri": uri, "jobName": None,
                                       "isAnonymous": False, "isArchived": False, "provisioningState": "Succeeded"}})
        return out

    def _container_body(self, plural: str, params: dict[str, str], versions: list[dict[str, Any]]) -> dict[str, Any]:
        numeric = [int(v["name"]) for v in versions if str(v["name"]).isdigit()]
        latest = str(max(numeric)) if numeric else (str(versions[-1]["name"]) if versions else None)
        name = str(versions[0]["id"].split("/")[-3]) if versions else params["name"]
        created = versions[0]["systemData"]["createdAt"] if versions else now_iso()
        # A container is modified when any of its versions is (registered, re-tagged, archived).
        modified = max((str(v["systemData"]["lastModifiedAt"]) for v in versions), default=created)
        return {"id": f"{ws_scope(params)}/{plural}/{name}", "name": name,
                "type": f"Microsoft.MachineLearningServices/workspaces/{plural}",
                "systemData": system_data(created, modified),
                "properties": {"description": None, "tags": {}, "properties": {}, "isArchived": False,
                               "latestVersion": latest, "nextVersion": str(max(numeric, default=0) + 1),
                               "provisioningState": "Succeeded"}}

    def _asset_missing(self, plural: str, params: dict[str, str], version: str | None = None) -> Response:
        what = f"{ASSET_KINDS[plural]} {params['name']}" + (f" version {version}" if version else " container")
        return arm_error(404, "UserError", f"Could not find asset {what} in the workspace "
                         f"({params['ws']}).")

    def list_asset_containers(self, plural: str, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        groups: dict[str, list[dict[str, Any]]] = {}
        for rec in self.store.list(STORE_KINDS[plural], workspace_key(req.params) + "/"):
            groups.setdefault(rec["id"].split("/")[-3].lower(), []).append(rec)
        if plural == "models":
            for model in self.store.list("model", workspace_key(req.params) + "/"):
                groups.setdefault(str(model["name"]).lower(), [])
        groups = {n: self._versions(plural, {**req.params, "name": n}) for n in groups}
        return json_response(200, {"value": [self._container_body(plural, {**req.params, "name": n}, v)
                                             for n, v in groups.items()]})

    def get_asset_container(self, plural: str, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        versions = self._versions(plural, req.params)
        if not versions:
            return self._asset_missing(plural, req.params)
        return json_response(200, self._container_body(plural, req.params, versions))

    def delete_asset_container(self, plural: str, req: Request) -> Response:
        versions = self._versions(plural, req.params)
        for rec in versions:
            self.store.delete(STORE_KINDS[plural], self._asset_prefix(plural, req.params) + str(rec["name"]))
        return Response(200 if versions else 204)

    def list_asset_versions(self, plural: str, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        versions = self._versions(plural, req.params)
        # Azure lists active versions unless asked otherwise: an archived version is gone from lists
        # (still readable by name and version, and restorable).
        view = req.query.get("listViewType", "ActiveOnly").lower()
        if view != "all":
            versions = [v for v in versions if bool(v["properties"].get("isArchived")) == (view == "archivedonly")]
        wanted_hash = req.query.get("hash")
        if wanted_hash:
            versions = [v for v in versions
                        if (v["properties"].get("properties") or {}).get("hash_sha256") == wanted_hash]
        if "desc" in req.query.get("$orderBy", "").lower():
            versions = list(reversed(versions))
        top = req.query.get("$top", "")
        if top.isdigit():
            versions = versions[: int(top)]
        return json_response(200, {"value": versions})

    def get_asset_version(self, plural: str, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        rec = self._version(plural, req.params, req.params["version"])
        if rec is None:
            return self._asset_missing(plural, req.params, req.params["version"])
        return json_response(200, rec)

    def asset_version(self, arm_id: str) -> dict[str, Any] | None:
        """A v2 asset version by its ARM id (``{WS}/models/{name}/versions/{v}``), or None."""
        parts = arm_id.strip("/").split("/")
        if len(parts) < 12 or parts[-2].lower() != "versions" or parts[-4].lower() not in ASSET_KINDS:
            return None
        params = {"sub": parts[1], "rg": parts[3], "ws": parts[7], "name": parts[-3]}
        return self._version(parts[-4].lower(), params, parts[-1])

    def put_asset_version(self, plural: str, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        try:
            props = dict(dict(req.json())["properties"])
        except (ValueError, KeyError, TypeError):
            return arm_error(400, "UserError", "The request body must be an asset version with 'properties'.")
        key = self._asset_prefix(plural, req.params) + req.params["version"]
        existing = self._version(plural, req.params, req.params["version"])
        if plural == "environments" and not props.get("image") and not props.get("build"):
            return arm_error(400, "UserError", "An environment needs an image or a build context.")
        if plural == "models" and not props.get("modelUri"):
            return arm_error(400, "UserError", "A model version needs a modelUri.")
        if plural == "codes" and not props.get("codeUri"):
            return arm_error(400, "UserError", "A code version needs a codeUri.")
        created = existing["systemData"]["createdAt"] if existing else now_iso()
        props.setdefault("description", None)
        props.setdefault("tags", {})
        props.setdefault("properties", {})
        props.setdefault("isAnonymous", False)
        props.setdefault("isArchived", False)
        props["provisioningState"] = "Succeeded"
        if plural == "models":
            props["flavors"] = props.get("flavors") or {}
            props.setdefault("modelType", "custom_model")
            props.setdefault("jobName", None)
        elif plural == "environments":
            props.setdefault("environmentType", "UserCreated")
            props.setdefault("osType", "Linux")
            props.setdefault("autoRebuild", "Disabled")
        if existing is not None:
            before = {f: existing["properties"].get(f) for f in _CONTENT_FIELDS[plural]}
            after = {f: props.get(f) for f in _CONTENT_FIELDS[plural]}
            if before != after:
                changed = ", ".join(f for f in _CONTENT_FIELDS[plural] if before[f] != after[f])
                return arm_error(409, "UserError", f"{ASSET_KINDS[plural].capitalize()} {req.params['name']} "
                                 f"version {req.params['version']} already exists with a different {changed}; "
                                 "asset versions are immutable. Use a new version.")
        record = {"id": f"{ws_scope(req.params)}/{plural}/{req.params['name']}/versions/{req.params['version']}",
                  "name": req.params["version"],
                  "type": f"Microsoft.MachineLearningServices/workspaces/{plural}/versions",
                  "systemData": system_data(created, now_iso()), "properties": props}
        self.store.put(STORE_KINDS[plural], key, record)
        return json_response(200 if existing else 201, record)

    def delete_asset_version(self, plural: str, req: Request) -> Response:
        gone = self.store.delete(STORE_KINDS[plural], self._asset_prefix(plural, req.params) + req.params["version"])
        return Response(200 if gone else 204)

    def start_pending_upload(self, plural: str, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        # A temporary container of its own per upload, as Azure hands out; its SAS covers the container.
        container = f"{uuid.uuid4()}-{secrets.token_hex(4)}"
        base = f"https://{self.blob_host}/{container}"
        return json_response(200, {
            "pendingUploadId": str(uuid.uuid4()), "pendingUploadType": "TemporaryBlobReference",
            "blobReferenceForConsumption": {"blobUri": base, "storageAccountArmId": None,
                                            "credential": {"credentialType": "SAS",
                                                           "sasUri": f"{base}?{self._sas(container, 'c')}"}}})

    # -- where uploaded files are ------------------------------------------------------------------

    def blob_folder_of(self, uri: str, params: dict[str, str]) -> str | None:
        """The blob path (``container/path``) an asset URI points at: an https blob URL or an
        ``azureml://…/datastores/workspaceblobstore/paths/…`` URI; None if it is neither."""
        if uri.startswith("azureml://"):
            _, sep, path = uri.partition("/paths/")
            return f"{self.blob_container(params)}/{path.strip('/')}" if sep else None
        parts = urlsplit(uri)
        if parts.scheme == "https" and parts.hostname and parts.hostname.lower() == self.blob_host:
            return unquote(parts.path).strip("/")
        return None

    def arm_url(self, path: str) -> str:
        """An absolute ARM URL for ``path``."""
        return f"https://{ARM_HOST}{path}"
