"""The local backend: Azure ML's resources played out on this machine.

Workspaces and clusters are records (a cluster's GPU capacity comes from its manifest and is mapped
onto the GPUs NVML finds, or those ``AMLOPS_GPU_INVENTORY`` lists: ``gpus.py``); environments resolve to a Python interpreter; models go into
a content-addressed registry; each web service is a set of scoring-host processes kept alive by a
per-service supervisor (``supervising.py``) that outlives the controller.

State lives in SQLite under ``state_dir`` (``stores.py``). ``create`` and ``update`` of a
service return only once every replica of the new generation is ready (``wait_ready``), reporting
progress through ``ctx.progress``; ``read`` is a handful of SQL queries plus local pid checks.

A service with ``autoscale`` (or with neither ``replicas`` nor ``autoscale``: Azure's default
autoscaler) gets its policy written into its row; its supervisor then moves the row's replica
count between min and max on the load its replicas report, and ``read`` shows the count and the
utilization under ``details["autoscale"]``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from controller.backends.base import ApplyContext
from controller.backends.keys import KeyName, ensure_keys, ensure_token_key, read_keys, regenerate, token_for
from controller.backends.local.environments import Resolution, current_interpreter, resolve_environment
from controller.backends.local.gpus import (
    Gpu,
    GpuInventory,
    allocate_pool,
    allocations,
    discover_gpus,
    pending_gpus,
)
from controller.backends.local.registries import content_hash, delete_model, register_model, resolve_model
from controller.backends.local.splitting import post_once, read_split, replica_counters, write_split
from controller.backends.local.stores import LocalStore, ReplicaRow, ServiceRow
from controller.backends.local.supervising import (
    FAILURE_LIMIT,
    bind_listener,
    candidate_of,
    database_path,
    open_log,
    process_alive,
    read_status,
    service_dir,
    socket_dir,
    start_time,
    status_count,
    utilization,
)
from controller.backends.local.supervising import log_path as replica_log_path
from controller.backends.local.variables import child_environment
from controller.structs.errors import PermanentError, TransientError
from controller.structs.manifests import (
    AksClusterManifest,
    Autoscale,
    EnvironmentManifest,
    Kind,
    ModelManifest,
    WebserviceManifest,
    WebserviceSpec,
)
from controller.structs.plans import Change
from controller.structs.rollouts import ROLLOUT_DIGEST_PREFIX, SPLIT_POLL_S, RolloutState, Traffic
from controller.structs.states import (
    DIGEST_TAG,
    ActualResource,
    ActualState,
    Condition,
    ConditionType,
    DesiredResource,
    ResourceId,
    ownership_tags,
)
from controller.structs.tokens import AccessToken

log = logging.getLogger(__name__)

STOP_GRACE_S = 20.0
"""How long a stopped service's processes get to drain: longer than a replica's own limit for its
``--workers`` (``controller.scoring.forking.STOP_LIMIT_S``, 15 s), so it can reap them first."""
_REPO_ROOT = str(Path(__file__).resolve().parents[3])

LOCAL_REPLACE_FIELDS: Mapping[Kind, frozenset[str]] = {
    # The local backend's one declaration of what cannot change in place, per kind.
    Kind.WORKSPACE: frozenset({"backend"}),
    Kind.AKS_CLUSTER: frozenset({"vmSize", "location", "clusterPurpose", "attach"}),
    Kind.ENVIRONMENT: frozenset(),
    Kind.MODEL: frozenset(),
    Kind.WEBSERVICE: frozenset({"cluster"}),
}


@dataclass(frozen=True)
class ReplicaView:
    """One live replica as ``read`` and ``wait_ready`` see it."""

    row: ReplicaRow
    state: str
    error: str | None
    in_flight: int | None = None
    capacity: int | None = None


@dataclass(frozen=True)
class ServiceView:
    """A service's recorded row plus what is alive right now."""

    row: ServiceRow
    supervisor_alive: bool
    replicas: tuple[ReplicaView, ...]

    @property
    def ready_current(self) -> int:
        """Distinct desired slots with a ready replica of the current generation."""
        return len({r.row.slot for r in self.replicas
                    if r.row.generation == self.row.generation and r.state == "ready" and r.row.slot < self.row.replicas})

    @property
    def stale(self) -> int:
        """Live replicas that must go: an older generation, or a slot beyond the desired count."""
        return sum(1 for r in self.replicas if r.row.generation != self.row.generation or r.row.slot >= self.row.replicas)

    @property
    def live_slots(self) -> int:
        """Distinct slots with a live replica (what ``read`` reports as ``replicas``)."""
        return len({r.row.slot for r in self.replicas})

    @property
    def stalled(self) -> bool:
        """Whether replicas of the current generation keep failing to start."""
        return self.row.failures >= FAILURE_LIMIT and self.row.failure_generation == self.row.generation

    @property
    def autoscale(self) -> dict[str, Any] | None:
        """The autoscale policy the supervisor follows (``min``, ``max``, ``target``, ``refreshSeconds``)."""
        policy = self.row.launch.get("autoscale")
        return policy if isinstance(policy, dict) else None

    @property
    def utilization(self) -> float | None:
        """In-flight requests over capacity of the ready replicas, as their status files say."""
        return utilization([(r.in_flight, r.capacity) for r in self.replicas
                            if r.state == "ready" and r.in_flight is not None and r.capacity])

    @property
    def converged(self) -> bool:
        """Every desired replica is ready at the current generation and nothing old is left."""
        return self.supervisor_alive and self.ready_current == self.row.replicas and self.stale == 0


def _tags(resource: DesiredResource, ctx: ApplyContext) -> dict[str, str]:
    return ownership_tags(ctx.controller_name, ctx.source, ctx.revision, resource)


def _condition(type_: str, status: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def _place_autoscaled(place: Callable[[int], tuple[str, ...]], spec: WebserviceSpec) -> tuple[tuple[str, ...], int]:
    """A GPU pool for as many replicas as the service may scale to, and that count.

    The validator sums ``maxReplicas × gpu`` against the cluster's declared capacity; fewer
    physical GPUs (or other services' holdings) can still leave less, so the pool is for the
    largest count from max down to min that fits, and placement fails only when min does not.
    """
    low, high = spec.min_replicas(), spec.max_replicas()
    if spec.resources.gpu == 0:
        return (), high
    for count in range(high, low, -1):
        with contextlib.suppress(PermanentError):
            return place(count), count
    return place(low), low


def memory_limit_bytes(spec: WebserviceSpec) -> int:
    """The memory a replica may use before it is killed: ``memoryGbLimit``, else ``memoryGb`` (Azure's default)."""
    limit = spec.resources.memoryGbLimit if spec.resources.memoryGbLimit is not None else spec.resources.memoryGb
    return int(limit * 1024**3)


def _autoscale_policy(spec: WebserviceSpec, held: int) -> dict[str, int] | None:
    """What the supervisor autoscales by, or None for a fixed ``replicas`` count.

    No ``autoscale`` block and no ``replicas`` means Azure's default autoscaler (1–10 replicas,
    70 % target, 1 s refresh). ``max`` is capped to ``held``, the replicas whose GPUs the pool holds.
    """
    if spec.replicas is not None:
        return None
    auto = spec.autoscale or Autoscale()
    return {"min": auto.minReplicas, "max": max(auto.minReplicas, min(auto.maxReplicas, held)),
            "target": auto.targetUtilization, "refreshSeconds": auto.refreshSeconds}


def _manifest_dir(resource: DesiredResource, ctx: ApplyContext) -> Path:
    # Relative paths in a manifest resolve against the folder of the file that declares it.
    return Path(ctx.root) / Path(resource.origin.file).parent


class LocalBackend:
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
        self.state_dir = Path(state_dir).absolute()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.controller_name = controller_name
        self.ready_timeout = ready_timeout
        self.store = LocalStore(database_path(self.state_dir))
        if gpus is None:
            gpus = discover_gpus()
        elif not isinstance(gpus, GpuInventory):
            gpus = GpuInventory(tuple(gpus), "given", "" if gpus else "given an empty GPU list")
        self.inventory = gpus
        self.gpus: list[Gpu] = list(gpus.gpus)
        self._supervisors: dict[str, subprocess.Popen[bytes]] = {}

    # -- the protocol --------------------------------------------------------------------------

    def read(self) -> ActualState:
        """Every recorded resource, with live replica counts and conditions for services."""
        self._reap_supervisors()
        with self.store.snapshot() as conn:
            records = self.store.all_resources(conn)
            services = {s.name: s for s in self.store.all_services(conn)}
            replicas = self.store.replicas(conn)
            rollouts = self.store.all_rollouts(conn)
        by_service: dict[str, list[ReplicaRow]] = {}
        for rep in replicas:
            by_service.setdefault(rep.service, []).append(rep)
        resources: dict[ResourceId, ActualResource] = {}
        for kind_text, name, rec in records:
            try:
                kind = Kind(kind_text)
            except ValueError:
                continue
            rid = ResourceId(kind, name)
            spec, details = dict(rec["spec"]), dict(rec["details"])
            conditions = [Condition(**c) for c in rec["conditions"]]
            row = services.get(name) if kind is Kind.WEBSERVICE else None
            if row is not None:
                view = self._view(row, by_service.get(name, []))
                spec, live_conditions, live_details = self._observe(view, spec)
                conditions = [c for c in conditions if c.type not in {c2.type for c2 in live_conditions}] + live_conditions
                details.update(live_details)
            tags = dict(rec["tags"])
            if row is not None and (name in rollouts or candidate_of(name) in services):
                tags, conditions = self._observe_rollout(name, rollouts.get(name), tags, conditions, details)
            resources[rid] = ActualResource(rid, spec, tags, tuple(conditions), details)
        return ActualState(resources)

    def _observe_rollout(
        self, name: str, stored: dict[str, Any] | None, tags: dict[str, str], conditions: list[Condition],
        details: dict[str, Any],
    ) -> tuple[dict[str, str], list[Condition]]:
        """A service whose rollout is under way (or whose candidate nobody tracks) is not at any desired
        digest: the planner keeps planning its update, so every pass drives or cleans up the rollout."""
        split = read_split(self.state_dir, name)
        if stored is None:
            details["rollout"] = {"phase": "untracked", "weight": split.weight if split else 0}
            tags[DIGEST_TAG] = ROLLOUT_DIGEST_PREFIX + "untracked"
            message = "a candidate version runs without a rollout: the next pass removes it"
        else:
            state = RolloutState.from_json(stored)
            details["rollout"] = {**state.summary(), "splitWeight": split.weight if split else 0}
            tags[DIGEST_TAG] = ROLLOUT_DIGEST_PREFIX + state.target
            message = state.message or f"{state.strategy} {state.phase}"
        conditions = [c for c in conditions if c.type != ConditionType.PROGRESSING]
        conditions.append(Condition(ConditionType.PROGRESSING, True, "RolloutInProgress", message))
        return tags, conditions

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Create ``resource`` (idempotent: an existing record is brought to the spec)."""
        self._apply(resource, ctx)

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> None:
        """Bring ``resource`` to its spec: services scale in place or roll one replica at a time.

        A candidate version left by a rollout nobody drives any more goes first: traffic returns to
        the live replicas before they change.
        """
        if resource.id.kind is Kind.WEBSERVICE:
            self.discard_candidate(resource.id.name)
            self.save_rollout(resource.id.name, None)
        self._apply(resource, ctx)

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Delete ``id``: services stop their processes and free port and GPUs. Missing is fine."""
        if id.kind is Kind.WEBSERVICE:
            self._stop_service(candidate_of(id.name))
            self._stop_service(id.name)
            self.save_rollout(id.name, None)
        elif id.kind is Kind.AKS_CLUSTER:
            with self.store.snapshot() as conn:
                users = [s.name for s in self.store.all_services(conn) if s.cluster == id.name]
            if users:
                raise PermanentError(
                    f"cluster '{id.name}' still runs services: {', '.join(sorted(users))}", reason="InUse"
                )
        elif id.kind is Kind.MODEL:
            delete_model(self.store, self.state_dir / "models", id.name)
        with self.store.transaction() as conn:
            self.store.delete_resource(conn, id.kind.value, id.name)
        log.info("resource_deleted kind=%s name=%s", id.kind.value, id.name)

    def replace_fields(self, kind: Kind) -> frozenset[str]:
        """Spec fields of ``kind`` that cannot change in place."""
        return LOCAL_REPLACE_FIELDS.get(kind, frozenset())

    def close(self) -> None:
        """Forget our handles on supervisors; services keep running."""
        self._reap_supervisors()
        self._supervisors.clear()

    # -- extras for the CLI ------------------------------------------------------------------

    def wait_ready(self, service: str, timeout: float | None = None, ctx: ApplyContext | None = None) -> None:
        """Block until every replica of ``service``'s current generation is ready.

        Raises ``PermanentError(reason="ReplicaFailed")`` when replicas keep failing to start,
        ``TransientError`` when ``timeout`` (default ``ready_timeout``) passes first.
        """
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        last = ""
        self._reap_supervisors()
        supervisor = self._supervisors.get(service)  # one we started (by this apply) and still running
        while True:
            view = self._service_view(service)
            if view is None:
                raise PermanentError(f"service '{service}' does not exist", reason="NotFound")
            if view.converged:
                if ctx is not None:
                    ctx.progress(f"{service}: {view.row.replicas}/{view.row.replicas} replicas ready", 1.0)
                return
            if view.stalled:
                raise PermanentError(self._failure_message(view), reason="ReplicaFailed")
            if not view.supervisor_alive:
                if supervisor is None:
                    supervisor = self._ensure_supervisor(service, None)  # at most one start per call
                elif supervisor.poll() is not None:
                    tail = self._tail(service_dir(self.state_dir, service) / "supervisor.log", 10)
                    raise PermanentError(
                        f"the supervisor of service '{service}' exited at start (code {supervisor.returncode})"
                        + (f"\nlast log lines:\n{tail}" if tail else ""), reason="SupervisorFailed")
            message = f"{service}: {view.ready_current}/{view.row.replicas} replicas ready"
            if ctx is not None and message != last:
                ctx.progress(message, view.ready_current / max(view.row.replicas, 1))
                last = message
            if time.monotonic() > deadline:
                raise TransientError(f"service '{service}' not ready in time ({message})", retry_after=10)
            time.sleep(0.2)

    def scoring_uri(self, service: str) -> str:
        """The service's scoring URI (every replica serves it through the one shared port)."""
        row = self._row(service)
        return f"http://127.0.0.1:{row.port}/api/v1/service/{service}/score"

    def log_path(self, service: str, replica: int = 0) -> Path:
        """The log file of replica number ``replica`` (0-based) of ``service``."""
        return replica_log_path(self.state_dir, service, replica)

    def tail_log(self, service: str, replica: int = 0, lines: int = 100) -> str:
        """The last ``lines`` lines of a replica's log ('' when it has not logged yet)."""
        return self._tail(self.log_path(service, replica), lines)

    @staticmethod
    def _tail(path: Path, lines: int) -> str:
        try:
            with path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 256 * 1024))
                data = f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(data.splitlines()[-lines:])

    def get_keys(self, service: str) -> tuple[str, str]:
        """``(primary, secondary)`` keys of a service with ``auth: key``."""
        path = self._keys_path(service)
        if self._auth_of(service) != "key" or not path.exists():
            raise PermanentError(f"service '{service}' has no keys (is auth 'key'?)", reason="NoKeys")
        return read_keys(path)

    def _auth_of(self, service: str) -> str | None:
        """The ``auth`` mode the service was last applied with (a switched service keeps its old
        key files until its replicas have rolled; only the current mode's secrets are given out)."""
        with self.store.snapshot() as conn:
            recorded = self.store.get_resource(conn, Kind.WEBSERVICE.value, service)
        return None if recorded is None else str(recorded["spec"].get("auth", "key"))

    def get_token(self, service: str) -> AccessToken:
        """A fresh access token for a service with ``auth: token`` (signed with its key, never stored)."""
        path = self._token_key_path(service)
        if self._auth_of(service) != "token" or not path.exists():
            raise PermanentError(f"service '{service}' issues no tokens (is auth 'token'?)", reason="NoTokens")
        return token_for(path, service)

    def regenerate_key(self, service: str, which: KeyName) -> None:
        """Replace the primary or secondary key; replicas pick it up without restarting."""
        self.get_keys(service)
        regenerate(self._keys_path(service), which)
        log.info("service_key_regenerated service=%s key=%s", service, which)

    # -- traffic splitting (``TrafficSplitting``) -----------------------------------------------

    def rollout_state(self, service: str) -> RolloutState | None:
        """The stored state of ``service``'s rollout in progress, or None."""
        with self.store.snapshot() as conn:
            data = self.store.get_rollout(conn, service)
        return None if data is None else RolloutState.from_json(data)

    def save_rollout(self, service: str, state: RolloutState | None) -> None:
        """Store or forget ``service``'s rollout state."""
        with self.store.transaction() as conn:
            self.store.put_rollout(conn, service, None if state is None else state.to_json())

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
        _launch, launch_hash, _cluster, _env = self._service_launch(resource, manifest, ctx)
        return launch_hash != existing.launch_hash

    def start_candidate(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Start the new version as the service's candidate, on a port of its own, with no traffic."""
        assert isinstance(resource.manifest, WebserviceManifest)
        self._apply_service(resource, resource.manifest, ctx, candidate=True, wait=False)

    def candidate_health(self, service: str) -> tuple[str, str]:
        """Whether the candidate is ``starting``, ``ready`` or ``failed``, and a line saying so."""
        view = self._service_view(candidate_of(service))
        if view is None:
            return "failed", "the candidate version is not running"
        if view.stalled:
            return "failed", self._failure_message(view)
        if view.converged:
            return "ready", f"{view.row.replicas}/{view.row.replicas} candidate replicas ready"
        if not view.supervisor_alive and self._supervisors.get(view.row.name) is None:
            self._ensure_supervisor(view.row.name, None)
        return "starting", f"{view.ready_current}/{view.row.replicas} candidate replicas ready"

    def set_weight(self, service: str, weight: int) -> None:
        """Hand ``weight`` percent of ``service``'s scoring requests to its candidate."""
        port = self._row(candidate_of(service)).port if weight > 0 else 0
        write_split(self.state_dir, service, weight, port)
        log.info("traffic_split service=%s weight=%d", service, weight)

    def traffic(self, service: str) -> Traffic:
        """Per-replica counters of the live version and of the candidate."""
        with self.store.snapshot() as conn:
            live = self.store.replicas(conn, service)
            candidate = self.store.replicas(conn, candidate_of(service))
        return Traffic(replica_counters(live), replica_counters(candidate))

    def sample(self, service: str, body: bytes, candidate: bool) -> tuple[int, bytes]:
        """One scoring request to the candidate's (or the live version's) own port."""
        row = self._row(candidate_of(service) if candidate else service)
        auth = self._auth_of(service)
        authorization = None
        if auth == "key":
            authorization = f"Bearer {read_keys(self._keys_path(service))[0]}"
        elif auth == "token":
            authorization = f"Bearer {token_for(self._token_key_path(service), service).access_token}"
        with self.store.snapshot() as conn:
            recorded = self.store.get_resource(conn, Kind.WEBSERVICE.value, service)
        timeout_s = (recorded or {}).get("spec", {}).get("scoringTimeoutMs", 60000) / 1000.0 + 5.0
        return post_once(row.port, f"/api/v1/service/{service}/score", body, authorization, timeout_s)

    def promote_candidate(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Roll the live replicas to the new version; meanwhile the split keeps sending traffic to the candidate."""
        assert isinstance(resource.manifest, WebserviceManifest)
        self._apply_service(resource, resource.manifest, ctx, wait=False)

    def promoted(self, service: str) -> bool:
        """Whether every live replica runs the promoted version."""
        view = self._service_view(service)
        if view is not None and view.stalled:
            raise PermanentError(self._failure_message(view), reason="ReplicaFailed")
        return view is not None and view.converged

    def discard_candidate(self, service: str) -> None:
        """All traffic back to the live replicas, then the candidate stopped (its requests in flight finish)."""
        write_split(self.state_dir, service, 0, 0)
        with self.store.snapshot() as conn:
            running = self.store.get_service(conn, candidate_of(service)) is not None
        if running:
            time.sleep(3 * SPLIT_POLL_S)  # every replica has seen the split go before the candidate drains
            self._stop_service(candidate_of(service))
            log.info("candidate_discarded service=%s", service)

    # -- applying ------------------------------------------------------------------------------

    def _apply(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        manifest = resource.manifest
        spec = manifest.spec.model_dump(mode="json", exclude_unset=False)
        conditions = [_condition(ConditionType.READY, True, "Succeeded")]
        details: dict[str, Any] = {}
        if isinstance(manifest, WebserviceManifest):
            self._apply_service(resource, manifest, ctx)
            return
        if isinstance(manifest, AksClusterManifest):
            capacity = manifest.spec.gpu_capacity()
            details = {"gpuCapacity": capacity, "physicalGpus": [g.to_json() for g in self.gpus],
                       "gpuInventory": {k: v for k, v in self.inventory.to_json().items() if k != "gpus"}}
            if capacity and not self.gpus:
                conditions.append(_condition(ConditionType.GPU_UNAVAILABLE, True, "NoPhysicalGpu",
                                             f"cluster declares {capacity} GPUs but this machine has none "
                                             f"({self.inventory.reason}); replicas run on CPU"))
        elif isinstance(manifest, EnvironmentManifest):
            resolution = resolve_environment(manifest.spec, _manifest_dir(resource, ctx), self.state_dir / "envs", ctx.progress)
            details = resolution.to_json()
            if resolution.substitutions:
                conditions.append(_condition(ConditionType.SUBSTITUTED, True, "Substituted",
                                             "; ".join(s.message() for s in resolution.substitutions)))
        elif isinstance(manifest, ModelManifest):
            source = _manifest_dir(resource, ctx) / manifest.spec.path
            mv = register_model(self.store, self.state_dir / "models", manifest.name, source, manifest.spec.tags)
            details = {"version": mv.version, "sha256": mv.sha256, "path": mv.path, "createdAt": mv.created_at}
        with self.store.transaction() as conn:
            self.store.put_resource(conn, manifest.kind, manifest.name, spec, _tags(resource, ctx), conditions, details)
        log.info("resource_applied kind=%s name=%s", manifest.kind, manifest.name)

    def _dependency(self, kind: Kind, name: str, ctx: ApplyContext, by: str) -> dict[str, Any]:
        with self.store.snapshot() as conn:
            rec = self.store.get_resource(conn, kind.value, name)
        if rec is not None:
            return rec
        if ctx.desired.get(kind, name) is not None:
            raise TransientError(f"{by} waits for {kind.value} '{name}' to be created", retry_after=2)
        raise PermanentError(f"{by} refers to {kind.value} '{name}', which does not exist", reason=f"{kind.value}NotFound")

    def _service_launch(self, resource: DesiredResource, manifest: WebserviceManifest,
                        ctx: ApplyContext) -> tuple[dict[str, Any], str, dict[str, Any], list[dict[str, Any]]]:
        """A service's launch (command line, environment, folder), its hash, cluster record and
        environment conditions."""
        name, spec = manifest.name, manifest.spec
        by = f"Webservice '{name}'"
        cluster = self._dependency(Kind.AKS_CLUSTER, spec.cluster, ctx, by)
        if spec.environment is not None:
            resolution = Resolution.from_json(self._dependency(Kind.ENVIRONMENT, spec.environment, ctx, by)["details"])
            env_conditions = self._dependency(Kind.ENVIRONMENT, spec.environment, ctx, by)["conditions"]
        else:
            resolution, env_conditions = current_interpreter(), []
        models = [resolve_model(self.store, ref.name, ref.version) for ref in spec.models]
        sdir = service_dir(self.state_dir, name)
        sdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        launch = self._launch(name, spec, resource, ctx, resolution, models, sdir)
        launch_hash = hashlib.sha256(json.dumps([launch, spec.resources.model_dump(mode="json")], sort_keys=True).encode()).hexdigest()
        launch["details"] = {"modelVersions": [f"{m.name}:{m.version}" for m in models], "python": resolution.python,
                             "tensorflowCompat": resolution.tensorflow_compat}
        return launch, launch_hash, cluster, env_conditions

    def _apply_service(self, resource: DesiredResource, manifest: WebserviceManifest, ctx: ApplyContext,
                       *, candidate: bool = False, wait: bool = True) -> None:
        """Write the service's row (or, with ``candidate``, its candidate version's) and start its supervisor.

        A candidate is a service of its own (``candidate_of(name)``) on a port of its own, with a
        fixed replica count and no resource record: only the rollout that started it knows it.
        """
        name, spec = manifest.name, manifest.spec
        launch, launch_hash, cluster, env_conditions = self._service_launch(resource, manifest, ctx)
        details: dict[str, Any] = launch.pop("details")
        if spec.auth == "key":
            ensure_keys(self._keys_path(name))
        elif spec.auth == "token":
            ensure_token_key(self._token_key_path(name))
        row_name = candidate_of(name) if candidate else name
        service_dir(self.state_dir, row_name).mkdir(parents=True, exist_ok=True, mode=0o700)

        conditions = [c for c in env_conditions if c["type"] == ConditionType.SUBSTITUTED]
        if spec.resources.gpu and not self.gpus:
            conditions.append(_condition(ConditionType.GPU_UNAVAILABLE, True, "NoPhysicalGpu",
                                         f"each replica requests {spec.resources.gpu} GPU but this machine has none "
                                         f"({self.inventory.reason}); replicas run on CPU (CUDA_VISIBLE_DEVICES='')"))

        listener = None
        with self.store.snapshot() as conn:
            existing = self.store.get_service(conn, row_name)
        if existing is None:
            listener = bind_listener(0)  # the kernel picks a free port; the supervisor inherits the socket
        try:
            with self.store.transaction() as conn:
                existing = self.store.get_service(conn, row_name)
                # The candidate's pool may take the live version's surge spare (its roll goes stop-first).
                others = allocations(self.store.all_services(conn), self.store.replicas(conn), but=row_name)
                pending = pending_gpus(ctx.desired, name, spec.cluster, others, physical=bool(self.gpus))
                cspec = cluster["spec"]
                # Ids our live replicas run on first, so a re-placement keeps them where they are.
                current = [g for r in self.store.replicas(conn, row_name) for g in r.gpus]
                current += list(existing.gpu_pool) if existing else []

                def place(replicas: int) -> tuple[str, ...]:
                    return allocate_pool(
                        service=row_name, cluster=spec.cluster, capacity=int(cluster["details"].get("gpuCapacity", 0)),
                        replicas=replicas, gpus_per_replica=spec.resources.gpu, physical=self.gpus,
                        others=others, current=current, gpus_per_node=cspec.get("gpusPerNode"), pending=pending,
                    )

                if candidate:
                    # The candidate is judged on a slice of traffic: the minimum count serves it.
                    policy, replicas = None, spec.min_replicas()
                    pool = place(replicas)
                else:
                    pool, held = _place_autoscaled(place, spec)
                    policy = _autoscale_policy(spec, held)
                    replicas = spec.min_replicas()
                for other, allocation in others.items():
                    if set(allocation.ids) & set(pool):  # a spare we were given: the other roll goes stop-first
                        self.store.set_gpu_pool(conn, other, tuple(i for i in allocation.ids if i not in pool))
                        log.info("gpu_spare_reclaimed service=%s from=%s", row_name, other)
                if policy is not None and existing is not None:
                    # An apply keeps the count the autoscaler chose (within the new bounds): a roll
                    # under load must not first shrink the service to its minimum.
                    replicas = max(policy["min"], min(policy["max"], existing.replicas))
                port = existing.port if existing else listener.getsockname()[1]  # type: ignore[union-attr]
                generation = 1
                if existing is not None:
                    generation = existing.generation + (existing.launch_hash != launch_hash)
                row = ServiceRow(
                    name=row_name, cluster=spec.cluster, port=port, generation=generation, launch_hash=launch_hash,
                    launch={**launch, "autoscale": policy, "memoryLimitBytes": memory_limit_bytes(spec)},
                    replicas=replicas,
                    gpus_per_replica=spec.resources.gpu, gpu_pool=pool,
                    supervisor_pid=existing.supervisor_pid if existing else None,
                    supervisor_started=existing.supervisor_started if existing else None,
                    failures=existing.failures if existing else 0,
                    failure_generation=existing.failure_generation if existing else 0,
                    last_error=existing.last_error if existing else None,
                )
                self.store.put_service(conn, row)
                details["port"], details["gpus"] = port, list(pool)
                if not candidate:
                    self.store.put_resource(conn, Kind.WEBSERVICE.value, name, manifest.spec.model_dump(mode="json"),
                                            _tags(resource, ctx), conditions, details)
            log.info("service_applied name=%s generation=%d replicas=%d port=%d", row_name, generation, row.replicas, port)
            self._ensure_supervisor(row_name, listener)
        finally:
            if listener is not None:
                listener.close()
        if wait:
            self.wait_ready(row_name, ctx=ctx)

    def _launch(
        self, name: str, spec: WebserviceSpec, resource: DesiredResource, ctx: ApplyContext,
        resolution: Resolution, models: list[Any], sdir: Path,
    ) -> dict[str, Any]:
        """The replica command line (minus per-replica flags), environment and working folder."""
        if len(models) == 1:
            model_dir = Path(models[0].path)
        else:
            # Several models: AZUREML_MODEL_DIR is a root holding <name>/<version>/ for each.
            key = hashlib.sha256("|".join(f"{m.name}:{m.version}" for m in models).encode()).hexdigest()[:12]
            root = sdir / "models" / key
            for m in models:
                link = root / m.name / str(m.version)
                if not link.exists():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(m.path, link, target_is_directory=True)
            model_dir = root
        argv = [resolution.python, "-m", "controller.scoring", "--model-dir", str(model_dir),
                "--service-name", name, "--auth", spec.auth,
                "--scoring-timeout-ms", str(spec.scoringTimeoutMs),
                "--max-concurrent", str(spec.maxConcurrentRequestsPerReplica),
                "--max-queue-wait-ms", str(spec.maxQueueWaitMs),
                "--tensorflow-compat", resolution.tensorflow_compat, "--log-format", "json",
                # One /metrics for all replicas, each series labelled with its replica and what it serves.
                "--metrics-dir", str(sdir / "metrics"), "--version-label", ",".join(f"{m.name}:{m.version}" for m in models)]
        if spec.auth == "key":
            argv += ["--keys-file", str(self._keys_path(name))]
        elif spec.auth == "token":
            argv += ["--keys-file", str(self._token_key_path(name))]
        cwd = str(sdir)
        if spec.entryScript is not None:
            src = self._copy_sources(resource, spec, ctx, sdir)
            argv += ["--entry-script", spec.entryScript if spec.sourceDirectory else Path(spec.entryScript).name,
                     "--source-dir", str(src)]
            cwd = str(src)
        env = {**resolution.environment_variables, "AZUREML_MODEL_DIR": str(model_dir),
               "PYTHONPATH": os.pathsep.join([_REPO_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])}
        return {"argv": argv, "env": env, "cwd": cwd}

    def _copy_sources(self, resource: DesiredResource, spec: WebserviceSpec, ctx: ApplyContext, sdir: Path) -> Path:
        """A content-addressed copy of the source folder, so replicas never see a half-updated checkout."""
        base = _manifest_dir(resource, ctx)
        assert spec.entryScript is not None
        source = base / spec.sourceDirectory if spec.sourceDirectory else (base / spec.entryScript)
        if not source.exists():
            raise PermanentError(f"entry script source {spec.sourceDirectory or spec.entryScript!r} does not exist",
                                 reason="SourceNotFound")
        if spec.sourceDirectory and not (source / spec.entryScript).is_file():
            raise PermanentError(f"entry script {spec.entryScript!r} is not in {spec.sourceDirectory!r}", reason="SourceNotFound")
        target = sdir / "src" / content_hash(source)[:16]
        if not target.exists():
            staging = target.with_name(target.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            if source.is_dir():
                shutil.copytree(source, staging, ignore=shutil.ignore_patterns(".*", "__pycache__"))
            else:
                staging.mkdir(parents=True)
                shutil.copy2(source, staging / source.name)
            staging.rename(target)
        return target

    # -- processes -------------------------------------------------------------------------------

    def _ensure_supervisor(self, name: str, listener: Any) -> subprocess.Popen[bytes] | None:
        """Start the service's supervisor unless a live one is recorded; the new process, if any."""
        row = self._row(name)
        if process_alive(row.supervisor_pid, row.supervisor_started):
            return None
        # -c, not -m: the package imports this module, and runpy would warn so in plain text first
        # on a log whose every line is JSON.
        argv = [sys.executable, "-c", "from controller.backends.local.supervising import main; raise SystemExit(main())",
                "--state-dir", str(self.state_dir), "--service", name]
        pass_fds: tuple[int, ...] = ()
        if listener is not None:
            argv += ["--listen-fd", str(listener.fileno())]
            pass_fds = (listener.fileno(),)
        env = child_environment(os.environ, {"PYTHONPATH": os.pathsep.join(
            [_REPO_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])})
        sdir = service_dir(self.state_dir, name)
        with open_log(sdir / "supervisor.log") as out:
            popen = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     pass_fds=pass_fds, start_new_session=True, cwd=str(sdir))
        self._supervisors[name] = popen
        try:
            started = start_time(popen.pid)
        except psutil.NoSuchProcess:
            started = None
        with self.store.transaction() as conn:
            self.store.set_supervisor(conn, name, popen.pid, started)
        log.info("supervisor_spawned service=%s pid=%d", name, popen.pid)
        return popen

    def _stop_service(self, name: str) -> None:
        """Stop the supervisor first (so nothing restarts), then every replica; forget the service."""
        with self.store.snapshot() as conn:
            row = self.store.get_service(conn, name)
            recorded = self.store.replicas(conn, name)
        if row is None:
            return
        victims: list[psutil.Process] = []
        if process_alive(row.supervisor_pid, row.supervisor_started):
            assert row.supervisor_pid is not None
            sup = psutil.Process(row.supervisor_pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                sup.suspend()  # frozen, it cannot start a replica between our listing and its death
                victims.extend(sup.children(recursive=True))
                sup.kill()
                with contextlib.suppress(psutil.TimeoutExpired):
                    sup.wait(5)
        for rep in recorded:
            # An adopted replica is no child of the supervisor: collect it and its --workers here.
            if process_alive(rep.pid, rep.started):
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc = psutil.Process(rep.pid)
                    known = {v.pid for v in victims}
                    victims.extend(p for p in [proc, *proc.children(recursive=True)] if p.pid not in known)
        for proc in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGTERM)
        _gone, alive = psutil.wait_procs(victims, timeout=STOP_GRACE_S)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        self._reap_supervisors()
        with self.store.transaction() as conn:
            self.store.delete_service(conn, name)
        for rep in recorded:
            with contextlib.suppress(OSError):
                os.unlink(rep.fd_socket)
        with contextlib.suppress(OSError):
            socket_dir(self.state_dir).rmdir()  # only when no other service still has sockets there
        shutil.rmtree(service_dir(self.state_dir, name), ignore_errors=True)
        log.info("service_stopped name=%s processes=%d", name, len(victims))

    def _reap_supervisors(self) -> None:
        # Supervisors we spawned are our children: collect their exit status so none stays a zombie.
        for name, popen in list(self._supervisors.items()):
            if popen.poll() is not None:
                del self._supervisors[name]

    # -- observing -----------------------------------------------------------------------------

    def _row(self, service: str) -> ServiceRow:
        with self.store.snapshot() as conn:
            row = self.store.get_service(conn, service)
        if row is None:
            raise PermanentError(f"service '{service}' does not exist", reason="NotFound")
        return row

    def _keys_path(self, service: str) -> Path:
        return service_dir(self.state_dir, service) / "keys.json"

    def _token_key_path(self, service: str) -> Path:
        return service_dir(self.state_dir, service) / "token-key.json"

    def _service_view(self, service: str) -> ServiceView | None:
        self._reap_supervisors()
        with self.store.snapshot() as conn:
            row = self.store.get_service(conn, service)
            replicas = self.store.replicas(conn, service)
        return None if row is None else self._view(row, replicas)

    @staticmethod
    def _view(row: ServiceRow, replicas: list[ReplicaRow]) -> ServiceView:
        live = []
        for rep in replicas:
            if process_alive(rep.pid, rep.started):
                status = read_status(rep.status_file)
                live.append(ReplicaView(rep, str(status.get("state", "initializing")), status.get("error"),
                                        status_count(status, "inFlight"), status_count(status, "capacity")))
        return ServiceView(row, process_alive(row.supervisor_pid, row.supervisor_started), tuple(live))

    def _gpu_label(self, gpu_id: str) -> dict[str, Any]:
        """A replica's GPU as ``amlops status`` shows it: UUID, name and index when this machine knows it."""
        found = next((g for g in self.gpus if g.uuid == gpu_id), None)
        if found is None:
            return {"uuid": gpu_id, "name": "virtual (CPU)" if gpu_id.startswith("virtual:") else None}
        return {"uuid": found.uuid, "name": found.name, "index": found.index, "migParent": found.mig_parent}

    def _failure_message(self, view: ServiceView) -> str:
        tail = self.tail_log(view.row.name, 0, 5)
        return (f"replicas of service '{view.row.name}' failed to start {view.row.failures} times in a row: "
                f"{view.row.last_error or 'unknown error'}" + (f"\nlast log lines:\n{tail}" if tail else ""))

    def _observe(
        self, view: ServiceView, spec: dict[str, Any]
    ) -> tuple[dict[str, Any], list[Condition], dict[str, Any]]:
        """Live overrides of a service's recorded spec, plus conditions and details."""
        row = view.row
        # Replicas nobody supervises will not be restarted: they do not count, so the planner heals.
        observed = view.live_slots if view.supervisor_alive else 0
        policy = view.autoscale
        # An autoscaled service reports a count only below its minimum, the one thing the planner
        # calls drift (``_replica_drift``): what the autoscaler adds above it is not the user's to undo.
        if spec.get("replicas") is not None or observed < (policy["min"] if policy else row.replicas):
            spec["replicas"] = observed
        # Adding or draining replicas on load keeps a service Ready while its minimum serves the new version.
        scaling = (policy is not None and view.supervisor_alive and not view.converged and not view.stalled
                   and view.ready_current >= policy["min"]
                   and all(r.row.generation == row.generation for r in view.replicas))
        conditions = []
        if view.converged:
            conditions.append(Condition(ConditionType.READY, True, "Running", f"{row.replicas}/{row.replicas} replicas ready"))
        elif scaling:
            conditions.append(Condition(ConditionType.READY, True, "Scaling",
                                        f"{view.ready_current}/{row.replicas} replicas ready (autoscaling)"))
        elif not view.supervisor_alive:
            conditions.append(Condition(ConditionType.READY, False, "SupervisorLost",
                                        "the supervisor is not running; replicas are not restarted until the next apply"))
        else:
            conditions.append(Condition(ConditionType.READY, False, "Progressing",
                                        f"{view.ready_current}/{row.replicas} replicas ready"))
        if view.supervisor_alive and not view.converged and not view.stalled:
            reason = "Scaling" if scaling else "RollingUpdate" if view.stale else "Starting"
            conditions.append(Condition(ConditionType.PROGRESSING, True, reason,
                                        f"{view.ready_current}/{row.replicas} replicas ready"))
        if view.stalled:
            conditions.append(Condition(ConditionType.STALLED, True, "ReplicaFailed", self._failure_message(view)))
        details = {
            "scoringUri": f"http://127.0.0.1:{row.port}/api/v1/service/{row.name}/score",
            "port": row.port,
            "generation": row.generation,
            "replicas": {
                "desired": row.replicas, "ready": view.ready_current,
                "processes": [{"pid": r.row.pid, "slot": r.row.slot, "generation": r.row.generation,
                               "state": r.state, "gpus": list(r.row.gpus)} for r in view.replicas],
            },
            "gpus": list(row.gpu_pool),
            "placement": [{"slot": r.row.slot, "pid": r.row.pid, "generation": r.row.generation,
                           "gpus": [self._gpu_label(g) for g in r.row.gpus]}
                          for r in sorted(view.replicas, key=lambda r: (r.row.slot, r.row.generation))]
                         if row.gpus_per_replica else [],
            "supervisor": {"pid": row.supervisor_pid, "alive": view.supervisor_alive},
            "lastError": row.last_error,
        }
        if policy is not None:
            used = view.utilization
            details["autoscale"] = {
                "current": row.replicas, "min": policy["min"], "max": policy["max"], "target": policy["target"],
                "refreshSeconds": policy["refreshSeconds"],
                "utilization": None if used is None else round(used * 100, 1),  # percent, like the target
            }
        return spec, conditions, details
