"""A Webservice manifest as a v2 KubernetesOnlineEndpoint + KubernetesOnlineDeployment, every value explicit.

The manifest's defaults are v1's (``AksWebservice.deploy_configuration``); v2's differ. Every value
is sent explicitly so a service moved from v1 to v2 keeps its behaviour (``controller.structs.migrations``
lists what v2 would otherwise apply, for the plan to show).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from controller.structs.manifests import Autoscale, Probe, WebserviceSpec

SCALING_FIELDS: Final = frozenset({"spec.replicas", "spec.autoscale", "spec.description", "spec.tags"})
"""Spec paths (and their children) a deployment changes in place; anything else needs new containers."""


def deployment_name(digest: str) -> str:
    """The deployment of one generation: named by what it runs, so a retry reuses the name."""
    hexa = digest.partition(":")[2] or digest
    return "d" + hashlib.sha256(hexa.encode()).hexdigest()[:10]


def _memory(gb: float) -> str:
    return f"{max(1, round(gb * 1024))}Mi"


def _probe(p: Probe) -> Any:
    from azure.ai.ml.entities import ProbeSettings

    return ProbeSettings(failure_threshold=p.failureThreshold, success_threshold=p.successThreshold,
                         timeout=p.timeoutSeconds, period=p.periodSeconds, initial_delay=p.initialDelaySeconds)


def scale_settings(spec: WebserviceSpec) -> tuple[int, Any]:
    """``(instance_count, scale_settings)``: fixed replicas, or v1's autoscaler settings carried over."""
    from azure.ai.ml.entities import DefaultScaleSettings, TargetUtilizationScaleSettings

    if spec.replicas is not None:
        return spec.replicas, DefaultScaleSettings()
    auto = spec.autoscale or Autoscale()
    return auto.minReplicas, TargetUtilizationScaleSettings(
        min_instances=auto.minReplicas, max_instances=auto.maxReplicas, polling_interval=auto.refreshSeconds,
        target_utilization_percentage=auto.targetUtilization)


def build_deployment(name: str, endpoint: str, spec: WebserviceSpec, *, model: str | None, environment: str | None,
                     code_id: str | None, scoring_script: str | None, environment_variables: dict[str, str],
                     tags: dict[str, str]) -> Any:
    """The KubernetesOnlineDeployment of one generation of a service."""
    from azure.ai.ml.entities import (
        CodeConfiguration,
        KubernetesOnlineDeployment,
        OnlineRequestSettings,
        ResourceRequirementsSettings,
        ResourceSettings,
    )

    res = spec.resources
    requests = ResourceSettings(cpu=str(res.cpu), memory=_memory(res.memoryGb), gpu=str(res.gpu) if res.gpu else None)
    limits = ResourceSettings(cpu=str(res.cpuLimit) if res.cpuLimit is not None else None,
                              memory=_memory(res.memoryGbLimit) if res.memoryGbLimit is not None else None,
                              gpu=str(res.gpu) if res.gpu else None)  # extended resources: request = limit
    count, scaling = scale_settings(spec)
    code = CodeConfiguration(code=code_id, scoring_script=scoring_script) if code_id is not None else None
    return KubernetesOnlineDeployment(
        name=name, endpoint_name=endpoint, model=model, environment=environment, code_configuration=code,
        environment_variables=environment_variables or None, instance_count=count, scale_settings=scaling,
        instance_type=spec.instanceType, tags=tags, description=spec.description,
        request_settings=OnlineRequestSettings(request_timeout_ms=spec.scoringTimeoutMs,
                                               max_concurrent_requests_per_instance=spec.maxConcurrentRequestsPerReplica,
                                               max_queue_wait_ms=spec.maxQueueWaitMs),
        liveness_probe=_probe(spec.livenessProbe), readiness_probe=_probe(spec.readinessProbe or spec.livenessProbe),
        resources=ResourceRequirementsSettings(requests=requests, limits=limits),
        app_insights_enabled=False)


def auth_mode(spec: WebserviceSpec) -> str:
    """The endpoint's auth mode (``none`` is refused by validation: v2 has no unauthenticated endpoints)."""
    return "aml_token" if spec.auth == "token" else "key"
