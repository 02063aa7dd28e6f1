"""Azure ML v1 assets: environments (environment service), artifacts (SAS upload links) and MMS assets and models."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from controller.emulator.blobs import BlobRoutes
from controller.emulator.records import MMS_API, now_iso, public, tags_match, workspace_key
from controller.emulator.routetables import (
    WS_TEMPLATE,
    Request,
    Response,
    Router,
    arm_error,
    json_response,
    mms_error,
)


class V1AssetRoutes(BlobRoutes):
    """Azure ML v1 assets: environments (environment service), artifacts (SAS upload links) and MMS assets and models."""

    def _register_v1_assets(self, router: Router) -> None:
        r = router.add
        ws = WS_TEMPLATE
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

    def _env_prefix(self, params: dict[str, str]) -> str:
        return f"{workspace_key(params)}/{params['name']}/"

    def list_environments(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        latest: dict[str, dict[str, Any]] = {}
        for env in self.store.list("environment", workspace_key(req.params) + "/"):
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
                return json_response(200, public(max(same, key=lambda v: int(v["version"]))))
            wanted = str(max((int(v["version"]) for v in versions if str(v["version"]).isdigit()), default=0) + 1)
        record = {"name": name, "version": wanted, **content, "_digest": digest, "createdTime": now_iso()}
        self.store.put("environment", f"{self._env_prefix(req.params)}{wanted}", record)
        return json_response(200, public(record))

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
            self.store.put("artifact", f"{workspace_key(req.params)}/{artifact_id}",
                           {"artifactId": artifact_id, "origin": origin, "container": container, "path": path,
                            "blob": blob_path, "createdTime": now_iso()})
            artifacts[path] = {"artifactId": artifact_id, "origin": origin, "container": container, "path": path,
                               "etag": None, "createdTime": now_iso(), "dataPath": None}
            contents[path] = {"contentUri": f"https://{self.blob_host}/{quote(blob_path)}?{self._sas(blob_path)}",
                              "origin": origin, "container": container, "path": path}
        return json_response(200, {"artifacts": artifacts, "artifactContentInformation": contents, "errors": {}})

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
        self.store.put("asset", f"{workspace_key(req.params)}/{asset_id}", record)
        return json_response(200, record)

    def get_asset(self, req: Request) -> Response:
        rec = self.store.get("asset", f"{workspace_key(req.params)}/{req.params['id']}")
        if rec is None:
            return mms_error(404, "AssetNotFound", f"Asset {req.params['id']} not found.")
        return json_response(200, rec)

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
                self.store.get("asset", f"{workspace_key(req.params)}/{url.removeprefix('aml://asset/')}") is None:
            return mms_error(400, "BadRequest", f"Asset {url} does not exist.")
        version = self.store.next_value(f"model-version:{workspace_key(req.params)}/{name}")
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
        self.store.put("model", f"{workspace_key(req.params)}/{name}:{version}", record)
        return json_response(200, _model_public(record))

    def get_model(self, req: Request) -> Response:
        rec = self.store.get("model", f"{workspace_key(req.params)}/{req.params['id']}")
        if rec is None:
            return mms_error(404, "ModelNotFound", f"Model with id {req.params['id']} not found in the workspace.")
        return json_response(200, _model_public(rec))

    def list_models(self, req: Request) -> Response:
        if self._workspace(req.params) is None:
            return self._no_workspace(req.params)
        models = self.store.list("model", workspace_key(req.params) + "/")
        q = req.query
        if q.get("name"):
            models = [m for m in models if m["name"] == q["name"]]
        if q.get("framework"):
            models = [m for m in models if m["framework"] == q["framework"]]
        if q.get("tags"):
            models = [m for m in models if tags_match(m.get("kvTags") or {}, q["tags"])]
        if q.get("tag"):
            models = [m for m in models if q["tag"] in (m.get("kvTags") or {})]
        if q.get("properties"):
            models = [m for m in models if tags_match(m.get("properties") or {}, q["properties"])]
        models.sort(key=lambda m: (m["createdTime"], m["version"]), reverse=True)
        if q.get("latestVersionOnly", "").lower() == "true":
            seen: set[str] = set()
            models = [m for m in models if not (m["name"] in seen or seen.add(m["name"]))]  # type: ignore[func-returns-value]
        if q.get("count", "").isdigit():
            models = models[: int(q["count"])]
        return json_response(200, {"value": [_model_public(m) for m in models]})

    def delete_model(self, req: Request) -> Response:
        ws = workspace_key(req.params)
        users = [s["name"] for s in self.store.list("service", ws + "/")
                 if req.params["id"] in (s.get("environmentImageRequest") or {}).get("modelIds", [])]
        if users:
            return mms_error(409, "Conflict", f"Model {req.params['id']} is used by services: {', '.join(users)}.")
        if not self.store.delete("model", f"{ws}/{req.params['id']}"):
            return mms_error(404, "ModelNotFound", f"Model with id {req.params['id']} not found in the workspace.")
        return Response(200)


def _model_public(rec: dict[str, Any]) -> dict[str, Any]:
    return public(rec)
