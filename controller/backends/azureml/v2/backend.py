"""The azureml backend on API v2: the Backend protocol over azure-ai-ml, one handler per kind.

AksCluster → KubernetesCompute attachment; Environment, Model (and a service's code) → assets with
content-hash versions; Webservice → KubernetesOnlineEndpoint + one KubernetesOnlineDeployment per
generation, rolled out through the rollout engine (``TrafficSplitting``: the endpoint's traffic
table is the split, Azure Monitor's metrics the figures) for ``canary`` and ``blueGreen``. ``read``
lists each kind once, plus the versions of an amlops-managed asset (for their tags) on the
session's first read and whenever the container list shows the asset changed or amlops wrote to
it; a no-op reconcile writes nothing. azure-ai-ml and azure-identity are an optional extra,
imported lazily.

When azureml-core is installed too, the v1 web services of the same workspace are listed beside
the endpoints, so a service whose manifest moves to v2 plans (and runs) its migration.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, Final

from controller.backends.azureml.credentials import secrets_of
from controller.backends.azureml.v2.assets import EnvironmentHandler, ModelHandler
from controller.backends.azureml.v2.computes import ComputeHandler
from controller.backends.azureml.v2.endpoints import EndpointHandler
from controller.backends.azureml.v2.migrating import set_keys
from controller.backends.azureml.v2.sessions import V2Session, WorkspaceHandler
from controller.backends.base import ApplyContext, KindHandler
from controller.backends.handling import HandlerBackend
from controller.backends.keys import KeyName
from controller.structs.errors import PermanentError
from controller.structs.logformats import event_logger
from controller.structs.manifests import Kind, WorkspaceManifest
from controller.structs.rollouts import RolloutState, Traffic, VersionFigures
from controller.structs.states import DesiredResource, DesiredState
from controller.structs.tokens import AccessToken

log = event_logger(__name__)

V2_HANDLERS: Final[Mapping[Kind, type[KindHandler]]] = {
    Kind.WORKSPACE: WorkspaceHandler,
    Kind.AKS_CLUSTER: ComputeHandler,
    Kind.ENVIRONMENT: EnvironmentHandler,
    Kind.MODEL: ModelHandler,
    Kind.WEBSERVICE: EndpointHandler,
}


class AzureMLV2Backend(HandlerBackend):
    """read / create / update / delete of Kubernetes attachments, assets and online endpoints (API v2)."""

    name = "azureml"
    api = "v2"

    def __init__(self, workspace: WorkspaceManifest, controller_name: str = "amlops", *,
                 lro_timeout_s: float = 1800.0, environ: Mapping[str, str] | None = None,
                 list_v1_services: bool = True) -> None:
        self.session = V2Session(workspace, controller_name, lro_timeout_s, environ)
        self.manifest = workspace
        self.controller_name = controller_name
        self._environ = environ
        self._list_v1 = list_v1_services
        self._v1: Any = None
        self.endpoints = EndpointHandler(self.session, self._v1_backend)
        self.handlers = {Kind.WORKSPACE: WorkspaceHandler(self.session), Kind.AKS_CLUSTER: ComputeHandler(self.session),
                         Kind.ENVIRONMENT: EnvironmentHandler(self.session), Kind.MODEL: ModelHandler(self.session),
                         Kind.WEBSERVICE: self.endpoints}

    def _v1_backend(self) -> Any:
        """The same workspace through API v1 (for services still there), or None without azureml-core."""
        if not self._list_v1:
            return None
        if self._v1 is None:
            try:
                import azureml.core  # noqa: F401
            except ImportError:
                self._list_v1 = False
                return None
            from controller.backends.azureml.v1 import AzureMLBackend

            v1_manifest = self.manifest.model_copy(update={"spec": self.manifest.spec.model_copy(update={"api": "v1"})})
            self._v1 = AzureMLBackend(v1_manifest, self.controller_name, environ=self._environ, warn=False)
        return self._v1

    @property
    def secrets(self) -> tuple[str, ...]:
        """Credential values to keep out of logs: the service principal's secret, when one is used."""
        return secrets_of(self.manifest, self.session.environ)

    def close(self) -> None:
        """Close the SDK clients."""
        if self.endpoints._metrics is not None:
            self.endpoints._metrics.close()
        self.session.close()
        if self._v1 is not None:
            self._v1.close()

    # -- keys, tokens and logs (ServiceAccess) ------------------------------------------------------

    def _endpoint(self, service: str) -> Any:
        endpoint = self.endpoints._get_endpoint(service)
        if endpoint is None:
            raise PermanentError(f"endpoint {service!r} not found in workspace {self.manifest.metadata.name!r}",
                                 reason="NotFound")
        return endpoint

    def get_keys(self, service: str) -> tuple[str, str]:
        """``(primary, secondary)`` keys of an endpoint with ``auth: key`` (listKeys)."""
        self._endpoint(service)
        s = self.session
        keys = s.call(f"get keys of endpoint {service}", lambda: s.client.online_endpoints.get_keys(service))
        if not getattr(keys, "primary_key", None):
            raise PermanentError(f"endpoint {service!r} does not use keys (auth: token)", reason="InvalidArgument")
        return str(keys.primary_key), str(keys.secondary_key)

    def get_token(self, service: str) -> AccessToken:
        """A fresh token of an endpoint with ``auth: token`` (the endpoint's token route)."""
        self._endpoint(service)
        s = self.session
        token = s.call(f"get a token of endpoint {service}", lambda: s.client.online_endpoints.get_keys(service))
        if not getattr(token, "access_token", None):
            raise PermanentError(f"endpoint {service!r} uses keys, not tokens (auth: key)", reason="InvalidArgument")
        return AccessToken(str(token.access_token), int(token.refresh_after_time_utc or 0),
                           int(token.expiry_time_utc or 0), str(getattr(token, "token_type", None) or "Bearer"))

    def regenerate_key(self, service: str, which: KeyName) -> None:
        """Replace one key with a fresh random value (regenerateKeys with keyValue); the other keeps working."""
        self.get_keys(service)  # an endpoint with keys, or a clear error
        fresh = secrets.token_urlsafe(32)
        ctx = ApplyContext(self.controller_name, "", "", DesiredState("", "", {}))
        set_keys(self.endpoints, service, fresh if which == "primary" else None,
                 fresh if which == "secondary" else None, ctx)
        log.info("endpoint.key_regenerated", endpoint=service, key=which)

    def tail_log(self, service: str, replica: int = 0, lines: int = 100) -> str:
        """The last ``lines`` lines of the live deployment's inference-server log (getLogs).

        Azure ML answers with one instance's log; only ``replica=0`` is accepted.
        """
        if replica != 0:
            raise PermanentError(f"the azureml backend cannot choose a replica (asked for {replica}): "
                                 "Azure ML returns one instance's log; leave out --replica", reason="InvalidArgument")
        endpoint = self._endpoint(service)
        live = (endpoint.tags or {}).get("amlops.dev/live-deployment")
        if not live:
            raise PermanentError(f"endpoint {service!r} has no live deployment", reason="NotFound")
        s = self.session
        return str(s.call(f"get logs of deployment {live}",
                          lambda: s.client.online_deployments.get_logs(live, service, lines)) or "")

    # -- traffic splitting (``TrafficSplitting``, ``TrafficWindows``): the endpoint handler's ---------

    def rollout_state(self, service: str) -> RolloutState | None:
        """The rollout state stored in the endpoint's tags, or None."""
        return self.endpoints.rollout_state(service)

    def save_rollout(self, service: str, state: RolloutState | None) -> None:
        """Store (or forget) the rollout state in the endpoint's tags."""
        self.endpoints.save_rollout(service, state)

    def request_rollout(self, service: str, action: str) -> bool:
        """Tag the endpoint with a person's ``abort`` or ``promote``."""
        return self.endpoints.request_rollout(service, action)

    def needs_candidate(self, resource: DesiredResource, ctx: ApplyContext) -> bool:
        """Whether the desired version needs a new deployment."""
        return self.endpoints.needs_candidate(resource, ctx)

    def start_candidate(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Create the candidate deployment at 0 % traffic."""
        self.endpoints.start_candidate(resource, ctx)

    def candidate_health(self, service: str) -> tuple[str, str]:
        """The candidate deployment's provisioning state, as the rollout reads it."""
        return self.endpoints.candidate_health(service)

    def set_weight(self, service: str, weight: int) -> None:
        """The endpoint's traffic table with ``weight`` percent on the candidate."""
        self.endpoints.set_weight(service, weight)

    def traffic(self, service: str) -> Traffic:
        """Each deployment's requests and 5xx since the rollout started."""
        return self.endpoints.traffic(service)

    def figures_since(self, service: str, since: float) -> tuple[VersionFigures, VersionFigures]:
        """``(candidate, live)`` figures from Azure Monitor since ``since``."""
        return self.endpoints.figures_since(service, since)

    def sample(self, service: str, body: bytes, candidate: bool) -> tuple[int, bytes]:
        """One scoring request to the candidate (or live) deployment alone."""
        return self.endpoints.sample(service, body, candidate)

    def promote_candidate(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Make the candidate deployment the live one."""
        self.endpoints.promote_candidate(resource, ctx)

    def promoted(self, service: str) -> bool:
        """Whether the live deployment is the only one left."""
        return self.endpoints.promoted(service)

    def discard_candidate(self, service: str) -> None:
        """All traffic on the live deployment, every other deployment deleted."""
        self.endpoints.discard_candidate(service)
