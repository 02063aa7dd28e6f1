"""AKS web services through azureml-core (``Model.deploy``, ``Webservice.update``), and their keys and logs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from controller.backends.azureml.classifying import classify
from controller.backends.azureml.tags import SPEC_TAG, ownership_tags, split_ownership
from controller.backends.azureml.v1.sdk import error_message, quiet, sdk_tempfiles_removed
from controller.backends.azureml.v1.sessions import V1Session
from controller.backends.base import ApplyContext
from controller.structs.errors import PermanentError
from controller.structs.logformats import event_logger
from controller.structs.manifests import Kind, WebserviceManifest
from controller.structs.plans import Change
from controller.structs.states import (
    DIGEST_TAG,
    MANAGED_BY_TAG,
    ActualResource,
    Condition,
    ConditionType,
    DesiredResource,
    ResourceId,
)

log = event_logger(__name__)


class ServiceHandler:
    """Webservice on v1: one AKS web service."""

    kind = Kind.WEBSERVICE
    replace_fields = frozenset({"cluster"})

    def __init__(self, session: V1Session) -> None:
        self.session = session

    def read(self) -> Iterable[ActualResource]:
        """One list call: the AKS services this controller owns."""
        from azureml.core.webservice import AksWebservice, Webservice

        s = self.session
        ws = s.ws
        services = s.call("list services", lambda: Webservice.list(
            ws, compute_type="AKS", tags=[[MANAGED_BY_TAG, s.controller_name]]))
        return [self._observe_service(svc) for svc in services if isinstance(svc, AksWebservice)]

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Deploy the service and wait until Azure reports it Healthy."""
        m = resource.manifest
        assert isinstance(m, WebserviceManifest)
        self._deploy_service(resource, m, ctx)

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> None:
        """In place via ``service.update()`` where it can; otherwise delete + deploy."""
        m = resource.manifest
        assert isinstance(m, WebserviceManifest)
        self._update_service(resource, m, change, ctx)

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Delete the web service; already gone is fine."""
        from azureml.core.webservice import Webservice
        from azureml.exceptions import WebserviceException

        s = self.session
        ws = s.ws
        try:
            svc = s.call(f"get service {id.name}", lambda: Webservice(ws, id.name))
        except PermanentError as exc:
            if isinstance(exc.__cause__, WebserviceException) and "not found" in str(exc).lower():
                return
            raise
        with quiet():
            s.call(f"delete service {id.name}", svc.delete)

    def _observe_service(self, s: Any) -> ActualResource:
        own, spec = split_ownership(s.tags)
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
            "tags": {k: v for k, v in {**spec.tags, **ownership_tags(resource, ctx)}.items() if k != SPEC_TAG},
            "properties": {SPEC_TAG: ownership_tags(resource, ctx)[SPEC_TAG]},
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

        ws, spec = self.session.ws, m.spec
        if spec.entryScript is None:
            raise PermanentError("no-code deployments (no entryScript) are not supported by the azureml backend",
                                 reason="InvalidSpec")
        env = None
        if spec.environment is not None:
            env = self.session.call(f"get environment {spec.environment}", lambda: Environment.get(ws, spec.environment))
        models = [self.session.call(f"get model {ref}", lambda ref=ref: Model(ws, ref.name, version=ref.version))  # type: ignore[misc]
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

        ws = self.session.ws
        config, models = self._inference(resource, m, ctx)
        target = self.session.call(f"get compute {m.spec.cluster}", lambda: ComputeTarget(ws, m.spec.cluster))
        deploy_config = self._deploy_config(resource, m, ctx)
        ctx.progress(f"deploying service {m.name}", None)
        with quiet(), sdk_tempfiles_removed():
            service = self.session.call(f"deploy service {m.name}", lambda: Model.deploy(
                ws, m.name, models, config, deploy_config, target))
        self._wait(service, m.name)  # minutes: outside the lock, so other deploys go on meanwhile

    def _wait(self, service: Any, name: str) -> None:
        try:
            service.wait_for_deployment(show_output=False, timeout_sec=self.session.lro_timeout_s)
        except Exception as exc:
            state = getattr(service, "state", None)
            if state == "Unschedulable":
                raise PermanentError(f"service {name} is Unschedulable: {error_message(service, exc)}",
                                     reason="Unschedulable") from exc
            if state in ("Failed", "Unhealthy"):
                raise PermanentError(f"service {name} deployment {state}: {error_message(service, exc)}",
                                     reason="DeploymentFailed") from exc
            raise classify(f"wait for service {name}", exc) from exc

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

        ws, spec = self.session.ws, m.spec
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
            log.warning("service.replaced", name=m.name, reason=why)
            ctx.progress(f"replacing service {m.name}: {why}", None)
            self.delete(resource.id, ctx)
            self._deploy_service(resource, m, ctx)
            return
        svc = self.session.call(f"get service {m.name}", lambda: Webservice(ws, m.name))
        if kwargs.pop("content", False):
            config, models = self._inference(resource, m, ctx)
            kwargs.update(inference_config=config, models=models)
        tags = ownership_tags(resource, ctx)
        kwargs["tags"] = {k: v for k, v in {**spec.tags, **tags}.items() if k != SPEC_TAG}
        kwargs["properties"] = {SPEC_TAG: tags[SPEC_TAG]}
        ctx.progress(f"updating service {m.name}", None)
        with quiet(), sdk_tempfiles_removed():
            self.session.call(f"update service {m.name}", lambda: svc.update(**kwargs))
        if svc._operation_endpoint:
            self._wait(svc, m.name)


class ServiceAccessV1:
    """Keys, tokens and logs of v1 web services (``amlops keys``, ``token``, ``logs``)."""

    def __init__(self, session: V1Session) -> None:
        self.session = session

    def webservice(self, service: str) -> Any:
        """The SDK ``Webservice``; ``PermanentError(reason="NotFound")`` when there is none."""
        from azureml.core.webservice import Webservice
        from azureml.exceptions import WebserviceException

        s = self.session
        ws = s.ws
        try:
            return s.call(f"get service {service}", lambda: Webservice(ws, service))
        except PermanentError as exc:
            if isinstance(exc.__cause__, WebserviceException) and "not found" in str(exc).lower():
                raise PermanentError(f"service {service!r} not found in workspace {s.manifest.metadata.name!r}",
                                     reason="NotFound") from exc
            raise
