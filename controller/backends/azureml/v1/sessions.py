"""A connection to one workspace through azureml-core, shared by the v1 handlers."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from controller.backends.azureml.classifying import call
from controller.backends.azureml.credentials import credential_type, service_principal
from controller.backends.azureml.v1.sdk import bound_sdk_retries
from controller.backends.azureml.workspaces import observed_workspace, require_coordinates
from controller.backends.base import ApplyContext
from controller.structs.manifests import Kind, WorkspaceManifest
from controller.structs.plans import Change
from controller.structs.states import (
    ActualResource,
    DesiredResource,
    ResourceId,
)

T = TypeVar("T")


class V1Session:
    """The SDK ``Workspace`` (connected on first use) and what every v1 handler needs besides."""

    def __init__(self, workspace: WorkspaceManifest, controller_name: str, lro_timeout_s: float,
                 environ: Mapping[str, str] | None = None) -> None:
        require_coordinates(workspace)
        self.manifest = workspace
        self.controller_name = controller_name
        self.lro_timeout_s = lro_timeout_s
        self.environ = dict(os.environ if environ is None else environ)
        self._ws: Any = None
        self._lock = threading.Lock()

    def _auth(self) -> Any:
        kind = credential_type(self.manifest)
        if kind == "managedIdentity":
            from azureml.core.authentication import MsiAuthentication

            return MsiAuthentication()
        if kind == "azureCli":
            from azureml.core.authentication import AzureCliAuthentication

            return AzureCliAuthentication()
        from azureml.core.authentication import ServicePrincipalAuthentication

        sp = service_principal(self.manifest, self.environ)
        return ServicePrincipalAuthentication(tenant_id=sp.tenant_id, service_principal_id=sp.client_id,
                                              service_principal_password=sp.secret)

    @property
    def ws(self) -> Any:
        """The SDK Workspace, connected on first use (one ARM GET plus discovery)."""
        with self._lock:
            if self._ws is None:
                from azureml.core import Workspace

                bound_sdk_retries()
                spec = self.manifest.spec
                self._ws = self.call("connect to workspace", lambda: Workspace(
                    subscription_id=spec.subscriptionId, resource_group=spec.resourceGroup,
                    workspace_name=spec.workspaceName or self.manifest.metadata.name, auth=self._auth()))
            return self._ws

    @staticmethod
    def call(what: str, fn: Callable[[], T]) -> T:
        """``fn()`` with SDK failures classified."""
        return call(what, fn)

    def close(self) -> None:
        """Forget the SDK workspace (its sessions are closed by the SDK at exit)."""
        self._ws = None


class WorkspaceHandler:
    """The workspace itself: read to check it answers; never created or deleted by amlops."""

    kind = Kind.WORKSPACE
    replace_fields = frozenset({"backend", "subscriptionId", "resourceGroup", "workspaceName"})

    def __init__(self, session: V1Session) -> None:
        self.session = session

    def read(self) -> Iterable[ActualResource]:
        """The workspace, as its manifest says, with its location."""
        s = self.session
        return [observed_workspace(s.manifest, s.controller_name, {"location": s.ws.location})]

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Connect (the workspace must exist)."""
        self.session.call("get workspace", lambda: self.session.ws)

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> None:
        """Connect (nothing of a workspace changes through amlops)."""
        self.create(resource, ctx)

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Workspaces are never deleted."""
