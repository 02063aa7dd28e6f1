"""The azureml backend on API v1: the Backend protocol over azureml-core, one handler per kind.

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

from collections.abc import Mapping
from typing import Any, Final

from controller.backends.azureml.credentials import secrets_of
from controller.backends.azureml.v1.clusters import ClusterHandler
from controller.backends.azureml.v1.environments import EnvironmentHandler
from controller.backends.azureml.v1.models import ModelHandler
from controller.backends.azureml.v1.sdk import epoch, quiet, warn_end_of_support
from controller.backends.azureml.v1.services import ServiceAccessV1, ServiceHandler
from controller.backends.azureml.v1.sessions import V1Session, WorkspaceHandler
from controller.backends.base import KindHandler
from controller.backends.handling import HandlerBackend
from controller.backends.keys import KeyName
from controller.structs.errors import PermanentError
from controller.structs.logformats import event_logger
from controller.structs.manifests import Kind, WorkspaceManifest
from controller.structs.tokens import AccessToken

log = event_logger(__name__)

V1_HANDLERS: Final[Mapping[Kind, type[KindHandler]]] = {
    Kind.WORKSPACE: WorkspaceHandler,
    Kind.AKS_CLUSTER: ClusterHandler,
    Kind.ENVIRONMENT: EnvironmentHandler,
    Kind.MODEL: ModelHandler,
    Kind.WEBSERVICE: ServiceHandler,
}


class AzureMLBackend(HandlerBackend):
    """read / create / update / delete of AKS clusters, environments, models and AKS web services (API v1)."""

    name = "azureml"
    api = "v1"

    def __init__(self, workspace: WorkspaceManifest, controller_name: str = "amlops", *,
                 lro_timeout_s: float = 1800.0, environ: Mapping[str, str] | None = None, warn: bool = True) -> None:
        self.session = V1Session(workspace, controller_name, lro_timeout_s, environ)
        self.manifest = workspace
        self.controller_name = controller_name
        self.handlers = {kind: handler(self.session) for kind, handler in V1_HANDLERS.items()}  # type: ignore[call-arg]
        self._access = ServiceAccessV1(self.session)
        if warn:
            warn_end_of_support()

    @property
    def secrets(self) -> tuple[str, ...]:
        """Credential values to keep out of logs: the service principal's secret, when one is used."""
        return secrets_of(self.manifest, self.session.environ)

    @property
    def ws(self) -> Any:
        """The SDK Workspace, connected on first use."""
        return self.session.ws

    def close(self) -> None:
        """Forget the SDK workspace (its sessions are closed by the SDK at exit)."""
        self.session.close()

    # -- keys and logs (ServiceAccess) -----------------------------------------------------------

    def get_keys(self, service: str) -> tuple[str, str]:
        """``(primary, secondary)`` keys of a service with ``auth: key`` (``Webservice.get_keys()``)."""
        svc = self._access.webservice(service)
        primary, secondary = self.session.call(f"get keys of service {service}", svc.get_keys)
        return str(primary), str(secondary)

    def get_token(self, service: str) -> AccessToken:
        """A fresh access token of a service with ``auth: token`` (``Webservice.get_access_token()``)."""
        svc = self._access.webservice(service)
        token = self.session.call(f"get an access token of service {service}", svc.get_access_token)
        return AccessToken(str(token.access_token), epoch(token.refresh_after), epoch(token.expiry_on),
                           str(token.token_type or "Bearer"))

    def regenerate_key(self, service: str, which: KeyName) -> None:
        """Replace one key (``Webservice.regen_key``); waits for Azure's operation (a few seconds)."""
        svc = self._access.webservice(service)
        with quiet():
            self.session.call(f"regenerate the {which} key of service {service}", lambda: svc.regen_key(which.capitalize()))
        log.info("service.key_regenerated", service=service, key=which)

    def tail_log(self, service: str, replica: int = 0, lines: int = 100) -> str:
        """The last ``lines`` lines of the service's container log (``Webservice.get_logs``).

        SDK v1 cannot name a replica: Azure answers with the log of the replica it picks, so only
        ``replica=0`` (whichever one that is) is accepted.
        """
        if replica != 0:
            raise PermanentError(f"the azureml backend cannot choose a replica (asked for {replica}): "
                                 "Azure ML returns one replica's log; leave out --replica", reason="InvalidArgument")
        svc = self._access.webservice(service)
        content = self.session.call(f"get logs of service {service}", lambda: svc.get_logs(num_lines=lines))
        return str(content or "")
