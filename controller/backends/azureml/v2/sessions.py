"""A connection to one workspace through azure-ai-ml (``MLClient``), shared by the v2 handlers.

Credentials come from the Workspace manifest's references through azure-identity:
``servicePrincipal`` → ``ClientSecretCredential``, ``managedIdentity`` → ``ManagedIdentityCredential``,
``azureCli`` → ``AzureCliCredential``. ``MLClient`` makes no request until the first operation; it is
built with telemetry and progress bars off. Long operations are awaited in slices, reporting
progress, up to ``lro_timeout_s``.

Retries are the backend's, bounded here rather than left to azure-core's defaults: the SDK retries
a throttled or failed request at most ``SDK_RETRIES`` times, and only when the server asks for a
short wait (``retry-after-ms`` / ``Retry-After`` up to ``SDK_RETRY_AFTER_MAX_S``). A longer wait
is not slept inside a worker thread: the error goes up as a ``TransientError`` carrying the
server's wait, and the executor (or the next pass) retries no sooner than that.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

from controller.backends.azureml.classifying import call, classify
from controller.backends.azureml.credentials import credential_type, resolve, service_principal
from controller.backends.azureml.workspaces import observed_workspace, require_coordinates
from controller.backends.base import ApplyContext, ProgressFn, no_progress
from controller.structs.errors import PermanentError, TransientError
from controller.structs.manifests import Kind, WorkspaceManifest
from controller.structs.plans import Change
from controller.structs.states import (
    ActualResource,
    DesiredResource,
    ResourceId,
)

T = TypeVar("T")
_SLICE_S = 5.0

SDK_RETRIES: Final = 3
"""Retries azure-core may make per request (its default total is 10, with 3 on status codes)."""
SDK_RETRY_AFTER_MAX_S: Final = 5.0
"""The longest server-asked wait the SDK may sleep in place; longer ones go to the executor."""
SDK_BACKOFF_MAX_S: Final = 8
"""azure-core's back-off cap when the server gives no wait (its default is 120 s)."""


SDK_CONSOLE_LOGGERS: Final = ("azure.ai.ml", "azure.ai.ml._utils._endpoint_utils", "azure.ai.ml._utils._package_utils")
"""Loggers azure-ai-ml gives their own stderr handler at INFO ("Check: endpoint … exists", polling dots)."""


def route_sdk_console_logging() -> None:
    """Send azure-ai-ml's console chatter through the controller's logging, at WARNING and above.

    The SDK prints progress itself, bypassing the log format: INFO lines to stderr through its own
    handlers, and a ``.`` to **stdout** on every poll of a deployment create or endpoint delete
    (``AzureMLPolling.update_status``), which would corrupt ``--log-format json``'s JSON-lines
    stdout. The backend reports its own progress instead, so both are dropped here: the handlers
    removed, and the polling module's ``print`` name bound to a function that writes nothing.
    """
    from azure.ai.ml._utils import _azureml_polling

    for name in SDK_CONSOLE_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = True
    _azureml_polling.print = _no_console_output  # type: ignore[attr-defined]


def _no_console_output(*args: object, **kwargs: object) -> None:
    """What azure-ai-ml's polling dots become: nothing (progress is reported by ``V2Session.wait``)."""


def bounded_retry_policy() -> Any:
    """azure-core's ``RetryPolicy`` with the bounds above (a request is retried in place only for short waits)."""
    from azure.core.pipeline.policies import RetryPolicy

    class BoundedRetryPolicy(RetryPolicy):  # type: ignore[type-arg]
        def is_retry(self, settings: Any, response: Any) -> bool:
            after = self.get_retry_after(response)
            if after is not None and after > SDK_RETRY_AFTER_MAX_S:
                return False
            return bool(super().is_retry(settings, response))

    return BoundedRetryPolicy(retry_total=SDK_RETRIES, retry_status=SDK_RETRIES, retry_connect=SDK_RETRIES,
                              retry_read=SDK_RETRIES, retry_backoff_max=SDK_BACKOFF_MAX_S)


class V2Session:
    """The ``MLClient`` of one workspace (built on first use) and what every v2 handler needs besides."""

    def __init__(self, workspace: WorkspaceManifest, controller_name: str, lro_timeout_s: float,
                 environ: Mapping[str, str] | None = None) -> None:
        require_coordinates(workspace)
        self.manifest = workspace
        self.workspace_name = workspace.spec.workspaceName or workspace.metadata.name
        self.controller_name = controller_name
        self.lro_timeout_s = lro_timeout_s
        self.environ = dict(os.environ if environ is None else environ)
        self._client: Any = None
        self._credential: Any = None
        self._location: str | None = None
        self._lock = threading.Lock()

    def credential(self) -> Any:
        """The azure-identity credential the Workspace manifest names."""
        from azure.identity import AzureCliCredential, ClientSecretCredential, ManagedIdentityCredential

        if self._credential is None:
            kind = credential_type(self.manifest)
            creds = self.manifest.spec.credentials
            if kind == "managedIdentity":
                client_id = resolve(creds.clientId, self.environ, "credentials.clientId") \
                    if creds is not None and creds.clientId is not None else None
                self._credential = ManagedIdentityCredential(client_id=client_id)
            elif kind == "azureCli":
                self._credential = AzureCliCredential()
            else:
                sp = service_principal(self.manifest, self.environ)
                self._credential = ClientSecretCredential(sp.tenant_id, sp.client_id, sp.secret)
        return self._credential

    @property
    def client(self) -> Any:
        """The ``MLClient`` (no request is made to build it)."""
        with self._lock:
            if self._client is None:
                from azure.ai.ml import MLClient

                route_sdk_console_logging()
                spec = self.manifest.spec
                self._client = MLClient(self.credential(), spec.subscriptionId, spec.resourceGroup,
                                        self.workspace_name, enable_telemetry=False, show_progress=False,
                                        retry_policy=bounded_retry_policy())
            return self._client

    @property
    def location(self) -> str:
        """The workspace's region (one GET, cached)."""
        if self._location is None:
            ws = self.call("get workspace", lambda: self.client.workspaces.get(self.workspace_name))
            self._location = str(ws.location)
        return self._location

    @property
    def scope(self) -> str:
        """The workspace's ARM id."""
        spec = self.manifest.spec
        return (f"/subscriptions/{spec.subscriptionId}/resourceGroups/{spec.resourceGroup}"
                f"/providers/Microsoft.MachineLearningServices/workspaces/{self.workspace_name}")

    @staticmethod
    def call(what: str, fn: Callable[[], T]) -> T:
        """``fn()`` with SDK failures classified."""
        return call(what, fn)

    def wait(self, what: str, poller: Any, progress: ProgressFn = no_progress) -> Any:
        """The result of a long operation, awaited in slices (progress reported) up to ``lro_timeout_s``."""
        started = time.monotonic()
        while True:
            try:
                poller.wait(_SLICE_S)
                if poller.done():
                    return poller.result()
            except (PermanentError, TransientError):
                raise
            except Exception as exc:
                raise classify(what, exc) from exc
            waited = time.monotonic() - started
            if waited > self.lro_timeout_s:
                raise TransientError(f"{what}: not finished after {int(waited)} s (status {poller.status()}); "
                                     "will look again on the next pass")
            progress(f"{what}: {poller.status()} after {int(waited)} s", None)

    def close(self) -> None:
        """Close the client's and credential's HTTP sessions."""
        client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            client.close()
        credential, self._credential = self._credential, None
        if credential is not None and hasattr(credential, "close"):
            credential.close()


class WorkspaceHandler:
    """The workspace itself: read to check it answers; never created or deleted by amlops."""

    kind = Kind.WORKSPACE
    replace_fields = frozenset({"backend", "subscriptionId", "resourceGroup", "workspaceName", "location"})

    def __init__(self, session: V2Session) -> None:
        self.session = session

    def read(self) -> Iterable[ActualResource]:
        """The workspace, as its manifest says, with its location (one GET)."""
        s = self.session
        return [observed_workspace(s.manifest, s.controller_name, {"location": s.location, "api": "v2"})]

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Check that the workspace answers (it must exist)."""
        self.session._location = None
        _ = self.session.location

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> None:
        """Check that the workspace answers (nothing of a workspace changes through amlops)."""
        self.create(resource, ctx)

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Workspaces are never deleted."""
