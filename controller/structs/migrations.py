"""Moving a service from Azure ML v1 to v2: the values v2 would default differently.

The manifest's defaults are v1's (``AksWebservice.deploy_configuration``). The v2 backend sends every
value explicitly, so nothing changes behaviour; the planner shows which of them a service carries over
(``carried_values``), so a reviewer sees what v2 alone would have done.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from controller.structs.manifests import Autoscale, WebserviceSpec


class CarriedValue(NamedTuple):
    """One value the manifest gives where v2's default differs."""

    field: str
    v2_field: str
    value: Any
    v2_default: Any


V2_DEFAULTS: Final[tuple[tuple[str, str, Any], ...]] = (
    ("scoringTimeoutMs", "request_settings.request_timeout_ms", 5000),
    ("livenessProbe.initialDelaySeconds", "liveness_probe.initial_delay", 10),
    ("livenessProbe.failureThreshold", "liveness_probe.failure_threshold", 30),
    ("readinessProbe.initialDelaySeconds", "readiness_probe.initial_delay", 10),
    ("readinessProbe.failureThreshold", "readiness_probe.failure_threshold", 30),
    ("autoscale.maxReplicas", "scale_settings.max_instances", 1),
)


def _lookup(spec: WebserviceSpec, dotted: str) -> Any:
    value: Any = spec
    for part in dotted.split("."):
        if part == "readinessProbe" and spec.readinessProbe is None:
            value = spec.livenessProbe  # v1 probes readiness with the liveness settings
            continue
        if part == "autoscale" and spec.autoscale is None:
            if spec.replicas is not None:
                return None
            value = Autoscale()  # v1 autoscales by default
            continue
        value = getattr(value, part)
    return value


def carried_values(spec: WebserviceSpec) -> list[CarriedValue]:
    """The values this service's manifest (with v1's defaults) gives where v2's default is different."""
    carried = []
    for field, v2_field, default in V2_DEFAULTS:
        value = _lookup(spec, field)
        if value is not None and value != default:
            carried.append(CarriedValue(field, v2_field, value, default))
    return carried
