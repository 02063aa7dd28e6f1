"""The manifest kinds, as pydantic models whose field names are exactly the YAML keys.

Each kind mirrors the Azure ML SDK v1 call it replaces (``AksCompute.provisioning_configuration``,
``Environment.from_conda_specification``, ``Model.register``, ``AksWebservice.deploy_configuration``),
with the same defaults Azure applies, so users of the SDK recognise every field.
"""

from __future__ import annotations

import re
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from controller.structs.vmsizes import gpus_per_node

API_VERSION: Final = "amlops.dev/v1"

# Annotations users put on resources to steer the controller.
SUSPEND_ANNOTATION: Final = "amlops.dev/suspend"
ALLOW_MASS_DELETE_ANNOTATION: Final = "amlops.dev/allow-mass-delete"

# Azure ML's base-image names, accepted as aliases for the images they stand for.
BASE_IMAGE_ALIASES: Final[dict[str, str]] = {
    "DEFAULT_GPU_IMAGE": "mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8-cudnn8-ubuntu22.04",
    "DEFAULT_CPU_IMAGE": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04",
}

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
# The string forms of a model reference, ``name`` and ``name:version``, as the exported schema states them.
MODEL_REF_PATTERN: Final = r"^[^:]+(:[1-9][0-9]*)?$"


class Kind(StrEnum):
    """Manifest kinds, in the order their resources depend on each other."""

    WORKSPACE = "Workspace"
    AKS_CLUSTER = "AksCluster"
    ENVIRONMENT = "Environment"
    MODEL = "Model"
    WEBSERVICE = "Webservice"


# Creates and updates follow this order; deletes run it backwards.
KIND_ORDER: Final[tuple[Kind, ...]] = tuple(Kind)


def canonical_base_image(image: str) -> str:
    """The image a base-image name stands for (aliases resolved), for comparison."""
    return BASE_IMAGE_ALIASES.get(image.strip(), image.strip())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metadata(_Strict):
    """Kubernetes-style metadata: a name unique per kind, labels and annotations."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class SecretRef(_Strict):
    """Where a secret is read from at run time; the value itself never appears in a manifest."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["fromEnv"]}, {"required": ["fromFile"]}]})

    fromEnv: str | None = None
    fromFile: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.fromEnv is None) == (self.fromFile is None):
            raise ValueError("set exactly one of fromEnv or fromFile")
        return self


class ValueRef(_Strict):
    """A non-secret value given inline or by reference."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["value"]}, {"required": ["fromEnv"]}, {"required": ["fromFile"]}]})

    value: str | None = None
    fromEnv: str | None = None
    fromFile: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ValueRef:
        if sum(v is not None for v in (self.value, self.fromEnv, self.fromFile)) != 1:
            raise ValueError("set exactly one of value, fromEnv or fromFile")
        return self


class Credentials(_Strict):
    """How the azureml backend logs in: a service principal, a managed identity or the Azure CLI."""

    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"type": {"const": "servicePrincipal"}}},
        "then": {"required": ["tenantId", "clientId", "clientSecret"]},
    })

    type: Literal["servicePrincipal", "managedIdentity", "azureCli"] = "servicePrincipal"
    tenantId: ValueRef | None = None
    clientId: ValueRef | None = None
    clientSecret: SecretRef | None = None

    @model_validator(mode="after")
    def _service_principal_is_complete(self) -> Credentials:
        if self.type == "servicePrincipal":
            missing = [n for n in ("tenantId", "clientId", "clientSecret") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"servicePrincipal credentials need {', '.join(missing)}")
        return self


class WorkspaceSpec(_Strict):
    """An Azure ML workspace (``Workspace.get``) and the backend that reaches it."""

    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"backend": {"const": "azureml"}}, "required": ["backend"]},
        "then": {"required": ["subscriptionId", "resourceGroup"]},
    })

    backend: Literal["local", "azureml"] = "local"
    subscriptionId: str | None = None
    resourceGroup: str | None = None
    workspaceName: str | None = None
    location: str | None = None
    credentials: Credentials | None = None
    # The Azure ML API generation the azureml backend drives: ``v2`` (azure-ai-ml online endpoints)
    # for new work; ``v1`` (azureml-core AKS web services, out of support since June 2026) is the
    # default only so that existing workspaces never migrate by surprise when amlops is upgraded.
    api: Literal["v1", "v2"] = "v1"

    @model_validator(mode="after")
    def _azureml_needs_coordinates(self) -> WorkspaceSpec:
        if self.backend == "azureml":
            missing = [n for n in ("subscriptionId", "resourceGroup") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"the azureml backend needs {', '.join(missing)}")
        return self


class AttachSpec(_Strict):
    """Attach an existing AKS cluster instead of creating one.

    On API v1 this is ``AksCompute.attach_configuration``; on v2 it is a ``KubernetesCompute``
    attach (the only way: v2 cannot create AKS clusters), into ``namespace``.
    """

    resourceId: str = Field(pattern=r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ContainerService/managedClusters/[^/]+$")
    namespace: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class AksClusterSpec(_Strict):
    """An AKS inference cluster (``AksCompute.provisioning_configuration``)."""

    workspace: str | None = None
    vmSize: str = "Standard_D3_v2"
    agentCount: int = Field(default=3, ge=1, le=100)
    location: str | None = None
    clusterPurpose: Literal["DevTest", "FastProd"] = "FastProd"
    attach: AttachSpec | None = None
    gpusPerNode: int | None = Field(default=None, ge=0, le=16)
    deletionPolicy: Literal["Retain", "Delete"] = "Retain"

    def gpu_capacity(self) -> int:
        """GPUs in the whole cluster: nodes × GPUs per node (from the VM-size table unless overridden)."""
        per_node = self.gpusPerNode if self.gpusPerNode is not None else gpus_per_node(self.vmSize)
        return per_node * self.agentCount


class EnvironmentSpec(_Strict):
    """A runtime environment (``Environment.from_conda_specification`` / ``from_pip_requirements``)."""

    model_config = ConfigDict(json_schema_extra={"allOf": [
        {"not": {"required": ["condaFile", "conda"]}, "description": "set condaFile or conda, not both"},
        {"not": {"required": ["pipRequirements", "pip"]}, "description": "set pipRequirements or pip, not both"},
    ]})

    workspace: str | None = None
    condaFile: str | None = None
    conda: dict[str, Any] | None = None
    pipRequirements: str | None = None
    pip: list[str] | None = None
    baseImage: str = "DEFAULT_CPU_IMAGE"
    environmentVariables: dict[str, str] = Field(default_factory=dict)
    # ``v1`` makes ``import tensorflow`` in entry scripts resolve to ``tensorflow.compat.v1``.
    tensorflowCompat: Literal["v1", "none"] | None = None

    @model_validator(mode="after")
    def _one_source_each(self) -> EnvironmentSpec:
        if self.condaFile is not None and self.conda is not None:
            raise ValueError("set condaFile or conda, not both")
        if self.pipRequirements is not None and self.pip is not None:
            raise ValueError("set pipRequirements or pip, not both")
        return self


class ModelSpec(_Strict):
    """A registered model (``Model.register``); a new version only when the files' content changes."""

    workspace: str | None = None
    path: str
    framework: str | None = None
    frameworkVersion: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    description: str | None = None


def _parse_model_ref(value: Any) -> Any:
    if isinstance(value, str):
        name, sep, version = value.partition(":")
        if not sep:
            return {"name": name}
        if not version.isdigit():
            raise ValueError(f"model reference {value!r}: version after ':' must be a whole number")
        return {"name": name, "version": int(version)}
    return value


class ModelRef(_Strict):
    """A model a service loads: by name (latest version) or pinned as ``name:version``."""

    name: str = Field(min_length=1)
    version: int | None = Field(default=None, ge=1)

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"


class Autoscale(_Strict):
    """Azure's autoscaler settings (``autoscale_*`` arguments of ``deploy_configuration``)."""

    minReplicas: int = Field(default=1, ge=1, le=1000)
    maxReplicas: int = Field(default=10, ge=1, le=1000)
    targetUtilization: int = Field(default=70, ge=1, le=100)
    refreshSeconds: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Autoscale:
        if self.minReplicas > self.maxReplicas:
            raise ValueError(f"minReplicas ({self.minReplicas}) must not exceed maxReplicas ({self.maxReplicas})")
        return self


class Resources(_Strict):
    """Per-replica requests and limits (``cpu_cores``, ``memory_gb``, ``gpu_cores``, ``*_limit``)."""

    cpu: float = Field(default=0.1, gt=0)
    memoryGb: float = Field(default=0.5, gt=0)
    gpu: int = Field(default=0, ge=0, le=16)
    cpuLimit: float | None = Field(default=None, gt=0)
    memoryGbLimit: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> Resources:
        if self.cpuLimit is not None and self.cpuLimit < self.cpu:
            raise ValueError(f"cpuLimit ({self.cpuLimit}) must be ≥ cpu ({self.cpu})")
        if self.memoryGbLimit is not None and self.memoryGbLimit < self.memoryGb:
            raise ValueError(f"memoryGbLimit ({self.memoryGbLimit}) must be ≥ memoryGb ({self.memoryGb})")
        return self


class Probe(_Strict):
    """Liveness or readiness probe settings (``period_seconds``, ``initial_delay_seconds``…)."""

    periodSeconds: int = Field(default=10, ge=1)
    initialDelaySeconds: int = Field(default=310, ge=0)
    timeoutSeconds: int = Field(default=2, ge=1)
    successThreshold: int = Field(default=1, ge=1)
    failureThreshold: int = Field(default=3, ge=1)


class RolloutStep(_Strict):
    """One traffic step of a canary: the new version's weight, held for a pause and/or a number of requests."""

    weight: int = Field(ge=0, le=100)
    pauseSeconds: float | None = Field(default=None, ge=0)
    minRequests: int | None = Field(default=None, ge=0)


class Analysis(_Strict):
    """Limits the new version must keep during each step, measured over that step's window.

    ``maxP99Ratio`` compares the new version's p99 with the live version's p99 over the same window.
    """

    maxErrorRate: float | None = Field(default=None, ge=0, le=1)
    maxP99Ms: float | None = Field(default=None, gt=0)
    maxP99Ratio: float | None = Field(default=None, gt=0)
    minRequests: int = Field(default=0, ge=0)


class SampleRequest(_Strict):
    """A smoke test sent to the new version before it gets any traffic.

    ``file`` (a JSON body, relative to the manifest) or ``body`` (inline JSON text). The answer
    must equal ``expect`` (inline JSON text) or ``expectFile`` when given, and otherwise, when
    ``compareWithLive`` is set, the live version's answer to the same request.
    """

    model_config = ConfigDict(json_schema_extra={
        **{"oneOf": [{"required": ["file"]}, {"required": ["body"]}]},
        "not": {"required": ["expect", "expectFile"]},
    })

    file: str | None = None
    body: str | None = None
    expect: str | None = None
    expectFile: str | None = None
    compareWithLive: bool = False

    @model_validator(mode="after")
    def _one_body(self) -> SampleRequest:
        if (self.file is None) == (self.body is None):
            raise ValueError("set exactly one of file or body")
        if self.expect is not None and self.expectFile is not None:
            raise ValueError("set expect or expectFile, not both")
        return self


class Rollout(_Strict):
    """How a change that needs new replicas or a new deployment reaches traffic.

    ``rolling`` replaces replicas one by one (the default); ``blueGreen`` gives the new version no
    traffic until it is ready and has passed its checks, then all of it; ``canary`` walks ``steps``
    and judges each with ``analysis``, rolling back at the first failed check.
    """

    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"strategy": {"const": "canary"}}, "required": ["strategy"]},
        "then": {"required": ["steps"], "properties": {"steps": {"minItems": 1}}},
        "else": {"not": {"anyOf": [{"required": ["steps"], "properties": {"steps": {"minItems": 1}}},
                                   {"required": ["analysis"], "properties": {"analysis": {"type": "object"}}}]}},
    })

    strategy: Literal["rolling", "blueGreen", "canary"] = "rolling"
    steps: list[RolloutStep] = Field(default_factory=list)
    analysis: Analysis | None = None
    sampleRequest: SampleRequest | None = None

    @model_validator(mode="after")
    def _steps_fit_strategy(self) -> Rollout:
        if self.strategy != "canary" and (self.steps or self.analysis is not None):
            raise ValueError(f"steps and analysis apply to strategy canary, not {self.strategy}")
        if self.strategy == "canary":
            if not self.steps:
                raise ValueError("a canary needs steps (for example weights 10, 50, 100)")
            weights = [s.weight for s in self.steps]
            if any(b <= a for a, b in pairwise(weights)):
                raise ValueError(f"step weights must increase: {weights}")
        return self


class WebserviceSpec(_Strict):
    """A web service on AKS (``AksWebservice.deploy_configuration`` + ``InferenceConfig`` + ``Model.deploy``)."""

    # The rules of _deploy_configuration_rules, stated for JSON Schema validators (editors, check-jsonschema).
    model_config = ConfigDict(json_schema_extra={"allOf": [
        {"not": {"required": ["replicas", "autoscale"],
                 "properties": {"replicas": {"type": "integer"}, "autoscale": {"type": "object"}}},
         "description": "set replicas or autoscale, not both"},
        {"if": {"not": {"required": ["entryScript"]}},
         "then": {"required": ["models"], "properties": {"models": {"minItems": 1, "maxItems": 1}}},
         "description": "a service without entryScript (no-code deployment) needs exactly one model"},
    ]})

    workspace: str | None = None
    cluster: str
    # ``name`` or ``name:version`` (a string) or the mapping form; the schema shows both.
    models: list[Annotated[ModelRef, BeforeValidator(
        _parse_model_ref,
        json_schema_input_type=Annotated[str, Field(pattern=MODEL_REF_PATTERN, description="name or name:version")] | ModelRef,
    )]] = Field(default_factory=list)
    environment: str | None = None
    entryScript: str | None = None
    sourceDirectory: str | None = None
    replicas: int | None = Field(default=None, ge=1, le=1000)
    autoscale: Autoscale | None = None
    resources: Resources = Field(default_factory=Resources)
    auth: Literal["key", "token", "none"] = "key"
    scoringTimeoutMs: int = Field(default=60000, gt=0)
    maxConcurrentRequestsPerReplica: int = Field(default=1, ge=1)
    maxQueueWaitMs: int = Field(default=500, gt=0)
    livenessProbe: Probe = Field(default_factory=Probe)
    readinessProbe: Probe | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    description: str | None = None
    deletionPolicy: Literal["Retain", "Delete"] = "Delete"
    # Overrides the workspace's Azure ML API generation for this service, so services move to v2 one at a time.
    api: Literal["v1", "v2"] | None = None
    # v2 only: the Kubernetes instance type (the cluster's InstanceType resource) of the deployment.
    instanceType: str | None = None
    rollout: Rollout = Field(default_factory=Rollout)

    @model_validator(mode="after")
    def _deploy_configuration_rules(self) -> WebserviceSpec:
        if self.replicas is not None and self.autoscale is not None:
            raise ValueError("set replicas or autoscale, not both (autoscale_enabled with num_replicas is an error in Azure ML too)")
        if self.entryScript is None and len(self.models) != 1:
            raise ValueError("a service without entryScript (no-code deployment) needs exactly one model")
        return self

    def max_replicas(self) -> int:
        """The most replicas this service may run: fixed replicas, or autoscale's maximum (Azure's default 10)."""
        if self.replicas is not None:
            return self.replicas
        return (self.autoscale or Autoscale()).maxReplicas

    def min_replicas(self) -> int:
        """Replicas started on create: fixed replicas, or autoscale's minimum."""
        if self.replicas is not None:
            return self.replicas
        return (self.autoscale or Autoscale()).minReplicas


class _Envelope(_Strict):
    apiVersion: Literal["amlops.dev/v1"]
    metadata: Metadata

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def suspended(self) -> bool:
        return self.metadata.annotations.get(SUSPEND_ANNOTATION, "").lower() == "true"


class WorkspaceManifest(_Envelope):
    kind: Literal[Kind.WORKSPACE]
    spec: WorkspaceSpec = Field(default_factory=WorkspaceSpec)


class AksClusterManifest(_Envelope):
    kind: Literal[Kind.AKS_CLUSTER]
    spec: AksClusterSpec


class EnvironmentManifest(_Envelope):
    kind: Literal[Kind.ENVIRONMENT]
    spec: EnvironmentSpec = Field(default_factory=EnvironmentSpec)


class ModelManifest(_Envelope):
    kind: Literal[Kind.MODEL]
    spec: ModelSpec


class ServiceMetadata(Metadata):
    """Metadata of a web service, whose name Azure ML restricts further (it becomes a host name part)."""

    # The validator below gives the readable message; the pattern tells JSON Schema validators the same rule.
    name: str = Field(json_schema_extra={"pattern": _SERVICE_NAME.pattern})

    @field_validator("name")
    @classmethod
    def _azure_service_name(cls, name: str) -> str:
        if not _SERVICE_NAME.match(name):
            raise ValueError(
                "a service name must be 3-32 characters of lowercase letters, digits and '-', "
                "starting with a letter and ending with a letter or digit"
            )
        return name


class WebserviceManifest(_Envelope):
    kind: Literal[Kind.WEBSERVICE]
    metadata: ServiceMetadata
    spec: WebserviceSpec


AnyManifest = WorkspaceManifest | AksClusterManifest | EnvironmentManifest | ModelManifest | WebserviceManifest

MANIFEST_TYPES: Final[dict[Kind, type[AnyManifest]]] = {
    Kind.WORKSPACE: WorkspaceManifest,
    Kind.AKS_CLUSTER: AksClusterManifest,
    Kind.ENVIRONMENT: EnvironmentManifest,
    Kind.MODEL: ModelManifest,
    Kind.WEBSERVICE: WebserviceManifest,
}
