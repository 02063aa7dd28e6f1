"""The emulator's data plane: a deployed service runs as real scoring-host replicas on this machine.

A deployment (the service record plus its uploaded entry script, source tarball, registered model
files and environment) becomes desired resources (AksCluster, Environment, Model, Webservice
manifests pointing at files in the emulator's state folder) that the local backend creates. The
local backend resolves environments as Azure would build them, mapped onto this machine
(``azureml-defaults`` → amlops' scoring host, a TF 1.x pin → the installed TF 2 in v1-compat
mode); each substitution is reported on the service (a property) and in the log.

TensorFlow is never imported here: replicas are separate processes.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from controller.structs import tokens
from controller.structs.errors import BackendError, PermanentError
from controller.structs.logformats import event_logger
from controller.structs.manifests import BASE_IMAGE_ALIASES, Kind
from controller.structs.states import ConditionType, DesiredResource, DesiredState, Origin, ResourceId
from controller.structs.tokens import AccessToken

log = event_logger(__name__)

CONTROLLER_NAME = "amlops-emulator"
SUBSTITUTIONS_PROPERTY = "amlops.dev/substitutions"
RUNTIME_PROPERTY = "amlops.dev/runtime"


@dataclass(frozen=True)
class Deployment:
    """Everything the data plane needs to run one service."""

    name: str
    workspace_key: str
    compute: str
    models: tuple[tuple[str, int, Path], ...]
    driver_program: str | None
    assets: Mapping[str, Path]
    unpack: set[str]
    environment: Mapping[str, Any]
    replicas: int
    autoscale: Mapping[str, Any]
    resources: Mapping[str, Any]
    auth: str
    scoring_timeout_ms: int
    max_concurrent: int
    max_queue_wait_ms: int
    vm_size: str = "Standard_NC6"
    agent_count: int = 3
    # v2: the uploaded code folder and the scoring script inside it (v1 passes assets instead)
    code_dir: Path | None = None
    scoring_script: str | None = None


@dataclass(frozen=True)
class DeployOutcome:
    """How a deployment ended: a service state, an error body, the scoring URI and notes for properties."""

    state: str
    error: dict[str, Any] | None = None
    scoring_uri: str | None = None
    notes: dict[str, str] = field(default_factory=dict)


class DataPlane(Protocol):
    """Runs services. ``apply`` blocks until the replicas are ready or have failed."""

    def apply(self, deployment: Deployment) -> DeployOutcome: ...

    def delete(self, name: str) -> None: ...

    def keys(self, name: str) -> tuple[str, str] | None: ...

    def regenerate(self, name: str, which: str) -> bool: ...

    def token(self, name: str) -> AccessToken | None: ...

    def logs(self, name: str, tail: int) -> str: ...

    def scoring_uri(self, name: str) -> str | None: ...

    def close(self) -> None: ...


class LocalDataPlane:
    """The data plane on the local backend (``controller.backends.local``)."""

    def __init__(self, state_dir: Path, ready_timeout: float = 300.0) -> None:
        from controller.backends.local import LocalBackend

        self.root = state_dir
        self.work = state_dir / "dataplane"
        self.work.mkdir(parents=True, exist_ok=True)
        self.backend = LocalBackend(self.work / "local", CONTROLLER_NAME, ready_timeout=ready_timeout)
        self._lock = threading.Lock()  # one apply at a time: the local backend's GPU pool is shared state

    # -- building desired resources --------------------------------------------------------

    def _resource(self, manifest: dict[str, Any], origin_file: str, files: dict[str, str] | None = None) -> DesiredResource:
        from controller.structs.manifests import MANIFEST_TYPES

        model = MANIFEST_TYPES[Kind(manifest["kind"])].model_validate({"apiVersion": "amlops.dev/v1", **manifest})
        digest = "sha256:" + hashlib.sha256(model.model_dump_json().encode()).hexdigest()
        return DesiredResource(model, Origin(origin_file, 1), digest, {}, files or {})

    def _relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root.resolve()).as_posix()

    def _sources(self, d: Deployment) -> tuple[Path, str | None, str]:
        """Unpack the uploaded sources; returns (service folder, sourceDirectory, entryScript)."""
        env_vars = dict(d.environment.get("environmentVariables") or {})
        digest = hashlib.sha256()
        for asset_id in sorted(d.assets):
            digest.update(asset_id.encode() + b"\0" + hashlib.sha256(d.assets[asset_id].read_bytes()).digest())
        if d.code_dir is not None:
            for path in sorted(p for p in d.code_dir.rglob("*") if p.is_file()):
                digest.update(path.relative_to(d.code_dir).as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
        folder = self.work / "services" / d.name / digest.hexdigest()[:16]
        if d.code_dir is not None:
            if not folder.exists():
                staging = folder.with_name(folder.name + ".tmp")
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(d.code_dir, staging / "src")
                staging.rename(folder)
            return folder, "src", str(d.scoring_script or "score.py")
        if not folder.exists():
            staging = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            for asset_id, path in d.assets.items():
                if asset_id == d.driver_program:
                    continue  # the SDK's wrapper script: the scoring host imports the entry script itself
                if asset_id in d.unpack or tarfile.is_tarfile(path):
                    with tarfile.open(path) as tar:
                        tar.extractall(staging / "src", filter="data")
                else:
                    (staging / "src").mkdir(exist_ok=True)
                    shutil.copy2(path, staging / "src" / Path(asset_id).name)
            staging.rename(folder)
        entry = str(env_vars.get("AZUREML_ENTRY_SCRIPT") or "")
        source_dir = str(env_vars.get("AZUREML_SOURCE_DIRECTORY") or "")
        if source_dir and entry.startswith(source_dir + "/"):
            return folder, f"src/{source_dir}", entry[len(source_dir) + 1:]
        scripts = [a for a in d.assets if a != d.driver_program]
        return folder, None, f"src/{Path(entry or (scripts[0] if scripts else 'score.py')).name}"

    def _desired(self, d: Deployment, *, on_cpu: bool = False) -> tuple[list[DesiredResource], DesiredState]:
        resources: list[DesiredResource] = []
        cluster = {"kind": "AksCluster", "metadata": {"name": d.compute},
                   "spec": {"vmSize": d.vm_size, "agentCount": d.agent_count}}
        resources.append(self._resource(cluster, "clusters/cluster.yaml"))
        python = dict(d.environment.get("python") or {})
        conda = python.get("condaDependencies")
        docker = dict(d.environment.get("docker") or {})
        base = str(docker.get("baseImage") or BASE_IMAGE_ALIASES["DEFAULT_CPU_IMAGE"])
        env_name = f"{d.name}-env"
        env_vars = {str(k): str(v) for k, v in (d.environment.get("environmentVariables") or {}).items()}
        environment = {"kind": "Environment", "metadata": {"name": env_name},
                       "spec": {"conda": conda if isinstance(conda, dict) else None, "baseImage": base,
                                "environmentVariables": env_vars}}
        resources.append(self._resource(environment, "environments/environment.yaml"))
        refs = []
        for name, version, folder in d.models:
            local_name = f"{name}.v{version}"
            model = {"kind": "Model", "metadata": {"name": local_name}, "spec": {"path": folder.name}}
            resources.append(self._resource(model, f"{self._relative(folder.parent)}/model.yaml",
                                            {"path": self._relative(folder)}))
            refs.append(local_name)
        folder, source_dir, entry = self._sources(d)
        autoscale = None
        replicas: int | None = d.replicas
        if d.autoscale.get("autoscaleEnabled"):
            replicas = None
            autoscale = {"minReplicas": d.autoscale["minReplicas"], "maxReplicas": d.autoscale["maxReplicas"],
                         "targetUtilization": d.autoscale["targetUtilization"],
                         "refreshSeconds": d.autoscale["refreshPeriodInSeconds"]}
        resources_spec = {"cpu": d.resources["cpu"], "memoryGb": d.resources["memoryInGB"],
                          "gpu": 0 if on_cpu else d.resources["gpu"]}
        if d.resources.get("cpuLimit") is not None:
            resources_spec["cpuLimit"] = d.resources["cpuLimit"]
        if d.resources.get("memoryInGBLimit") is not None:
            resources_spec["memoryGbLimit"] = d.resources["memoryInGBLimit"]
        spec: dict[str, Any] = {
            "cluster": d.compute, "models": refs, "environment": env_name, "entryScript": entry,
            "replicas": replicas, "autoscale": autoscale, "resources": resources_spec, "auth": d.auth,
            "scoringTimeoutMs": d.scoring_timeout_ms, "maxConcurrentRequestsPerReplica": d.max_concurrent,
            "maxQueueWaitMs": d.max_queue_wait_ms,
        }
        files = {"entryScript": self._relative(folder / (source_dir or "") / entry)}
        if source_dir:
            spec["sourceDirectory"] = source_dir
            files["sourceDirectory"] = self._relative(folder / source_dir)
        service = {"kind": "Webservice", "metadata": {"name": d.name}, "spec": spec}
        resources.append(self._resource(service, f"{self._relative(folder)}/service.yaml", files))
        state = DesiredState("emulator", str(self.root), {r.id: r for r in resources})
        return resources, state

    # -- the protocol ----------------------------------------------------------------------------

    def apply(self, deployment: Deployment) -> DeployOutcome:
        """Create or update the service's replicas; block until ready or failed."""
        from controller.backends.base import ApplyContext

        try:
            resources, state = self._desired(deployment)
        except (OSError, tarfile.TarError, ValueError) as exc:
            return DeployOutcome("Failed", {"code": "InvalidDeployment", "message": f"cannot prepare the deployment: {exc}"})
        ctx = ApplyContext(CONTROLLER_NAME, "emulator", str(self.root), state)
        notes: dict[str, str] = {}
        with self._lock:
            try:
                try:
                    for resource in resources:
                        self.backend.create(resource, ctx)
                except PermanentError as exc:
                    # The emulated cluster (Azure's scheduler) admitted the deployment before it got here;
                    # only this machine has too few free GPUs. Run it on CPU, as without any GPU, and say so.
                    if exc.reason != "Unschedulable" or not self.backend.gpus or not deployment.resources.get("gpu"):
                        raise
                    resources, state = self._desired(deployment, on_cpu=True)
                    ctx = ApplyContext(CONTROLLER_NAME, "emulator", str(self.root), state)
                    for resource in resources:
                        self.backend.create(resource, ctx)
                    notes["amlops.dev/gpu"] = (f"this machine has {len(self.backend.gpus)} GPU(s), too few free for "
                                               "this deployment: its replicas run on CPU")
                    log.warning("service.on_cpu", name=deployment.name, reason=str(exc))
                actual = self.backend.read()
            except BackendError as exc:
                log.warning("service.deploy_failed", name=deployment.name, error=str(exc))
                return DeployOutcome("Failed", {"code": "DeploymentFailed", "message": str(exc)},
                                     notes={RUNTIME_PROPERTY: "amlops scoring host"})
        env = actual.get(Kind.ENVIRONMENT, f"{deployment.name}-env")
        service = actual.get(Kind.WEBSERVICE, deployment.name)
        for source in (env, service):
            for cond in source.conditions if source is not None else ():
                if cond.type in (ConditionType.SUBSTITUTED, ConditionType.GPU_UNAVAILABLE) and cond.status:
                    key = SUBSTITUTIONS_PROPERTY if cond.type == ConditionType.SUBSTITUTED else "amlops.dev/gpu"
                    notes[key] = cond.message
        if SUBSTITUTIONS_PROPERTY in notes:
            log.info("service.environment_substituted", name=deployment.name, substitutions=notes[SUBSTITUTIONS_PROPERTY])
        notes[RUNTIME_PROPERTY] = "amlops scoring host (entry script run directly; azureml-defaults provided)"
        uri = str(service.details.get("scoringUri")) if service is not None and service.details.get("scoringUri") else None
        return DeployOutcome("Healthy", None, uri, notes)

    def delete(self, name: str) -> None:
        """Stop the service's replicas (missing is fine)."""
        from controller.backends.base import ApplyContext

        ctx = ApplyContext(CONTROLLER_NAME, "emulator", str(self.root), DesiredState("emulator", str(self.root), {}))
        with self._lock:
            try:
                self.backend.delete(ResourceId(Kind.WEBSERVICE, name), ctx)
            except BackendError as exc:
                log.warning("service.delete_failed", name=name, error=str(exc))
        shutil.rmtree(self.work / "services" / name, ignore_errors=True)

    def keys(self, name: str) -> tuple[str, str] | None:
        """The service's keys, or None if it runs no replicas."""
        try:
            return self.backend.get_keys(name)
        except BackendError:
            return None

    def regenerate(self, name: str, which: str) -> bool:
        """Regenerate one key; False if the service runs no replicas."""
        try:
            self.backend.regenerate_key(name, "primary" if which == "primary" else "secondary")
        except BackendError:
            return False
        return True

    def token(self, name: str) -> AccessToken | None:
        """A fresh access token of a service with token auth; None if it runs no replicas."""
        try:
            return self.backend.get_token(name)
        except BackendError:
            return None

    def logs(self, name: str, tail: int) -> str:
        """Every replica's recent log lines, replica by replica."""
        parts = []
        for replica in range(64):
            if not self.backend.log_path(name, replica).exists():
                break
            parts.append(f"==> replica {replica} <==\n" + self.backend.tail_log(name, replica, tail))
        return "\n".join(parts)

    def scoring_uri(self, name: str) -> str | None:
        """Where the service's replicas answer, or None if it runs none."""
        try:
            return self.backend.scoring_uri(name)
        except BackendError:
            return None

    def close(self) -> None:
        """Release the local backend's handles; replicas keep running (re-adopted on restart)."""
        self.backend.close()


class RecordOnlyDataPlane:
    """A control-plane-only data plane: services become Healthy with keys but run nothing."""

    def __init__(self) -> None:
        import secrets

        self._secrets = secrets
        self._keys: dict[str, tuple[str, str]] = {}
        self._token_keys: dict[str, bytes] = {}

    def apply(self, deployment: Deployment) -> DeployOutcome:
        self._keys.setdefault(deployment.name, (self._secrets.token_urlsafe(32), self._secrets.token_urlsafe(32)))
        return DeployOutcome("Healthy", None, None, {RUNTIME_PROPERTY: "none (emulator started with --no-data-plane)"})

    def delete(self, name: str) -> None:
        self._keys.pop(name, None)
        self._token_keys.pop(name, None)

    def token(self, name: str) -> AccessToken | None:
        if name not in self._keys:
            return None
        key = self._token_keys.setdefault(name, self._secrets.token_bytes(32))
        return tokens.mint(key, name, time.time())

    def keys(self, name: str) -> tuple[str, str] | None:
        return self._keys.get(name)

    def regenerate(self, name: str, which: str) -> bool:
        if name not in self._keys:
            return False
        p, s = self._keys[name]
        new = self._secrets.token_urlsafe(32)
        self._keys[name] = (new, s) if which == "primary" else (p, new)
        return True

    def logs(self, name: str, tail: int) -> str:
        return ""

    def scoring_uri(self, name: str) -> str | None:
        return None

    def close(self) -> None:
        pass


def stop_services(state_dir: Path) -> None:
    """Delete every service an emulator's data plane left running under ``state_dir`` (after it stopped).

    Services outlive the emulator by design (a restarted one re-adopts them); a test or benchmark
    run that is over must not leave their supervisors and replicas behind.
    """
    from controller.backends.base import ApplyContext
    from controller.backends.local import LocalBackend

    local = state_dir / "dataplane" / "local"
    if not local.exists():
        return
    backend = LocalBackend(local, CONTROLLER_NAME)
    ctx = ApplyContext(CONTROLLER_NAME, "cleanup", str(state_dir), DesiredState("cleanup", str(state_dir), {}))
    try:
        for resource in backend.read():
            if resource.id.kind is Kind.WEBSERVICE:
                backend.delete(resource.id, ctx)
    finally:
        backend.close()
