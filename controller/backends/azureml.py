"""The azureml backend: the Backend protocol over Azure ML SDK v1 (``azureml-core``).

azureml-core is an optional extra, imported lazily. SDK v1 is past Microsoft's end of support
(June 2026): a warning is logged once per process.

Ownership lives where SDK v1 lets it: ARM tags on computes, kvTags on models and services,
``AMLOPS_*`` environment variables on environments (v1 environments carry no tags). Each record
also keeps its last-applied spec as JSON (``amlops.dev/spec``), so ``read`` reports specs in the
manifest's field names with live values (replicas, resources, VM size…) laid over them.

``read`` makes one list call per kind. Long operations are awaited with timeouts; throttling and
5xx become ``TransientError``; quota, validation and ``Unschedulable`` become ``PermanentError``.
Tokens and keys never reach a log.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from controller.backends.base import ApplyContext
from controller.backends.keys import KeyName
from controller.structs.errors import PermanentError, TransientError
from controller.structs.manifests import (
    BASE_IMAGE_ALIASES,
    AksClusterManifest,
    EnvironmentManifest,
    Kind,
    ModelManifest,
    WebserviceManifest,
    WorkspaceManifest,
    canonical_base_image,
)
from controller.structs.plans import Change
from controller.structs.states import (
    DIGEST_TAG,
    MANAGED_BY_TAG,
    MANIFEST_PATH_TAG,
    OWNERSHIP_TAGS,
    SOURCE_TAG,
    ActualResource,
    ActualState,
    Condition,
    ConditionType,
    DesiredResource,
    ResourceId,
    ownership_tags,
)
from controller.structs.tokens import AccessToken

log = logging.getLogger(__name__)

SPEC_TAG: Final = "amlops.dev/spec"
CONTENT_TAG: Final = "amlops.dev/content"
_ENV_PREFIX: Final = "AMLOPS_"
_ENV_KEYS: Final = {MANAGED_BY_TAG: "AMLOPS_MANAGED_BY", MANIFEST_PATH_TAG: "AMLOPS_MANIFEST_PATH",
                    DIGEST_TAG: "AMLOPS_DIGEST", SPEC_TAG: "AMLOPS_SPEC", SOURCE_TAG: "AMLOPS_SOURCE"}
_REPLACE_FIELDS: Final[Mapping[Kind, frozenset[str]]] = {
    Kind.WORKSPACE: frozenset({"backend", "subscriptionId", "resourceGroup", "workspaceName"}),
    # AKS computes made by SDK v1 cannot change size, count or purpose in place.
    Kind.AKS_CLUSTER: frozenset({"vmSize", "agentCount", "location", "clusterPurpose", "attach"}),
    Kind.ENVIRONMENT: frozenset(),
    Kind.MODEL: frozenset(),
    Kind.WEBSERVICE: frozenset({"cluster"}),
}
_TRANSIENT_STATUS = re.compile(r"(?:Response Code|status(?:_code)?|Code)[:=]?\s*(429|500|502|503|504)\b", re.IGNORECASE)
_RETRY_AFTER = re.compile(r"'Retry-After':\s*'([0-9.]+)'", re.IGNORECASE)
_warned = threading.Event()
_sdk_temp_lock = threading.Lock()
T = TypeVar("T")


def _warn_end_of_support() -> None:
    if not _warned.is_set():
        _warned.set()
        log.warning("azureml_sdk_v1_end_of_support package=azureml-core support_ended=2026-06 "
                    "advice='SDK v1 gets no fixes; plan a move to azure-ai-ml (v2)'")


SDK_RETRIES: Final = 0
"""Retries azureml-core may make on its own: none. Left alone it retries a 429 three times with a
32 s base back-off, ignoring Retry-After, underneath the executor's retries; the executor retries
instead, waiting at least what the server's Retry-After asks (``TransientError.retry_after``)."""
SDK_BACKOFF_S: Final = 1
"""azureml-core's back-off base for the retries its own REST clients still make (a 429 used 32 s)."""


def bound_sdk_retries() -> None:
    """Make the backend the owner of retries: azureml-core's own retry loop is turned off.

    Its defaults are module globals, read when each call is made (``AZUREML_DEFAULT_RETRIES``
    only sets them at import), so setting them here holds for every call after the first connect.
    """
    from azureml._restclient import clientbase

    clientbase.DEFAULT_RETRIES = SDK_RETRIES
    clientbase.DEFAULT_BACKOFF = SDK_BACKOFF_S
    clientbase.DEFAULT_500_BACKOFF = SDK_BACKOFF_S
    clientbase.DEFAULT_503_BACKOFF = SDK_BACKOFF_S


def _resolve(ref: Any, environ: Mapping[str, str], what: str) -> str:
    if ref is None:
        raise PermanentError(f"{what} is not set", reason="InvalidCredentials")
    if getattr(ref, "value", None) is not None:
        return str(ref.value)
    if ref.fromEnv is not None:
        value = environ.get(ref.fromEnv)
        if not value:
            raise PermanentError(f"{what}: environment variable {ref.fromEnv} is not set", reason="InvalidCredentials")
        return value
    try:
        return Path(ref.fromFile).read_text().strip()
    except OSError as exc:
        raise PermanentError(f"{what}: cannot read {ref.fromFile}: {exc.strerror}", reason="InvalidCredentials") from exc


def _classify(what: str, exc: BaseException) -> Exception:
    """An SDK failure as a transient or permanent error (no headers or bodies with secrets kept)."""
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    status = _TRANSIENT_STATUS.search(text)
    if status or isinstance(exc, ConnectionError | TimeoutError) or type(exc).__name__ in (
            "ConnectionError", "ConnectTimeout", "ReadTimeout", "ProxyError", "ChunkedEncodingError"):
        after = _RETRY_AFTER.search(text)
        code = status.group(1) if status else type(exc).__name__
        return TransientError(f"{what}: Azure answered {code}; will retry ({first[:200]})",
                              retry_after=float(after.group(1)) if after else None)
    if "AADSTS" in text or type(exc).__name__ in ("AuthenticationException", "AuthenticationError"):
        code = re.search(r"AADSTS\d+", text)
        return PermanentError(f"{what}: login failed ({code.group(0) if code else 'authentication error'})",
                              reason="AuthenticationFailed")
    if "QuotaExceeded" in text or "quota" in text.lower():
        return PermanentError(f"{what}: quota exceeded: {first[:300]}", reason="QuotaExceeded")
    return PermanentError(f"{what}: {_scrub(text)[:1200]}", reason="AzureError")


def _scrub(text: str) -> str:
    """Drop header dumps (they may echo Authorization) from SDK exception text."""
    return re.sub(r"Headers: \{.*?\}\n", "", re.sub(r"Bearer [A-Za-z0-9._~+/=-]+", "Bearer ***", text), flags=re.DOTALL)


def _canonical_digest(manifest: WorkspaceManifest) -> str:
    # Same formula as sources.validating for a resource without files.
    text = json.dumps(manifest.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(text).hexdigest()


def _epoch(value: Any) -> int:
    """Unix seconds from what the SDK gives for a token's times (a ``datetime`` it made from them, or a number)."""
    return int(value.timestamp()) if isinstance(value, datetime.datetime) else int(value)


class AzureMLBackend:
    """read / create / update / delete of AKS clusters, environments, models and AKS web services."""

    name = "azureml"

    def __init__(self, workspace: WorkspaceManifest, controller_name: str = "amlops", *,
                 lro_timeout_s: float = 1800.0, environ: Mapping[str, str] | None = None) -> None:
        spec = workspace.spec
        if spec.subscriptionId is None or spec.resourceGroup is None:
            raise PermanentError("the azureml backend needs subscriptionId and resourceGroup", reason="InvalidWorkspace")
        self.manifest = workspace
        self.controller_name = controller_name
        self.lro_timeout_s = lro_timeout_s
        self._environ = dict(os.environ if environ is None else environ)
        self._ws: Any = None
        self._lock = threading.Lock()
        _warn_end_of_support()

    @property
    def secrets(self) -> tuple[str, ...]:
        """Credential values to keep out of logs: the service principal's secret, when one is used."""
        creds = self.manifest.spec.credentials
        try:
            if creds is None:
                value = self._environ.get("AZURE_CLIENT_SECRET")
            elif creds.clientSecret is not None:
                value = _resolve(creds.clientSecret, self._environ, "credentials.clientSecret")
            else:
                value = None
        except PermanentError:
            value = None
        return (value,) if value else ()

    # -- connecting ----------------------------------------------------------------------------

    def _auth(self) -> Any:
        creds = self.manifest.spec.credentials
        kind = creds.type if creds is not None else "servicePrincipal"
        if kind == "managedIdentity":
            from azureml.core.authentication import MsiAuthentication

            return MsiAuthentication()
        if kind == "azureCli":
            from azureml.core.authentication import AzureCliAuthentication

            return AzureCliAuthentication()
        from azureml.core.authentication import ServicePrincipalAuthentication

        env = self._environ
        if creds is None:
            missing = [n for n in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET") if not env.get(n)]
            if missing:
                raise PermanentError(f"no credentials in the Workspace manifest and {', '.join(missing)} not set",
                                     reason="InvalidCredentials")
            tenant, client, secret = env["AZURE_TENANT_ID"], env["AZURE_CLIENT_ID"], env["AZURE_CLIENT_SECRET"]
        else:
            tenant = _resolve(creds.tenantId, env, "credentials.tenantId")
            client = _resolve(creds.clientId, env, "credentials.clientId")
            secret = _resolve(creds.clientSecret, env, "credentials.clientSecret")
        return ServicePrincipalAuthentication(tenant_id=tenant, service_principal_id=client,
                                              service_principal_password=secret)

    @property
    def ws(self) -> Any:
        """The SDK Workspace, connected on first use (one ARM GET plus discovery)."""
        with self._lock:
            if self._ws is None:
                from azureml.core import Workspace

                bound_sdk_retries()
                spec = self.manifest.spec
                self._ws = self._call("connect to workspace", lambda: Workspace(
                    subscription_id=spec.subscriptionId, resource_group=spec.resourceGroup,
                    workspace_name=spec.workspaceName or self.manifest.metadata.name, auth=self._auth()))
            return self._ws

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (PermanentError, TransientError):
            raise
        except Exception as exc:
            raise _classify(what, exc) from exc

    # -- ownership -------------------------------------------------------------------------------

    def _tags(self, resource: DesiredResource, ctx: ApplyContext) -> dict[str, str]:
        return {**ownership_tags(ctx.controller_name, ctx.source, ctx.revision, resource),
                SPEC_TAG: json.dumps(resource.manifest.spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))}

    @staticmethod
    def _ownership(tags: Mapping[str, Any] | None) -> tuple[dict[str, str], dict[str, Any]]:
        tags = dict(tags or {})
        own = {k: str(v) for k, v in tags.items() if k in OWNERSHIP_TAGS or k == CONTENT_TAG}
        try:
            spec = json.loads(tags.get(SPEC_TAG) or "{}")
        except ValueError:
            spec = {}
        return own, spec if isinstance(spec, dict) else {}

    # -- read --------------------------------------------------------------------------------

    def read(self) -> ActualState:
        """One list call per kind: computes, environments, owned models, owned AKS services."""
        from azureml.core import Environment, Model
        from azureml.core.compute import AksCompute, ComputeTarget
        from azureml.core.webservice import AksWebservice, Webservice

        ws = self.ws
        found: dict[ResourceId, ActualResource] = {}
        wid = ResourceId(Kind.WORKSPACE, self.manifest.metadata.name)
        found[wid] = ActualResource(wid, self.manifest.spec.model_dump(mode="json"),
                                    {MANAGED_BY_TAG: self.controller_name, DIGEST_TAG: _canonical_digest(self.manifest)},
                                    (Condition(ConditionType.READY, True, "Succeeded"),), {"location": ws.location})
        for compute in self._call("list computes", lambda: ComputeTarget.list(ws)):
            if isinstance(compute, AksCompute):
                res = self._observe_cluster(compute)
                found[res.id] = res
        envs: Mapping[str, Any] = self._call("list environments", lambda: Environment.list(ws))
        for env_name, env in envs.items():
            res = self._observe_environment(env_name, env)
            found[res.id] = res
        models = self._call("list models", lambda: Model.list(ws, tags=[[MANAGED_BY_TAG, self.controller_name]], latest=True))
        for model in models:
            res = self._observe_model(model)
            found[res.id] = res
        services = self._call("list services", lambda: Webservice.list(
            ws, compute_type="AKS", tags=[[MANAGED_BY_TAG, self.controller_name]]))
        for svc in services:
            if isinstance(svc, AksWebservice):
                res = self._observe_service(svc)
                found[res.id] = res
        return ActualState(found)

    def _observe_cluster(self, c: Any) -> ActualResource:
        own, spec = self._ownership(c.tags)
        spec.update(vmSize=c.agent_vm_size or spec.get("vmSize"), agentCount=c.agent_count or spec.get("agentCount"),
                    clusterPurpose=c.cluster_purpose or spec.get("clusterPurpose"))
        if c.is_attached:
            spec["attach"] = {"resourceId": c.cluster_resource_id}
        state = c.provisioning_state
        ready = state == "Succeeded"
        conds = [Condition(ConditionType.READY, ready, state or "Unknown",
                           "" if ready else json.dumps(c.provisioning_errors)[:500])]
        return ActualResource(ResourceId(Kind.AKS_CLUSTER, c.name), spec, own, tuple(conds),
                              {"provisioningState": state, "location": c.cluster_location or c.location,
                               "clusterFqdn": c.cluster_fqdn})

    def _observe_environment(self, name: str, env: Any) -> ActualResource:
        variables = dict(env.environment_variables or {})
        tags = {tag: variables.get(var) for tag, var in _ENV_KEYS.items() if variables.get(var)}
        own, spec = self._ownership(tags)
        if not spec:
            spec = {"baseImage": env.docker.base_image if env.docker else None}
            deps = env.python.conda_dependencies if env.python else None
            if deps is not None:
                spec["conda"] = deps._conda_dependencies
        spec["environmentVariables"] = {k: v for k, v in variables.items() if not k.startswith(_ENV_PREFIX)
                                        and k not in ("AZUREML_ENTRY_SCRIPT", "AZUREML_SOURCE_DIRECTORY")}
        if env.docker is not None and env.docker.base_image and spec.get("baseImage") \
                and canonical_base_image(spec["baseImage"]) != canonical_base_image(env.docker.base_image):
            spec["baseImage"] = env.docker.base_image
        return ActualResource(ResourceId(Kind.ENVIRONMENT, name), spec, own,
                              (Condition(ConditionType.READY, True, "Registered"),), {"version": env.version})

    def _observe_model(self, m: Any) -> ActualResource:
        own, spec = self._ownership(m.tags)
        user_tags = {k: v for k, v in (m.tags or {}).items() if not k.startswith("amlops.dev/")}
        spec.update(framework=m.model_framework if m.model_framework != "Custom" else spec.get("framework"),
                    frameworkVersion=m.model_framework_version, description=m.description, tags=user_tags)
        return ActualResource(ResourceId(Kind.MODEL, m.name), spec, own,
                              (Condition(ConditionType.READY, True, "Registered"),),
                              {"version": m.version, "id": m.id, "contentDigest": (m.tags or {}).get(CONTENT_TAG)})

    def _observe_service(self, s: Any) -> ActualResource:
        own, spec = self._ownership(s.tags)
        last = json.loads((s.properties or {}).get(SPEC_TAG) or "null") if s.properties else None
        if isinstance(last, dict):
            spec = last
        crr = s.container_resource_requirements
        if crr is not None:
            resources = dict(spec.get("resources") or {})
            resources.update(cpu=crr.cpu, memoryGb=crr.memory_in_gb, gpu=crr.gpu or 0)
            if crr.cpu_limit is not None:
                resources["cpuLimit"] = crr.cpu_limit
            if crr.memory_in_gb_limit is not None:
                resources["memoryGbLimit"] = crr.memory_in_gb_limit
            spec["resources"] = resources
        auto = s.autoscaler
        if auto is not None and auto.autoscale_enabled:
            spec["autoscale"] = {"minReplicas": auto.min_replicas, "maxReplicas": auto.max_replicas,
                                 "targetUtilization": auto.target_utilization, "refreshSeconds": auto.refresh_period_seconds}
        elif s.num_replicas is not None:
            spec["replicas"] = s.num_replicas
        spec.update(cluster=s.compute_name or spec.get("cluster"), scoringTimeoutMs=s.scoring_timeout_ms,
                    maxConcurrentRequestsPerReplica=s.max_concurrent_requests_per_container,
                    maxQueueWaitMs=s.max_request_wait_time,
                    auth="key" if s.auth_enabled else ("token" if s.token_auth_enabled else "none"))
        if s.description is not None or "description" in spec:
            spec["description"] = s.description
        state = s.state or "Unknown"
        conds = [Condition(ConditionType.READY, state == "Healthy", state,
                           json.dumps(s.error)[:800] if s.error else "")]
        if state in ("Unschedulable", "Failed"):
            # Azure keeps a failed service's record, tags and all. Reported with its digest it would
            # plan as in sync (and be recorded Ready); without it, it plans as an update, which the
            # core holds back while the same input is stalled, and retries once the input changes.
            own.pop(DIGEST_TAG, None)
            conds.append(Condition(ConditionType.STALLED, True, state, json.dumps(s.error)[:800] if s.error else state))
        elif state == "Transitioning":
            conds.append(Condition(ConditionType.PROGRESSING, True, "Transitioning"))
        subs = (s.properties or {}).get("amlops.dev/substitutions")
        if subs:
            conds.append(Condition(ConditionType.SUBSTITUTED, True, "Substituted", subs))
        return ActualResource(ResourceId(Kind.WEBSERVICE, s.name), spec, own, tuple(conds),
                              {"scoringUri": s.scoring_uri, "state": state,
                               "modelIds": [m.id for m in (s.models or [])], "computeName": s.compute_name})

    # -- create / update / delete --------------------------------------------------------------

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Create ``resource`` in the workspace and wait for its long operation."""
        m = resource.manifest
        if isinstance(m, WorkspaceManifest):
            self._call("get workspace", lambda: self.ws)
        elif isinstance(m, AksClusterManifest):
            self._put_cluster(resource, m, ctx)
        elif isinstance(m, EnvironmentManifest):
            self._register_environment(resource, m, ctx)
        elif isinstance(m, ModelManifest):
            self._register_model(resource, m, ctx)
        elif isinstance(m, WebserviceManifest):
            self._deploy_service(resource, m, ctx)

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> None:
        """Bring an existing resource to its spec; services in place via ``service.update()`` where it can."""
        m = resource.manifest
        if isinstance(m, WebserviceManifest):
            self._update_service(resource, m, change, ctx)
        else:
            self.create(resource, ctx)

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Delete ``id``; already gone is fine. v1 environments cannot be deleted: they are left."""
        from azureml.core import Model
        from azureml.core.compute import ComputeTarget
        from azureml.core.webservice import Webservice
        from azureml.exceptions import ComputeTargetException, WebserviceException

        ws = self.ws
        if id.kind is Kind.WEBSERVICE:
            try:
                svc = self._call(f"get service {id.name}", lambda: Webservice(ws, id.name))
            except PermanentError as exc:
                if isinstance(exc.__cause__, WebserviceException) and "not found" in str(exc).lower():
                    return
                raise
            with _quiet():
                self._call(f"delete service {id.name}", svc.delete)
        elif id.kind is Kind.AKS_CLUSTER:
            try:
                compute = self._call(f"get compute {id.name}", lambda: ComputeTarget(ws, id.name))
            except PermanentError as exc:
                if isinstance(exc.__cause__, ComputeTargetException):
                    return
                raise
            ctx.progress(f"deleting cluster {id.name}", None)
            with _quiet():
                self._call(f"delete compute {id.name}", compute.delete)
                self._call(f"wait for compute {id.name} deletion", lambda: compute.wait_for_completion(is_delete_operation=True))
        elif id.kind is Kind.MODEL:
            # Only the versions this controller registered: a version registered by hand stays.
            owned = self._call(f"list model {id.name}",
                               lambda: Model.list(ws, name=id.name, tags=[[MANAGED_BY_TAG, self.controller_name]]))
            # ... and of those, only the versions this source registered (another source's stay).
            owned = [m for m in owned if not ctx.source or (m.tags or {}).get(SOURCE_TAG, "") == ctx.source]
            for model in owned:
                self._call(f"delete model {model.id}", model.delete)
        elif id.kind is Kind.ENVIRONMENT:
            log.info("environment_delete_skipped name=%s reason='SDK v1 environments cannot be deleted'", id.name)
        log.info("resource_deleted kind=%s name=%s", id.kind.value, id.name)

    def replace_fields(self, kind: Kind) -> frozenset[str]:
        """Fields that cannot change in place. Also: ``service.update()`` drops falsy values, so an update
        that must set a field to 0/False (``resources.gpu: 0``, ``auth: none``) is done as delete + create."""
        return _REPLACE_FIELDS.get(kind, frozenset())

    def close(self) -> None:
        """Forget the SDK workspace (its sessions are closed by the SDK at exit)."""
        self._ws = None

    # -- keys and logs (ServiceAccess) -----------------------------------------------------------

    def _webservice(self, service: str) -> Any:
        from azureml.core.webservice import Webservice
        from azureml.exceptions import WebserviceException

        ws = self.ws
        try:
            return self._call(f"get service {service}", lambda: Webservice(ws, service))
        except PermanentError as exc:
            if isinstance(exc.__cause__, WebserviceException) and "not found" in str(exc).lower():
                raise PermanentError(f"service {service!r} not found in workspace {self.manifest.metadata.name!r}",
                                     reason="NotFound") from exc
            raise

    def get_keys(self, service: str) -> tuple[str, str]:
        """``(primary, secondary)`` keys of a service with ``auth: key`` (``Webservice.get_keys()``)."""
        svc = self._webservice(service)
        primary, secondary = self._call(f"get keys of service {service}", svc.get_keys)
        return str(primary), str(secondary)

    def get_token(self, service: str) -> AccessToken:
        """A fresh access token of a service with ``auth: token`` (``Webservice.get_access_token()``)."""
        svc = self._webservice(service)
        token = self._call(f"get an access token of service {service}", svc.get_access_token)
        return AccessToken(str(token.access_token), _epoch(token.refresh_after), _epoch(token.expiry_on),
                           str(token.token_type or "Bearer"))

    def regenerate_key(self, service: str, which: KeyName) -> None:
        """Replace one key (``Webservice.regen_key``); waits for Azure's operation (a few seconds)."""
        svc = self._webservice(service)
        with _quiet():
            self._call(f"regenerate the {which} key of service {service}", lambda: svc.regen_key(which.capitalize()))
        log.info("service_key_regenerated service=%s key=%s", service, which)

    def tail_log(self, service: str, replica: int = 0, lines: int = 100) -> str:
        """The last ``lines`` lines of the service's container log (``Webservice.get_logs``).

        SDK v1 cannot name a replica: Azure answers with the log of the replica it picks, so only
        ``replica=0`` (whichever one that is) is accepted.
        """
        if replica != 0:
            raise PermanentError(f"the azureml backend cannot choose a replica (asked for {replica}): "
                                 "Azure ML returns one replica's log; leave out --replica", reason="InvalidArgument")
        svc = self._webservice(service)
        content = self._call(f"get logs of service {service}", lambda: svc.get_logs(num_lines=lines))
        return str(content or "")

    # -- clusters ----------------------------------------------------------------------------

    def _put_cluster(self, resource: DesiredResource, m: AksClusterManifest, ctx: ApplyContext) -> None:
        from azureml.core.compute import AksCompute, ComputeTarget

        ws, spec = self.ws, m.spec
        if spec.attach is not None:
            rg = spec.attach.resourceId.split("/")[4]
            config = AksCompute.attach_configuration(resource_group=rg, cluster_name=spec.attach.resourceId.rsplit("/", 1)[-1],
                                                     cluster_purpose=spec.clusterPurpose)
            payload = AksCompute._build_attach_payload(config, spec.attach.resourceId)
        else:
            config = AksCompute.provisioning_configuration(vm_size=spec.vmSize, agent_count=spec.agentCount,
                                                           cluster_purpose=spec.clusterPurpose, location=spec.location)
            payload = AksCompute._build_create_payload(config, spec.location or ws.location, ws.subscription_id)
        # SDK v1 has no tags argument; the ARM payload does, so ownership goes there.
        payload["tags"] = self._tags(resource, ctx)
        ctx.progress(f"provisioning cluster {m.name}", None)
        compute = self._call(f"create compute {m.name}",
                             lambda: ComputeTarget._create_compute_target(ws, m.name, payload, AksCompute))
        with _quiet():
            self._call(f"wait for compute {m.name}", lambda: compute.wait_for_completion(show_output=False))
        ctx.progress(f"cluster {m.name} ready", 1.0)

    # -- environments ----------------------------------------------------------------------------

    def _environment(self, resource: DesiredResource, m: EnvironmentManifest, ctx: ApplyContext) -> Any:
        import yaml
        from azureml.core import Environment
        from azureml.core.conda_dependencies import CondaDependencies

        spec = m.spec
        env = Environment(name=m.name)
        conda: dict[str, Any] | None = spec.conda
        if spec.condaFile is not None:
            conda = yaml.safe_load((Path(ctx.root) / resource.files["condaFile"]).read_text()) or {}
        pip = list(spec.pip or [])
        if spec.pipRequirements is not None:
            pip += [line.strip() for line in (Path(ctx.root) / resource.files["pipRequirements"]).read_text().splitlines()
                    if line.strip() and not line.strip().startswith("#")]
        if conda is not None or pip:
            deps = CondaDependencies(_underlying_structure=conda) if conda else CondaDependencies.create()
            for req in pip:
                deps.add_pip_package(req)
            env.python.conda_dependencies = deps
        env.docker.base_image = BASE_IMAGE_ALIASES.get(spec.baseImage, spec.baseImage)
        tags = self._tags(resource, ctx)
        env.environment_variables = {**spec.environmentVariables,
                                     **{var: tags[tag] for tag, var in _ENV_KEYS.items() if tag in tags}}
        return env

    def _register_environment(self, resource: DesiredResource, m: EnvironmentManifest, ctx: ApplyContext) -> Any:
        env = self._environment(resource, m, ctx)
        registered = self._call(f"register environment {m.name}", lambda: env.register(self.ws))
        log.info("environment_registered name=%s version=%s", m.name, registered.version)
        return registered

    # -- models ---------------------------------------------------------------------------------

    def _register_model(self, resource: DesiredResource, m: ModelManifest, ctx: ApplyContext) -> Any:
        from azureml.core import Model

        ws = self.ws
        content = resource.content_digests.get("path") or resource.digest
        existing = self._call(f"find model {m.name}", lambda: Model.list(ws, name=m.name, tags=[[CONTENT_TAG, content]]))
        # A version is reused only from this source's inventory (v1 models cannot be re-tagged in place).
        existing = [e for e in existing if not ctx.source or (e.tags or {}).get(SOURCE_TAG, "") == ctx.source]
        if existing:
            log.info("model_unchanged name=%s version=%s", m.name, existing[0].version)
            return existing[0]
        source = (Path(ctx.root) / resource.files.get("path", m.spec.path)).resolve()
        # Azure keeps the registered folder's name under AZUREML_MODEL_DIR; amlops (like the local
        # backend) puts a folder's contents there. A folder holding one folder registers that one,
        # so ``tf-dnn-mnist/model/...`` is ``$AZUREML_MODEL_DIR/model/...`` on both backends.
        children = [c for c in source.iterdir() if not c.name.startswith(".")] if source.is_dir() else []
        if len(children) == 1 and children[0].is_dir():
            source = children[0]
        tags = {**m.spec.tags, **self._tags(resource, ctx), CONTENT_TAG: content}
        ctx.progress(f"uploading model {m.name}", None)
        with _quiet():
            model = self._call(f"register model {m.name}", lambda: _register(
                ws, source, m.name, tags=tags, description=m.spec.description,
                model_framework=m.spec.framework, model_framework_version=m.spec.frameworkVersion))
        log.info("model_registered name=%s version=%s", m.name, model.version)
        return model

    # -- services --------------------------------------------------------------------------------

    def _deploy_config(self, resource: DesiredResource, m: WebserviceManifest, ctx: ApplyContext) -> Any:
        from azureml.core.webservice import AksWebservice

        spec = m.spec
        auto = spec.autoscale
        kwargs: dict[str, Any] = {
            "autoscale_enabled": auto is not None,
            "cpu_cores": spec.resources.cpu, "memory_gb": spec.resources.memoryGb, "gpu_cores": spec.resources.gpu,
            "cpu_cores_limit": spec.resources.cpuLimit, "memory_gb_limit": spec.resources.memoryGbLimit,
            "auth_enabled": spec.auth == "key", "token_auth_enabled": spec.auth == "token",
            "scoring_timeout_ms": spec.scoringTimeoutMs,
            "replica_max_concurrent_requests": spec.maxConcurrentRequestsPerReplica,
            "max_request_wait_time": spec.maxQueueWaitMs,
            "period_seconds": spec.livenessProbe.periodSeconds,
            "initial_delay_seconds": spec.livenessProbe.initialDelaySeconds,
            "timeout_seconds": spec.livenessProbe.timeoutSeconds,
            "success_threshold": spec.livenessProbe.successThreshold,
            "failure_threshold": spec.livenessProbe.failureThreshold,
            "tags": {k: v for k, v in {**spec.tags, **self._tags(resource, ctx)}.items() if k != SPEC_TAG},
            "properties": {SPEC_TAG: self._tags(resource, ctx)[SPEC_TAG]},
            "description": spec.description,
        }
        if auto is not None:
            kwargs.update(autoscale_min_replicas=auto.minReplicas, autoscale_max_replicas=auto.maxReplicas,
                          autoscale_target_utilization=auto.targetUtilization,
                          autoscale_refresh_seconds=auto.refreshSeconds)
        else:
            kwargs["num_replicas"] = spec.replicas or 1
        return AksWebservice.deploy_configuration(**kwargs)

    def _inference(self, resource: DesiredResource, m: WebserviceManifest, ctx: ApplyContext) -> tuple[Any, list[Any]]:
        from azureml.core import Environment, Model
        from azureml.core.model import InferenceConfig

        ws, spec = self.ws, m.spec
        if spec.entryScript is None:
            raise PermanentError("no-code deployments (no entryScript) are not supported by the azureml backend",
                                 reason="InvalidSpec")
        env = None
        if spec.environment is not None:
            env = self._call(f"get environment {spec.environment}", lambda: Environment.get(ws, spec.environment))
        models = [self._call(f"get model {ref}", lambda ref=ref: Model(ws, ref.name, version=ref.version))  # type: ignore[misc]
                  for ref in spec.models]
        root = Path(ctx.root)
        if spec.sourceDirectory is not None:
            source = str(root / resource.files["sourceDirectory"])
            entry = spec.entryScript
        else:
            script = root / resource.files["entryScript"]
            source, entry = str(script.parent), script.name
        config = InferenceConfig(entry_script=entry, source_directory=source, environment=env)
        return config, models

    def _deploy_service(self, resource: DesiredResource, m: WebserviceManifest, ctx: ApplyContext) -> None:
        from azureml.core import Model
        from azureml.core.compute import ComputeTarget

        ws = self.ws
        config, models = self._inference(resource, m, ctx)
        target = self._call(f"get compute {m.spec.cluster}", lambda: ComputeTarget(ws, m.spec.cluster))
        deploy_config = self._deploy_config(resource, m, ctx)
        ctx.progress(f"deploying service {m.name}", None)
        with _quiet(), _sdk_tempfiles_removed():
            service = self._call(f"deploy service {m.name}", lambda: Model.deploy(
                ws, m.name, models, config, deploy_config, target))
        self._wait(service, m.name)  # minutes: outside the lock, so other deploys go on meanwhile

    def _wait(self, service: Any, name: str) -> None:
        try:
            service.wait_for_deployment(show_output=False, timeout_sec=self.lro_timeout_s)
        except Exception as exc:
            state = getattr(service, "state", None)
            if state == "Unschedulable":
                raise PermanentError(f"service {name} is Unschedulable: {_error_message(service, exc)}",
                                     reason="Unschedulable") from exc
            if state in ("Failed", "Unhealthy"):
                raise PermanentError(f"service {name} deployment {state}: {_error_message(service, exc)}",
                                     reason="DeploymentFailed") from exc
            raise _classify(f"wait for service {name}", exc) from exc

    _IN_PLACE: Final = {
        "spec.replicas": "num_replicas", "spec.resources.cpu": "cpu_cores", "spec.resources.memoryGb": "memory_gb",
        "spec.resources.gpu": "gpu_cores", "spec.resources.cpuLimit": "cpu_cores_limit",
        "spec.resources.memoryGbLimit": "memory_gb_limit", "spec.scoringTimeoutMs": "scoring_timeout_ms",
        "spec.maxConcurrentRequestsPerReplica": "replica_max_concurrent_requests",
        "spec.maxQueueWaitMs": "max_request_wait_time", "spec.description": "description",
        "spec.autoscale.minReplicas": "autoscale_min_replicas", "spec.autoscale.maxReplicas": "autoscale_max_replicas",
        "spec.autoscale.targetUtilization": "autoscale_target_utilization",
        "spec.autoscale.refreshSeconds": "autoscale_refresh_seconds",
        "spec.livenessProbe.periodSeconds": "period_seconds",
        "spec.livenessProbe.initialDelaySeconds": "initial_delay_seconds",
        "spec.livenessProbe.timeoutSeconds": "timeout_seconds",
        "spec.livenessProbe.successThreshold": "success_threshold",
        "spec.livenessProbe.failureThreshold": "failure_threshold",
    }

    def _update_service(self, resource: DesiredResource, m: WebserviceManifest, change: Change, ctx: ApplyContext) -> None:
        from azureml.core.webservice import Webservice

        ws, spec = self.ws, m.spec
        kwargs: dict[str, Any] = {}
        redeploy = False
        for diff in change.diffs:
            path = diff.path
            if path in self._IN_PLACE:
                kwargs[self._IN_PLACE[path]] = diff.after
            elif path == "spec.replicas" or path.startswith("spec.autoscale"):
                redeploy = True  # switching between fixed replicas and autoscale
            elif path == "spec.auth":
                kwargs["auth_enabled"], kwargs["token_auth_enabled"] = spec.auth == "key", spec.auth == "token"
            elif path.startswith("spec.tags"):
                pass  # tags are always sent below
            elif path.split(".")[1] in ("models", "environment", "entryScript", "sourceDirectory"):
                kwargs["content"] = True
            else:
                redeploy = True
        if not change.diffs and change.reason and "adopt" not in change.reason:
            kwargs["content"] = True  # a file the manifest points at changed
        falsy = sorted(k for k, v in kwargs.items() if k != "content" and v in (0, False, None, ""))
        if redeploy or falsy:
            why = (f"service.update() silently drops falsy values ({', '.join(falsy)})" if falsy
                   else "fields that service.update() cannot change")
            log.warning("service_replaced name=%s reason=%r", m.name, why)
            ctx.progress(f"replacing service {m.name}: {why}", None)
            self.delete(resource.id, ctx)
            self._deploy_service(resource, m, ctx)
            return
        svc = self._call(f"get service {m.name}", lambda: Webservice(ws, m.name))
        if kwargs.pop("content", False):
            config, models = self._inference(resource, m, ctx)
            kwargs.update(inference_config=config, models=models)
        tags = self._tags(resource, ctx)
        kwargs["tags"] = {k: v for k, v in {**spec.tags, **tags}.items() if k != SPEC_TAG}
        kwargs["properties"] = {SPEC_TAG: tags[SPEC_TAG]}
        ctx.progress(f"updating service {m.name}", None)
        with _quiet(), _sdk_tempfiles_removed():
            self._call(f"update service {m.name}", lambda: svc.update(**kwargs))
        if svc._operation_endpoint:
            self._wait(svc, m.name)


def _error_message(service: Any, exc: BaseException) -> str:
    err = getattr(service, "error", None)
    if isinstance(err, dict):
        details = err.get("details") or []
        return str(err.get("message") or "") + "".join(f" [{d.get('code')}: {d.get('message')}]" for d in details
                                                         if isinstance(d, dict))
    return _scrub(str(exc)).strip().splitlines()[-1][:500] if str(exc).strip() else type(exc).__name__


class _QuietStdout:
    """``sys.stdout`` while any thread is in ``_quiet``: drops the writes of those threads only.

    ``contextlib.redirect_stdout`` swaps a process-wide object: two executor threads in it at once
    restore each other's replacement, and the controller's stdout stays swallowed for good.
    """

    def __init__(self, target: Any) -> None:
        self.target = target

    def write(self, text: str) -> int:
        if getattr(_quiet_threads, "depth", 0):
            return len(text)
        return int(self.target.write(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


_quiet_threads = threading.local()
_quiet_lock = threading.Lock()
_quiet_users = 0


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The SDK prints progress to stdout; keep it out of the controller's output (this thread's only)."""
    import sys

    global _quiet_users
    with _quiet_lock:
        if _quiet_users == 0 and not isinstance(sys.stdout, _QuietStdout):
            sys.stdout = _QuietStdout(sys.stdout)
        _quiet_users += 1
    _quiet_threads.depth = getattr(_quiet_threads, "depth", 0) + 1
    try:
        yield
    finally:
        _quiet_threads.depth -= 1
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0 and isinstance(sys.stdout, _QuietStdout):
                sys.stdout = sys.stdout.target


def _register(ws: Any, source: Path, name: str, **kwargs: Any) -> Any:
    """``Model.register`` of the absolute path ``source``, without its check against the working directory.

    ``Model.register`` refuses a path outside ``os.getcwd()`` but otherwise reads absolute paths;
    changing the process-wide working directory would break relative paths in every other thread,
    so its two steps (upload the files as an asset, register the asset) are called directly.
    """
    from azureml._model_management._util import model_name_validation
    from azureml.core import Model

    model_name_validation(name)
    asset = Model._create_asset(ws.service_context, str(source), name)
    return Model._register_with_asset(ws, name, asset.id, unpack=False, **kwargs)


_SDK_REQUIREMENTS: Final = "azureml-model-management-sdk=="
_SDK_TARBALL = re.compile(r"[0-9a-f]{8}\.tar\.gz")


@contextlib.contextmanager
def _sdk_tempfiles_removed() -> Iterator[None]:
    """Remove what ``Model.deploy`` / ``Webservice.update`` leave in $TMPDIR, and nothing else.

    The SDK writes a wrapped entry script (``tmp*.py``), a requirements file and a tarball of the
    source folder (``tmp*/xxxxxxxx.tar.gz``) and never deletes them. ``tempfile.tempdir`` is
    process-wide, so the call is not pointed at a private folder: the entries new after the call
    that have those shapes are removed instead. Calls are serialised so that one never removes
    another's files before it uploaded them; waiting for the deployment happens after this.
    """
    with _sdk_temp_lock:
        root = Path(tempfile.gettempdir())
        before = set(os.listdir(root))
        try:
            yield
        finally:
            for entry in set(os.listdir(root)) - before:
                path = root / entry
                if not _made_by_sdk(path):
                    continue
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()


def _made_by_sdk(path: Path) -> bool:
    try:
        if path.is_dir():
            inside = os.listdir(path)
            return path.name.startswith("tmp") and len(inside) == 1 and bool(_SDK_TARBALL.fullmatch(inside[0]))
        if path.name.startswith("requirements") and path.suffix == ".txt":
            return path.read_text(errors="replace").startswith(_SDK_REQUIREMENTS)
        if path.name.startswith("tmp") and path.suffix == ".py":
            return "driver_module_spec" in path.read_text(errors="replace")  # the SDK's main_template.txt
    except OSError:
        return False
    return False


