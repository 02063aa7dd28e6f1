"""A local web service: scoring-host replicas kept alive by a supervisor that outlives the controller.

``create`` and ``update`` write the service's row (launch command, replica count or autoscale
policy, GPU pool, generation) and start its supervisor (``supervising``), which converges the
processes to the row; they return once every replica of the new generation is ready
(``wait_ready``), reporting progress through ``ctx.progress``. ``read`` lays what is alive now
over the recorded spec: live replica counts, Ready / Progressing / Stalled, and for a service with
``autoscale`` (or with neither ``replicas`` nor ``autoscale``: Azure's default autoscaler) the
count and utilization under ``details["autoscale"]``.

A candidate version (a canary, ``TrafficSplitting``) is a service of its own under
``candidate_of(name)``, on a port of its own, with no resource record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.backends.base import ApplyContext
from controller.backends.keys import ensure_keys, ensure_token_key
from controller.backends.local.environments import Resolution, current_interpreter
from controller.backends.local.gpus import allocate_pool, allocations, pending_gpus
from controller.backends.local.layouts import candidate_of, service_dir
from controller.backends.local.machines import LocalMachine, Records, manifest_dir, python_path, tail
from controller.backends.local.processes import bind_listener
from controller.backends.local.records import recorded
from controller.backends.local.registries import content_hash, resolve_model
from controller.backends.local.splitting import read_split, write_split
from controller.backends.local.stores import ServiceRow
from controller.backends.local.views import ServiceView, view_of
from controller.structs.errors import PermanentError, TransientError
from controller.structs.logformats import event_logger
from controller.structs.manifests import Autoscale, Kind, WebserviceManifest, WebserviceSpec
from controller.structs.plans import Change
from controller.structs.replicas import ServiceLaunch
from controller.structs.rollouts import ROLLOUT_DIGEST_PREFIX, SPLIT_POLL_S, RolloutState
from controller.structs.states import (
    DIGEST_TAG,
    ActualResource,
    Condition,
    ConditionType,
    DesiredResource,
    ResourceId,
)

log = event_logger(__name__)


def memory_limit_bytes(spec: WebserviceSpec) -> int:
    """The memory a replica may use before it is killed: ``memoryGbLimit``, else ``memoryGb`` (Azure's default)."""
    limit = spec.resources.memoryGbLimit if spec.resources.memoryGbLimit is not None else spec.resources.memoryGb
    return int(limit * 1024**3)


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


class ServiceHandler:
    """Webservice on the local backend."""

    kind = Kind.WEBSERVICE
    # A service's replicas are placed on its cluster's GPUs when it is made.
    replace_fields = frozenset({"cluster"})

    def __init__(self, machine: LocalMachine) -> None:
        self.machine = machine

    # -- the handler -------------------------------------------------------------------------------

    def read(self) -> list[ActualResource]:
        """Every recorded service, with live replica counts and conditions."""
        return self.observe(self.machine.records())

    def observe(self, records: Records) -> list[ActualResource]:
        """The services in a snapshot of the store, each with what is alive now laid over its record."""
        found = []
        for name, rec in records.resources.get(self.kind, []):
            resource = recorded(self.kind, name, rec)
            spec, conditions, details, tags = dict(resource.spec), list(resource.conditions), dict(resource.details), dict(resource.tags)
            row = records.services.get(name)
            if row is not None:
                view = view_of(row, records.replicas.get(name, []))
                spec, live_conditions, live_details = self._observe(view, spec)
                conditions = [c for c in conditions if c.type not in {c2.type for c2 in live_conditions}] + live_conditions
                details.update(live_details)
                if name in records.rollouts or candidate_of(name) in records.services:
                    tags, conditions = self._observe_rollout(name, records.rollouts.get(name), tags, conditions, details)
            found.append(ActualResource(resource.id, spec, tags, tuple(conditions), details))
        return found

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Start the service (idempotent: an existing one is brought to the spec)."""
        assert isinstance(resource.manifest, WebserviceManifest)
        self.apply_service(resource, resource.manifest, ctx)

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> None:
        """Scale in place or roll one replica at a time.

        A candidate version left by a rollout nobody drives any more goes first: traffic returns to
        the live replicas before they change.
        """
        self.discard_candidate(resource.id.name)
        self.save_rollout(resource.id.name, None)
        self.create(resource, ctx)

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Stop the service's processes (its candidate's too), free its port and GPUs, forget it."""
        self.machine.stop_service(candidate_of(id.name))
        self.machine.stop_service(id.name)
        self.save_rollout(id.name, None)
        self.machine.forget(id.kind, id.name)

    # -- what the backend's extras share -----------------------------------------------------------

    def wait_ready(self, service: str, timeout: float | None = None, ctx: ApplyContext | None = None) -> None:
        """Block until every replica of ``service``'s current generation is ready.

        Raises ``PermanentError(reason="ReplicaFailed")`` when replicas keep failing to start,
        ``TransientError`` when ``timeout`` (default ``ready_timeout``) passes first.
        """
        machine = self.machine
        deadline = time.monotonic() + (machine.ready_timeout if timeout is None else timeout)
        last = ""
        machine.reap_supervisors()
        supervisor = machine.supervisors.get(service)  # one we started (by this apply) and still running
        while True:
            view = machine.service_view(service)
            if view is None:
                raise PermanentError(f"service '{service}' does not exist", reason="NotFound")
            if view.converged:
                if ctx is not None:
                    ctx.progress(f"{service}: {view.row.replicas}/{view.row.replicas} replicas ready", 1.0)
                return
            if view.stalled:
                raise PermanentError(machine.failure_message(view), reason="ReplicaFailed")
            if not view.supervisor_alive:
                if supervisor is None:
                    supervisor = machine.ensure_supervisor(service, None)  # at most one start per call
                elif supervisor.poll() is not None:
                    lines = tail(service_dir(machine.state_dir, service) / "supervisor.log", 10)
                    raise PermanentError(
                        f"the supervisor of service '{service}' exited at start (code {supervisor.returncode})"
                        + (f"\nlast log lines:\n{lines}" if lines else ""), reason="SupervisorFailed")
            message = f"{service}: {view.ready_current}/{view.row.replicas} replicas ready"
            if ctx is not None and message != last:
                ctx.progress(message, view.ready_current / max(view.row.replicas, 1))
                last = message
            if time.monotonic() > deadline:
                raise TransientError(f"service '{service}' not ready in time ({message})", retry_after=10)
            time.sleep(0.2)

    def save_rollout(self, service: str, state: RolloutState | None) -> None:
        """Store or forget ``service``'s rollout state."""
        with self.machine.store.transaction() as conn:
            self.machine.store.put_rollout(conn, service, None if state is None else state.to_json())

    def discard_candidate(self, service: str) -> None:
        """All traffic back to the live replicas, then the candidate stopped (its requests in flight finish)."""
        machine = self.machine
        write_split(machine.state_dir, service, 0, 0)
        with machine.store.snapshot() as conn:
            running = machine.store.get_service(conn, candidate_of(service)) is not None
        if running:
            time.sleep(3 * SPLIT_POLL_S)  # every replica has seen the split go before the candidate drains
            machine.stop_service(candidate_of(service))
            log.info("candidate.discarded", service=service)

    # -- applying ----------------------------------------------------------------------------------

    def service_launch(self, resource: DesiredResource, manifest: WebserviceManifest,
                       ctx: ApplyContext) -> tuple[dict[str, Any], str, dict[str, Any], list[dict[str, Any]]]:
        """A service's launch (command line, environment, folder), its hash, cluster record and
        environment conditions."""
        machine = self.machine
        name, spec = manifest.name, manifest.spec
        by = f"Webservice '{name}'"
        cluster = machine.dependency(Kind.AKS_CLUSTER, spec.cluster, ctx, by)
        if spec.environment is not None:
            environment = machine.dependency(Kind.ENVIRONMENT, spec.environment, ctx, by)
            resolution, env_conditions = Resolution.from_json(environment["details"]), environment["conditions"]
        else:
            resolution, env_conditions = current_interpreter(), []
        models = [resolve_model(machine.store, ref.name, ref.version) for ref in spec.models]
        sdir = service_dir(machine.state_dir, name)
        sdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        launch = self._launch(name, spec, resource, ctx, resolution, models, sdir)
        launch_hash = hashlib.sha256(json.dumps([launch, spec.resources.model_dump(mode="json")], sort_keys=True).encode()).hexdigest()
        launch["details"] = {"modelVersions": [f"{m.name}:{m.version}" for m in models], "python": resolution.python,
                             "tensorflowCompat": resolution.tensorflow_compat}
        return launch, launch_hash, cluster, env_conditions

    def apply_service(self, resource: DesiredResource, manifest: WebserviceManifest, ctx: ApplyContext,
                      *, candidate: bool = False, wait: bool = True) -> None:
        """Write the service's row (or, with ``candidate``, its candidate version's) and start its supervisor.

        A candidate is a service of its own (``candidate_of(name)``) on a port of its own, with a
        fixed replica count and no resource record: only the rollout that started it knows it.
        """
        machine, store = self.machine, self.machine.store
        name, spec = manifest.name, manifest.spec
        launch, launch_hash, cluster, env_conditions = self.service_launch(resource, manifest, ctx)
        details: dict[str, Any] = launch.pop("details")
        if spec.auth == "key":
            ensure_keys(machine.keys_path(name))
        elif spec.auth == "token":
            ensure_token_key(machine.token_key_path(name))
        row_name = candidate_of(name) if candidate else name
        service_dir(machine.state_dir, row_name).mkdir(parents=True, exist_ok=True, mode=0o700)

        conditions = [Condition.from_json(c) for c in env_conditions if c["type"] == ConditionType.SUBSTITUTED]
        if spec.resources.gpu and not machine.gpus:
            conditions.append(Condition(ConditionType.GPU_UNAVAILABLE, True, "NoPhysicalGpu",
                                        f"each replica requests {spec.resources.gpu} GPU but this machine has none "
                                        f"({machine.inventory.reason}); replicas run on CPU (CUDA_VISIBLE_DEVICES='')"))

        listener = None
        with store.snapshot() as conn:
            existing = store.get_service(conn, row_name)
        if existing is None:
            listener = bind_listener(0)  # the kernel picks a free port; the supervisor inherits the socket
        try:
            with store.transaction() as conn:
                existing = store.get_service(conn, row_name)
                # The candidate's pool may take the live version's surge spare (its roll goes stop-first).
                others = allocations(store.all_services(conn), store.replicas(conn), but=row_name)
                pending = pending_gpus(ctx.desired, name, spec.cluster, others, physical=bool(machine.gpus))
                cspec = cluster["spec"]
                # Ids our live replicas run on first, so a re-placement keeps them where they are.
                current = [g for r in store.replicas(conn, row_name) for g in r.gpus]
                current += list(existing.gpu_pool) if existing else []

                def place(replicas: int) -> tuple[str, ...]:
                    return allocate_pool(
                        service=row_name, cluster=spec.cluster, capacity=int(cluster["details"].get("gpuCapacity", 0)),
                        replicas=replicas, gpus_per_replica=spec.resources.gpu, physical=machine.gpus,
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
                        store.set_gpu_pool(conn, other, tuple(i for i in allocation.ids if i not in pool))
                        log.info("gpu.spare_reclaimed", service=row_name, source=other)
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
                store.put_service(conn, row)
                details["port"], details["gpus"] = port, list(pool)
                if not candidate:
                    store.put_resource(conn, Kind.WEBSERVICE.value, name, manifest.spec.model_dump(mode="json"),
                                       machine.tags(resource, ctx), [c.to_json() for c in conditions], details)
            log.info("service.applied", name=row_name, generation=generation, replicas=row.replicas, port=port)
            machine.ensure_supervisor(row_name, listener)
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
        keys_file = {"key": self.machine.keys_path(name), "token": self.machine.token_key_path(name)}.get(spec.auth)
        entry_script = source_dir = None
        cwd = str(sdir)
        if spec.entryScript is not None:
            src = _copy_sources(resource, spec, ctx, sdir)
            entry_script = spec.entryScript if spec.sourceDirectory else Path(spec.entryScript).name
            source_dir = cwd = str(src)
        launch = ServiceLaunch(
            python=resolution.python, model_dir=str(model_dir), service_name=name, auth=spec.auth,
            scoring_timeout_ms=spec.scoringTimeoutMs, max_concurrent=spec.maxConcurrentRequestsPerReplica,
            max_queue_wait_ms=spec.maxQueueWaitMs, tensorflow_compat=resolution.tensorflow_compat,
            metrics_dir=str(sdir / "metrics"), version_label=",".join(f"{m.name}:{m.version}" for m in models),
            keys_file=None if keys_file is None else str(keys_file), entry_script=entry_script, source_dir=source_dir,
        )
        env = {**resolution.environment_variables, "AZUREML_MODEL_DIR": str(model_dir), "PYTHONPATH": python_path()}
        return {"argv": launch.argv(), "env": env, "cwd": cwd}

    # -- observing ---------------------------------------------------------------------------------

    def _observe_rollout(
        self, name: str, stored: dict[str, Any] | None, tags: dict[str, str], conditions: list[Condition],
        details: dict[str, Any],
    ) -> tuple[dict[str, str], list[Condition]]:
        """A service whose rollout is under way (or whose candidate nobody tracks) is not at any desired
        digest: the planner keeps planning its update, so every pass drives or cleans up the rollout."""
        split = read_split(self.machine.state_dir, name)
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

    def _gpu_label(self, gpu_id: str) -> dict[str, Any]:
        """A replica's GPU as ``amlops status`` shows it: UUID, name and index when this machine knows it."""
        found = next((g for g in self.machine.gpus if g.uuid == gpu_id), None)
        if found is None:
            return {"uuid": gpu_id, "name": "virtual (CPU)" if gpu_id.startswith("virtual:") else None}
        return {"uuid": found.uuid, "name": found.name, "index": found.index, "migParent": found.mig_parent}

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
            conditions.append(Condition(ConditionType.STALLED, True, "ReplicaFailed", self.machine.failure_message(view)))
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


def _copy_sources(resource: DesiredResource, spec: WebserviceSpec, ctx: ApplyContext, sdir: Path) -> Path:
    """A content-addressed copy of the source folder, so replicas never see a half-updated checkout."""
    base = manifest_dir(resource, ctx)
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
