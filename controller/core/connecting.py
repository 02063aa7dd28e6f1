"""Connecting to backends: the Workspace manifest's ``spec.backend`` picks where its resources live.

``local`` (the default, and what a repo without a Workspace gets) plays Azure ML out on this
machine; ``azureml`` talks to Azure ML, through API v1 (azureml-core) or v2 (azure-ai-ml) as the
workspace's ``api`` says. A Webservice's own ``api`` routes that service to the other generation
of the same workspace (``workspace_for``), so services move to v2 one at a time. Backends open lazily and once per target, and the
azureml module (and its optional SDK) is imported only when a workspace asks for it, so a
local-only install never needs it.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from controller.backends.base import Backend, ServiceAccess, TrafficSplitting
from controller.sources.loading import load_desired_state
from controller.sources.revisions import local_source
from controller.structs.errors import PermanentError
from controller.structs.logformats import event_logger
from controller.structs.manifests import AnyManifest, Kind, WebserviceManifest, WorkspaceManifest
from controller.structs.states import DesiredState, ResourceId, workspace_of

BackendFor = Callable[[WorkspaceManifest | None], Backend]

log = event_logger(__name__)


class BackendUnavailable(PermanentError):
    """The backend a workspace names cannot be opened here (not installed, not written yet)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="BackendUnavailable")


def backend_key(workspace: WorkspaceManifest | None) -> tuple[str, ...]:
    """What identifies one backend target: workspaces with equal keys share one backend."""
    if workspace is None or workspace.spec.backend == "local":
        return ("local",)
    spec = workspace.spec
    return ("azureml", spec.api, spec.subscriptionId or "", spec.resourceGroup or "",
            spec.workspaceName or workspace.metadata.name)


def workspace_for(manifest: AnyManifest, workspace: WorkspaceManifest | None) -> WorkspaceManifest | None:
    """The workspace whose backend holds ``manifest``: its own, or (a Webservice whose ``api``
    differs from its workspace's) the same workspace reached through the other API generation."""
    if workspace is None or not isinstance(manifest, WebserviceManifest) or manifest.spec.api is None \
            or manifest.spec.api == workspace.spec.api or workspace.spec.backend != "azureml":
        return workspace
    return workspace.model_copy(update={"spec": workspace.spec.model_copy(update={"api": manifest.spec.api})})


def declared_replace_fields(kind: Kind) -> frozenset[str]:
    """Replace-forcing fields of ``kind`` on any backend (the union of every backend's declaration).

    For planning without a backend at hand (``amlops plan --base/--head``): the cautious answer.
    Only the declarations are read; no backend is opened and no SDK is imported.
    """
    from controller.backends.azureml.v1.backend import V1_HANDLERS
    from controller.backends.azureml.v2.backend import V2_HANDLERS
    from controller.backends.handling import replace_fields_of
    from controller.backends.local.backend import LOCAL_HANDLERS

    return (replace_fields_of(LOCAL_HANDLERS, kind) | replace_fields_of(V1_HANDLERS, kind)
            | replace_fields_of(V2_HANDLERS, kind))


def open_backend(workspace: WorkspaceManifest | None, state_dir: str | Path, controller_name: str) -> Backend:
    """Open the backend ``workspace`` names (``local`` when there is no workspace)."""
    if workspace is None or workspace.spec.backend == "local":
        from controller.backends.local import LocalBackend

        return LocalBackend(state_dir, controller_name=controller_name)
    if workspace.spec.backend == "azureml":
        return _open_azureml(workspace, controller_name)
    raise BackendUnavailable(f"unknown backend {workspace.spec.backend!r}")  # pragma: no cover - schema forbids it


def _open_azureml(workspace: WorkspaceManifest, controller_name: str) -> Backend:
    package = "azure-ai-ml" if workspace.spec.api == "v2" else "azureml-core"
    try:
        # Imported only when a workspace asks for it: the SDKs are an optional extra.
        if workspace.spec.api == "v2":
            if importlib.util.find_spec("azure.ai.ml") is None or importlib.util.find_spec("azure.identity") is None:
                raise ImportError("azure-ai-ml and azure-identity are not installed")
            from controller.backends.azureml.v2 import AzureMLV2Backend

            return AzureMLV2Backend(workspace, controller_name)
        from controller.backends.azureml import AzureMLBackend
    except ImportError as exc:
        raise BackendUnavailable(
            f"workspace {workspace.metadata.name!r} uses backend 'azureml' api {workspace.spec.api} ({package}), "
            f"which cannot be loaded here ({exc}); install amlops[azureml] or use backend: local"
        ) from exc
    return AzureMLBackend(workspace, controller_name)


class BackendPool:
    """Backends opened on first use, one per target, closed together. Safe to share between threads."""

    def __init__(self, state_dir: str | Path, controller_name: str,
                 on_secrets: Callable[[tuple[str, ...]], None] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.controller_name = controller_name
        self._on_secrets = on_secrets
        self._open: dict[tuple[str, ...], Backend] = {}
        self._lock = threading.Lock()

    def backend_for(self, workspace: WorkspaceManifest | None) -> Backend:
        """The backend of ``workspace``, opening it on first use."""
        key = backend_key(workspace)
        with self._lock:
            backend = self._open.get(key)
            if backend is None:
                backend = open_backend(workspace, self.state_dir, self.controller_name)
                secrets = tuple(getattr(backend, "secrets", ()))
                if secrets and self._on_secrets is not None:
                    self._on_secrets(secrets)
                log.info("backend.opened", backend=key[0], workspace=workspace.metadata.name if workspace else None)
                self._open[key] = backend
            return backend

    def backends(self) -> list[Backend]:
        """The backends opened so far."""
        with self._lock:
            return list(self._open.values())

    def close(self) -> None:
        """Close every opened backend (services they manage keep running)."""
        with self._lock:
            backends, self._open = list(self._open.values()), {}
        for backend in backends:
            backend.close()


@dataclass
class Targets:
    """Which backend holds each resource, and the backends in use (each once, in the order first used)."""

    backends: list[Backend] = field(default_factory=list)
    owner: dict[ResourceId, Backend] = field(default_factory=dict)

    def add(self, backend: Backend) -> Backend:
        """Note ``backend`` as in use (once); return it."""
        if not any(b is backend for b in self.backends):
            self.backends.append(backend)
        return backend


def targets_for(desired: DesiredState, backend_for: BackendFor) -> Targets:
    """Each declared resource's backend, from its workspace (one repo can span backends); the local
    backend alone when no Workspace is declared."""
    targets = Targets()
    workspaces = [r.manifest for r in desired if isinstance(r.manifest, WorkspaceManifest)]
    for workspace in workspaces:
        targets.add(backend_for(workspace))
    if not workspaces:
        targets.add(backend_for(None))
    for resource in desired:
        # A Webservice whose ``api`` differs from its workspace's goes to the other generation's backend.
        targets.owner[resource.id] = targets.add(backend_for(workspace_for(resource.manifest, workspace_of(desired, resource))))
    return targets


def folder_targets(root: str | Path, path: str, backend_for: BackendFor) -> Targets:
    """The targets of the manifests under ``root/path`` (validated; raises ``ValidationFailed``)."""
    return targets_for(load_desired_state(root, path), backend_for)


def service_backend(targets: Targets, service: str) -> Backend:
    """The backend holding ``service``: the one its manifest's workspace names, else the one that reports it."""
    rid = ResourceId(Kind.WEBSERVICE, service)
    declared = targets.owner.get(rid)
    if declared is not None:
        return declared
    if len(targets.backends) == 1:
        return targets.backends[0]  # its own error says best whether the service is there
    for backend in targets.backends:
        if rid in backend.read().resources:
            return backend
    raise PermanentError(f"service {service!r} is not declared in the manifests, and no backend they name has it",
                         reason="NotFound")


def service_access(targets: Targets, service: str) -> ServiceAccess:
    """The backend holding ``service``, as the keeper of its keys, tokens and logs (``PermanentError`` if it is none)."""
    backend = service_backend(targets, service)
    if not isinstance(backend, ServiceAccess):
        raise PermanentError(f"the {backend.name} backend cannot give out keys, tokens or logs", reason="Unsupported")
    return backend


def traffic_splitting(targets: Targets, service: str) -> TrafficSplitting:
    """The backend holding ``service``, as the one splitting its traffic (``PermanentError`` if it cannot)."""
    backend = service_backend(targets, service)
    if not isinstance(backend, TrafficSplitting):
        raise PermanentError(f"the {backend.name} backend cannot split traffic", reason="Unsupported")
    return backend


@runtime_checkable
class _LogFiles(Protocol):
    """A backend whose replica logs are files on this machine (the local one)."""

    def log_path(self, service: str, replica: int = 0) -> Path: ...


def log_file(access: ServiceAccess, service: str, replica: int) -> Path | None:
    """The file a replica's log is written to, where the backend keeps it on this machine (what ``logs --follow`` tails)."""
    return access.log_path(service, replica) if isinstance(access, _LogFiles) else None


def source_for(root: Path, path: str) -> str:
    """The inventory name of the manifests at ``root/path`` on this machine (``sources.revisions.local_source``)."""
    target = (root / path).absolute()
    return local_source(target if target.is_dir() else target.parent)
