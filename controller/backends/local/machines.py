"""This machine as the local backend's kind handlers share it: state folder, store, GPUs, supervisors.

Every handler reads and writes the same SQLite store and the same per-service folders, and the
service handler starts supervisors the backend must reap; one ``LocalMachine`` holds all of it.
A ``Records`` snapshot is what one ``read`` of the backend sees: the store is read once, in one
transaction, and each handler observes its own kind from it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from controller.backends.base import ApplyContext
from controller.backends.local.gpus import Gpu, GpuInventory, discover_gpus
from controller.backends.local.layouts import database_path, service_dir, socket_dir
from controller.backends.local.layouts import log_path as replica_log_path
from controller.backends.local.processes import open_log, process_alive, start_time
from controller.backends.local.stores import LocalStore, ReplicaRow, ServiceRow
from controller.backends.local.variables import child_environment
from controller.backends.local.views import ServiceView, view_of
from controller.structs.errors import PermanentError, TransientError
from controller.structs.logformats import event_logger
from controller.structs.manifests import Kind
from controller.structs.states import Condition, DesiredResource, ownership_tags

log = event_logger(__name__)

STOP_GRACE_S = 20.0
"""How long a stopped service's processes get to drain: longer than a replica's own limit for its
``--workers`` (``controller.scoring.forking.STOP_LIMIT_S``, 15 s), so it can reap them first."""
REPO_ROOT = str(Path(__file__).resolve().parents[3])
"""Put on the PYTHONPATH of supervisors and replicas, so they import this checkout's controller."""


@dataclass(frozen=True)
class Records:
    """The store as one ``read`` sees it: recorded resources by kind, service rows, replicas, rollouts."""

    resources: dict[Kind, list[tuple[str, dict[str, Any]]]]
    services: dict[str, ServiceRow]
    replicas: dict[str, list[ReplicaRow]]
    rollouts: dict[str, dict[str, Any]]


def manifest_dir(resource: DesiredResource, ctx: ApplyContext) -> Path:
    """The folder relative paths in ``resource``'s manifest resolve against: that of the file declaring it."""
    return Path(ctx.root) / Path(resource.origin.file).parent


def python_path() -> str:
    """PYTHONPATH for a child process: this checkout first, then whatever the controller was given."""
    return os.pathsep.join([REPO_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file (at most its last 256 KiB), '' when it does not exist."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class LocalMachine:
    """The state folder, its store, this machine's GPUs and the supervisors started from this process."""

    def __init__(
        self, state_dir: str | Path, controller_name: str, ready_timeout: float,
        gpus: GpuInventory | Sequence[Gpu] | None,
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
        self.supervisors: dict[str, subprocess.Popen[bytes]] = {}

    # -- records ---------------------------------------------------------------------------------

    def records(self) -> Records:
        """Everything recorded, read in one transaction."""
        self.reap_supervisors()
        with self.store.snapshot() as conn:
            rows = self.store.all_resources(conn)
            services = {s.name: s for s in self.store.all_services(conn)}
            replicas = self.store.replicas(conn)
            rollouts = self.store.all_rollouts(conn)
        by_kind: dict[Kind, list[tuple[str, dict[str, Any]]]] = {}
        for kind_text, name, rec in rows:
            with contextlib.suppress(ValueError):  # a kind this version does not know is not ours to report
                by_kind.setdefault(Kind(kind_text), []).append((name, rec))
        by_service: dict[str, list[ReplicaRow]] = {}
        for rep in replicas:
            by_service.setdefault(rep.service, []).append(rep)
        return Records(by_kind, services, by_service, rollouts)

    def record(self, resource: DesiredResource, ctx: ApplyContext, conditions: list[Condition],
               details: dict[str, Any]) -> None:
        """Record ``resource`` as applied: its spec, ownership tags, conditions and details."""
        manifest = resource.manifest
        with self.store.transaction() as conn:
            self.store.put_resource(conn, manifest.kind, manifest.name, manifest.spec.model_dump(mode="json"),
                                    self.tags(resource, ctx), [c.to_json() for c in conditions], details)

    @staticmethod
    def tags(resource: DesiredResource, ctx: ApplyContext) -> dict[str, str]:
        """The ownership tags recorded on what this apply creates."""
        return ownership_tags(ctx.controller_name, ctx.source, ctx.revision, resource)

    def forget(self, kind: Kind, name: str) -> None:
        """Delete the record of a resource (missing is fine)."""
        with self.store.transaction() as conn:
            self.store.delete_resource(conn, kind.value, name)

    def dependency(self, kind: Kind, name: str, ctx: ApplyContext, by: str) -> dict[str, Any]:
        """The record of what ``by`` stands on; it waits for one the desired state will create."""
        with self.store.snapshot() as conn:
            rec = self.store.get_resource(conn, kind.value, name)
        if rec is not None:
            return rec
        if ctx.desired.get(kind, name) is not None:
            raise TransientError(f"{by} waits for {kind.value} '{name}' to be created", retry_after=2)
        raise PermanentError(f"{by} refers to {kind.value} '{name}', which does not exist", reason=f"{kind.value}NotFound")

    def auth_of(self, service: str) -> str | None:
        """The ``auth`` mode the service was last applied with (a switched service keeps its old
        key files until its replicas have rolled; only the current mode's secrets are given out)."""
        with self.store.snapshot() as conn:
            recorded = self.store.get_resource(conn, Kind.WEBSERVICE.value, service)
        return None if recorded is None else str(recorded["spec"].get("auth", "key"))

    # -- services ----------------------------------------------------------------------------------

    def row(self, service: str) -> ServiceRow:
        """The service's row; a service that does not exist is a ``PermanentError``."""
        with self.store.snapshot() as conn:
            row = self.store.get_service(conn, service)
        if row is None:
            raise PermanentError(f"service '{service}' does not exist", reason="NotFound")
        return row

    def service_view(self, service: str) -> ServiceView | None:
        """The service's row and its live replicas now, or None when it does not exist."""
        self.reap_supervisors()
        with self.store.snapshot() as conn:
            row = self.store.get_service(conn, service)
            replicas = self.store.replicas(conn, service)
        return None if row is None else view_of(row, replicas)

    def keys_path(self, service: str) -> Path:
        """The keys file of a service with ``auth: key``."""
        return service_dir(self.state_dir, service) / "keys.json"

    def token_key_path(self, service: str) -> Path:
        """The token signing key file of a service with ``auth: token``."""
        return service_dir(self.state_dir, service) / "token-key.json"

    def log_path(self, service: str, replica: int = 0) -> Path:
        """The log file of replica number ``replica`` (0-based) of ``service``."""
        return replica_log_path(self.state_dir, service, replica)

    def failure_message(self, view: ServiceView) -> str:
        """Why a service is stalled: its last error and its first replica's last log lines."""
        last = tail(self.log_path(view.row.name, 0), 5)
        return (f"replicas of service '{view.row.name}' failed to start {view.row.failures} times in a row: "
                f"{view.row.last_error or 'unknown error'}" + (f"\nlast log lines:\n{last}" if last else ""))

    # -- processes ---------------------------------------------------------------------------------

    def ensure_supervisor(self, name: str, listener: Any) -> subprocess.Popen[bytes] | None:
        """Start the service's supervisor unless a live one is recorded; the new process, if any."""
        row = self.row(name)
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
        env = child_environment(os.environ, {"PYTHONPATH": python_path()})
        sdir = service_dir(self.state_dir, name)
        with open_log(sdir / "supervisor.log") as out:
            popen = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     pass_fds=pass_fds, start_new_session=True, cwd=str(sdir))
        self.supervisors[name] = popen
        try:
            started = start_time(popen.pid)
        except psutil.NoSuchProcess:
            started = None
        with self.store.transaction() as conn:
            self.store.set_supervisor(conn, name, popen.pid, started)
        log.info("supervisor.spawned", service=name, pid=popen.pid)
        return popen

    def stop_service(self, name: str) -> None:
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
        self.reap_supervisors()
        with self.store.transaction() as conn:
            self.store.delete_service(conn, name)
        for rep in recorded:
            with contextlib.suppress(OSError):
                os.unlink(rep.fd_socket)
        with contextlib.suppress(OSError):
            socket_dir(self.state_dir).rmdir()  # only when no other service still has sockets there
        shutil.rmtree(service_dir(self.state_dir, name), ignore_errors=True)
        log.info("service.stopped", name=name, processes=len(victims))

    def reap_supervisors(self) -> None:
        """Collect the exit status of supervisors we spawned that have ended, so none stays a zombie."""
        for name, popen in list(self.supervisors.items()):
            if popen.poll() is not None:
                del self.supervisors[name]
