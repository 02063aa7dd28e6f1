"""The local backend: Azure ML's resources played out on this machine, one handler per kind.

Workspaces and clusters are records (a cluster's GPU capacity comes from its manifest and is mapped
onto the GPUs NVML finds, or those ``AMLOPS_GPU_INVENTORY`` lists: ``gpus.py``); environments resolve
to a Python interpreter (``environments.py``); models go into a content-addressed registry
(``models.py``, ``registries.py``); each web service is a set of scoring-host processes kept alive by
a per-service supervisor (``services.py``, ``supervising.py``) that outlives the controller.

State lives in SQLite under ``state_dir`` (``stores.py``), shared by the handlers through one
``LocalMachine``. ``read`` is a handful of SQL queries in one transaction plus local pid checks;
each handler observes its own kind from it.

Beside the protocol, this backend gives out service keys and logs (``ServiceAccess``) and runs
canaries (``TrafficSplitting``): a candidate version on a port of its own, a split file the live
replicas follow (``splitting.py``), and each version's replicas' own counters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from controller.backends.base import ApplyContext
from controller.backends.handling import HandlerBackend
from controller.backends.keys import KeyName, read_keys, regenerate, token_for
from controller.backends.local.clusters import ClusterHandler
from controller.backends.local.environments import EnvironmentHandler
from controller.backends.local.gpus import Gpu, GpuInventory
from controller.backends.local.layouts import candidate_of
from controller.backends.local.machines import LocalMachine, tail
from controller.backends.local.models import ModelHandler
from controller.backends.local.records import RecordedKind
from controller.backends.local.services import ServiceHandler
from controller.backends.local.splitting import post_once, replica_counters, write_split
from controller.backends.local.stores import LocalStore
from controller.backends.local.workspaces import WorkspaceHandler
from controller.structs.errors import PermanentError
from controller.structs.logformats import event_logger
from controller.structs.manifests import KIND_ORDER, Kind, WebserviceManifest
from controller.structs.rollouts import RolloutState, Traffic
from controller.structs.states import ActualResource, ActualState, DesiredResource, ResourceId
from controller.structs.tokens import AccessToken

log = event_logger(__name__)

LOCAL_HANDLERS: Final[Mapping[Kind, type[RecordedKind] | type[ServiceHandler]]] = {
    Kind.WORKSPACE: WorkspaceHandler,
    Kind.AKS_CLUSTER: ClusterHandler,
    Kind.ENVIRONMENT: EnvironmentHandler,
    Kind.MODEL: ModelHandler,
    Kind.WEBSERVICE: ServiceHandler,
}


class LocalBackend(HandlerBackend):
    """The ``Backend`` protocol on this machine. Safe to construct many times on one state dir."""

    name = "local"

    def __init__(
        self,
        state_dir: str | Path,
        controller_name: str = "amlops",
        *,
        ready_timeout: float = 600.0,
        gpus: GpuInventory | Sequence[Gpu] | None = None,
    ) -> None:
        self.machine = LocalMachine(state_dir, controller_name, ready_timeout, gpus)
        self.kinds = {kind: handler(self.machine) for kind, handler in LOCAL_HANDLERS.items()}
        self.handlers = self.kinds
        services = self.kinds[Kind.WEBSERVICE]
        assert isinstance(services, ServiceHandler)
        self.services = services

    # What tests and benchmarks look at: the state folder, its store, the GPUs this backend places on.
    @property
    def state_dir(self) -> Path:
        """The folder holding the state database, service folders, models and venvs."""
        return self.machine.state_dir

    @property
    def store(self) -> LocalStore:
        """The state database."""
        return self.machine.store

    @store.setter
    def store(self, store: LocalStore) -> None:
        self.machine.store = store

    @property
    def gpus(self) -> list[Gpu]:
        """The GPUs services are placed on."""
        return self.machine.gpus

    def read(self) -> ActualState:
        """Every recorded resource, with live replica counts and conditions for services: the store is
        read once, and each kind's handler observes its own records."""
        records = self.machine.records()
        found: dict[ResourceId, ActualResource] = {}
        for kind in KIND_ORDER:
            for resource in self.kinds[kind].observe(records):
                found[resource.id] = resource
        return ActualState(found)

    def close(self) -> None:
        """Forget our handles on supervisors; services keep running."""
        self.machine.reap_supervisors()
        self.machine.supervisors.clear()

    def _stop_service(self, name: str) -> None:
        """Stop a service's processes and forget its row (tests clean up with it)."""
        self.machine.stop_service(name)

    # -- extras for the CLI ------------------------------------------------------------------

    def wait_ready(self, service: str, timeout: float | None = None, ctx: ApplyContext | None = None) -> None:
        """Block until every replica of ``service``'s current generation is ready (``ServiceHandler.wait_ready``)."""
        self.services.wait_ready(service, timeout, ctx)

    def scoring_uri(self, service: str) -> str:
        """The service's scoring URI (every replica serves it through the one shared port)."""
        row = self.machine.row(service)
        return f"http://127.0.0.1:{row.port}/api/v1/service/{service}/score"

    def log_path(self, service: str, replica: int = 0) -> Path:
        """The log file of replica number ``replica`` (0-based) of ``service``."""
        return self.machine.log_path(service, replica)

    def tail_log(self, service: str, replica: int = 0, lines: int = 100) -> str:
        """The last ``lines`` lines of a replica's log ('' when it has not logged yet)."""
        return tail(self.log_path(service, replica), lines)

    def get_keys(self, service: str) -> tuple[str, str]:
        """``(primary, secondary)`` keys of a service with ``auth: key``."""
        path = self.machine.keys_path(service)
        if self.machine.auth_of(service) != "key" or not path.exists():
            raise PermanentError(f"service '{service}' has no keys (is auth 'key'?)", reason="NoKeys")
        return read_keys(path)

    def get_token(self, service: str) -> AccessToken:
        """A fresh access token for a service with ``auth: token`` (signed with its key, never stored)."""
        path = self.machine.token_key_path(service)
        if self.machine.auth_of(service) != "token" or not path.exists():
            raise PermanentError(f"service '{service}' issues no tokens (is auth 'token'?)", reason="NoTokens")
        return token_for(path, service)

    def regenerate_key(self, service: str, which: KeyName) -> None:
        """Replace the primary or secondary key; replicas pick it up without restarting."""
        self.get_keys(service)
        regenerate(self.machine.keys_path(service), which)
        log.info("service.key_regenerated", service=service, key=which)

    # -- traffic splitting (``TrafficSplitting``) -----------------------------------------------

    def rollout_state(self, service: str) -> RolloutState | None:
        """The stored state of ``service``'s rollout in progress, or None."""
        with self.store.snapshot() as conn:
            data = self.store.get_rollout(conn, service)
        return None if data is None else RolloutState.from_json(data)

    def save_rollout(self, service: str, state: RolloutState | None) -> None:
        """Store or forget ``service``'s rollout state."""
        self.services.save_rollout(service, state)

    def request_rollout(self, service: str, action: str) -> bool:
        """Record ``abort`` or ``promote`` for the rollout in progress."""
        with self.store.transaction() as conn:
            return self.store.request_rollout(conn, service, action)

    def needs_candidate(self, resource: DesiredResource, ctx: ApplyContext) -> bool:
        """Whether ``resource`` would start a new generation of a running service."""
        manifest = resource.manifest
        if not isinstance(manifest, WebserviceManifest):
            return False
        with self.store.snapshot() as conn:
            existing = self.store.get_service(conn, manifest.name)
        if existing is None:
            return False
        _launch, launch_hash, _cluster, _env = self.services.service_launch(resource, manifest, ctx)
        return launch_hash != existing.launch_hash

    def start_candidate(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Start the new version as the service's candidate, on a port of its own, with no traffic."""
        assert isinstance(resource.manifest, WebserviceManifest)
        self.services.apply_service(resource, resource.manifest, ctx, candidate=True, wait=False)

    def candidate_health(self, service: str) -> tuple[str, str]:
        """Whether the candidate is ``starting``, ``ready`` or ``failed``, and a line saying so."""
        view = self.machine.service_view(candidate_of(service))
        if view is None:
            return "failed", "the candidate version is not running"
        if view.stalled:
            return "failed", self.machine.failure_message(view)
        if view.converged:
            return "ready", f"{view.row.replicas}/{view.row.replicas} candidate replicas ready"
        if not view.supervisor_alive and self.machine.supervisors.get(view.row.name) is None:
            self.machine.ensure_supervisor(view.row.name, None)
        return "starting", f"{view.ready_current}/{view.row.replicas} candidate replicas ready"

    def set_weight(self, service: str, weight: int) -> None:
        """Hand ``weight`` percent of ``service``'s scoring requests to its candidate."""
        port = self.machine.row(candidate_of(service)).port if weight > 0 else 0
        write_split(self.state_dir, service, weight, port)
        log.info("traffic.split", service=service, weight=weight)

    def traffic(self, service: str) -> Traffic:
        """Per-replica counters of the live version and of the candidate."""
        with self.store.snapshot() as conn:
            live = self.store.replicas(conn, service)
            candidate = self.store.replicas(conn, candidate_of(service))
        return Traffic(replica_counters(live), replica_counters(candidate))

    def sample(self, service: str, body: bytes, candidate: bool) -> tuple[int, bytes]:
        """One scoring request to the candidate's (or the live version's) own port."""
        row = self.machine.row(candidate_of(service) if candidate else service)
        auth = self.machine.auth_of(service)
        authorization = None
        if auth == "key":
            authorization = f"Bearer {read_keys(self.machine.keys_path(service))[0]}"
        elif auth == "token":
            authorization = f"Bearer {token_for(self.machine.token_key_path(service), service).access_token}"
        with self.store.snapshot() as conn:
            recorded = self.store.get_resource(conn, Kind.WEBSERVICE.value, service)
        timeout_s = (recorded or {}).get("spec", {}).get("scoringTimeoutMs", 60000) / 1000.0 + 5.0
        return post_once(row.port, f"/api/v1/service/{service}/score", body, authorization, timeout_s)

    def promote_candidate(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Roll the live replicas to the new version; meanwhile the split keeps sending traffic to the candidate."""
        assert isinstance(resource.manifest, WebserviceManifest)
        self.services.apply_service(resource, resource.manifest, ctx, wait=False)

    def promoted(self, service: str) -> bool:
        """Whether every live replica runs the promoted version."""
        view = self.machine.service_view(service)
        if view is not None and view.stalled:
            raise PermanentError(self.machine.failure_message(view), reason="ReplicaFailed")
        return view is not None and view.converged

    def discard_candidate(self, service: str) -> None:
        """All traffic back to the live replicas, then the candidate stopped (its requests in flight finish)."""
        self.services.discard_candidate(service)
