"""The per-service supervisor: keeps a service's replicas running, outliving the controller.

Run as ``python -m controller.backends.local.supervising --state-dir DIR --service NAME [--listen-fd N]``.
It must stay light: it imports neither TensorFlow nor the scoring host, only the state store.

Each tick it reads the service row the backend wrote (replicas, generation, launch command, GPU
pool) and converges the processes to it, like a tiny ReplicaSet controller:

* dead replicas are restarted with exponential backoff (0.5 s doubling to 30 s);
* a replica whose resident memory passes the service's limit
  (``memoryGbLimit``, else ``memoryGb``) is killed like an OOM-killed pod, counted as a failure;
* each replica runs in its own process group, so a SIGKILL reaches its ``--workers`` children too;
* extra replicas (scale in) get SIGTERM and drain;
* replicas of an older generation are rolled one at a time: a new replica starts, and only when
  its status file says ``ready`` does the old one get SIGTERM. When the GPU pool has no spare
  replica's worth (surge only goes into GPUs no declared service needs, ``gpus.py``), the old
  replica is stopped first (the others keep serving). A new version
  that fails to start is retried with the same backoff, never rolling further; after
  ``FAILURE_LIMIT`` failures the roll stops and the old replicas keep serving.

The supervisor holds the service's listening socket and passes it to every replica, so they all
share one accept queue: a connection never lands on a replica that is not accepting. A restarted
supervisor gets the socket back from any live replica's fd socket, and adopts the live replicas
it finds recorded (pid + process start time), so its own death never restarts a healthy service.

The state database may become unwritable (a full disk): the supervisor then keeps converging from
what it knows (the last service row it read, the replicas it started), keeps its record writes
pending, one per subject (a replica, the failure count, itself), and writes them once the
database takes writes again. Supervising never waits on the disk.

Autoscaling (a service row whose ``launch`` carries an ``autoscale`` policy, which ``services.py``
writes for services with ``autoscale`` or with neither ``replicas`` nor ``autoscale``): every
``refreshSeconds`` the supervisor sums ``inFlight`` and ``capacity`` over the ready replicas'
status files and, like Azure's autoscaler, wants ``ceil(current × utilization / target)``
replicas, clamped to the policy's ``[min, max]`` (``max`` already capped by ``services.py`` to the
replicas whose GPUs the service holds). ``current`` is the number of replicas measured. More
replicas are taken at once; fewer only after ``SCALE_DOWN_REFRESHES`` refreshes in a row asked for
fewer (and every desired slot was ready to be measured), and then down to the largest count those
refreshes asked for. The chosen count is written to the row's ``replicas`` column, the count every
tick converges to, so ``read()`` reports it and a restarted supervisor keeps it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType

import psutil

from controller.backends.local.gpus import replica_environment
from controller.backends.local.layouts import (
    CANDIDATE_SUFFIX,
    database_path,
    log_path,
    service_dir,
    socket_dir,
    split_path,
)
from controller.backends.local.processes import (
    bind_listener,
    kill_group,
    open_log,
    process_alive,
    read_status,
    receive_listener,
    resident_bytes,
    start_time,
)
from controller.backends.local.stores import LocalStore, ReplicaRow, ServiceRow
from controller.backends.local.variables import child_environment
from controller.structs.errors import StateDirFull
from controller.structs.logformats import JsonLogFormatter, event_logger
from controller.structs.replicas import ReplicaLaunch, ReplicaState

Write = Callable[[sqlite3.Connection], object]
UNWRITABLE = (sqlite3.Error, OSError, StateDirFull)
"""What a record write raises when the state database cannot take it (a full disk, a broken file)."""

log = event_logger("amlops.supervisor")


TICK_S = 0.2
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
DRAIN_GRACE_S = 30.0
MEMORY_CHECK_S = 1.0
"""How often replicas' memory is compared with the service's limit."""
FAILURE_LIMIT = 3
"""Consecutive failed starts of a replica of the current generation before the service is Stalled."""
RECORD_RETRY_S = 1.0
"""How often pending record writes are retried while the database refuses them."""
SCALE_DOWN_REFRESHES = 3
"""Autoscale refreshes in a row that must ask for fewer replicas before any is removed: one quiet
sample between two bursts must not drain a replica the next burst needs (Azure also scales in
more slowly than out)."""


def utilization(loads: Sequence[tuple[int, int]]) -> float | None:
    """Sum of in-flight requests over sum of capacity, for ``(inFlight, capacity)`` pairs; None without capacity."""
    capacity = sum(c for _n, c in loads)
    return sum(n for n, _c in loads) / capacity if capacity > 0 else None


def desired_replicas(current: int, used: float, target_percent: int, low: int, high: int) -> int:
    """Azure's autoscaler rule: ``ceil(current × utilization / target)``, clamped to ``[low, high]``."""
    wanted = math.ceil(round(current * used * 100 / target_percent, 9))  # round: 0.5 × 2 / 0.5 is 2, not 2.0000001
    return max(low, min(high, wanted))


@dataclass
class _Replica:
    row: ReplicaRow
    popen: subprocess.Popen[bytes] | None
    terminating_since: float | None = None
    state: str = ReplicaState.INITIALIZING
    error: str | None = None
    in_flight: int | None = None
    capacity: int | None = None
    killed_for: str | None = None  # why the supervisor killed it (over its memory limit), reported on exit

    def exit_code(self) -> int | bool | None:
        """Exit code if a child of ours exited, True if an adopted process is gone, else None."""
        if self.popen is not None:
            return self.popen.poll()
        return None if process_alive(self.row.pid, self.row.started) else True


@dataclass
class Supervisor:
    """Converges one service's replica processes to its service row. See the module docstring."""

    state_dir: Path
    service: str
    listen_fd: int
    store: LocalStore
    replicas: dict[int, _Replica] = field(default_factory=dict)
    failures: dict[int, int] = field(default_factory=dict)
    next_start: dict[int, float] = field(default_factory=dict)
    generation: int | None = None
    last_error: str | None = None
    stopping: bool = False
    next_refresh: float = 0.0
    low_refreshes: int = 0
    low_peak: int = 0
    next_memory_check: float = 0.0
    pending: dict[tuple[object, ...], Write] = field(default_factory=dict)
    next_record: float = 0.0
    record_error: str | None = None
    last_row: ServiceRow | None = None

    def record(self, subject: tuple[object, ...], write: Write) -> None:
        """Write to the state database now, or keep the write pending (the latest per ``subject``)."""
        self.pending.pop(subject, None)
        self.pending[subject] = write
        self.flush()

    def flush(self, now: float | None = None) -> None:
        """Write the pending records in one transaction; keep them if the database refuses."""
        if not self.pending or (now is not None and now < self.next_record):
            return
        try:
            with self.store.transaction() as conn:
                for write in self.pending.values():
                    write(conn)
        except UNWRITABLE as exc:
            self.next_record = time.monotonic() + RECORD_RETRY_S
            if self.record_error is None:
                log.warning("records.deferred", service=self.service, pending=len(self.pending), error=str(exc))
            self.record_error = str(exc)
            return
        if self.record_error is not None:
            log.info("records.written", service=self.service, pending=len(self.pending))
        self.pending.clear()
        self.record_error = None

    def adopt(self) -> None:
        """Track the live replicas recorded for this service; forget the dead ones."""
        with self.store.snapshot() as conn:
            recorded = self.store.replicas(conn, self.service)
        for row in recorded:
            if process_alive(row.pid, row.started):
                self.replicas[row.pid] = _Replica(row, None)
                log.info("replica.adopted", service=self.service, pid=row.pid, slot=row.slot)
            else:
                self.record(("replica", row.pid), _deleting(self.service, row.pid))

    def run(self) -> None:
        """Tick until SIGTERM or until the service row disappears or names another supervisor."""
        while not self.stopping:
            try:
                with self.store.snapshot() as conn:
                    row = self.store.get_service(conn, self.service)
            except UNWRITABLE as exc:
                # Unreadable now: supervise on from the last row read; a stale row beats no supervisor.
                if self.last_row is None:
                    raise
                if self.record_error is None:
                    log.warning("row.unreadable", service=self.service, error=str(exc))
                    self.record_error = str(exc)
                row = self.last_row
            if row is None or row.supervisor_pid not in (None, os.getpid()):
                log.info("supervisor.exiting", service=self.service, reason="deleted" if row is None else "replaced")
                return
            self.last_row = row
            self.tick(row)
            time.sleep(TICK_S)

    def tick(self, row: ServiceRow) -> None:
        """One convergence step."""
        now = time.monotonic()
        self.flush(now)
        if row.generation != self.generation:
            # A new generation is new input: its replicas start with a clean failure count, no backoff.
            self.failures.clear()
            self.next_start.clear()
            self.generation = row.generation
        self._reap(row, now)
        for rep in self.replicas.values():
            status = read_status(rep.row.status_file)
            rep.state, rep.error, rep.in_flight, rep.capacity = status.state, status.error, status.in_flight, status.capacity
            if rep.state == ReplicaState.READY and rep.row.generation == row.generation:
                self.failures.pop(rep.row.slot, None)
        self._enforce_memory(row, now)
        row = self._autoscale(row, now)
        active = [r for r in self.replicas.values() if r.terminating_since is None]
        # Scale in: replicas in slots beyond the desired count drain and exit.
        for rep in active:
            if rep.row.slot >= row.replicas:
                self._terminate(rep, now)
        active = [r for r in active if r.terminating_since is None]
        by_slot: dict[int, list[_Replica]] = {}
        for rep in active:
            by_slot.setdefault(rep.row.slot, []).append(rep)
        # Fill empty slots (first start, a crash, or a stop-first roll).
        for slot in range(row.replicas):
            if not by_slot.get(slot) and now >= self.next_start.get(slot, 0.0):
                self._spawn(row, slot)
        self._roll(row, by_slot, now)
        for rep in self.replicas.values():
            if rep.terminating_since is not None and now - rep.terminating_since > DRAIN_GRACE_S:
                kill_group(rep.row.pid)
        self._record_failures(row)

    def _enforce_memory(self, row: ServiceRow, now: float) -> None:
        """Kill a replica that uses more memory than the service allows (as AKS OOM-kills a pod).

        The limit is ``resources.memoryGbLimit``, else ``memoryGb`` (Azure's default for the limit);
        memory is the replica process's resident set, checked every ``MEMORY_CHECK_S``.
        The exit is counted as a failure: the slot restarts with backoff and the error is reported.
        """
        limit = int(row.launch.get("memoryLimitBytes") or 0)
        if not limit or now < self.next_memory_check:
            return
        self.next_memory_check = now + MEMORY_CHECK_S
        for rep in self.replicas.values():
            if rep.terminating_since is not None or rep.killed_for is not None:
                continue
            used = resident_bytes(rep.row.pid)
            if used > limit:
                rep.killed_for = (f"OOMKilled: the replica used {used / 2**20:.0f} MiB, over its memory limit of "
                                  f"{limit / 2**20:.0f} MiB (resources.memoryGbLimit, else memoryGb)")
                log.warning("replica.oom_killed", service=self.service, pid=rep.row.pid, slot=rep.row.slot,
                            rss_mib=used // 2**20, limit_mib=limit // 2**20)
                kill_group(rep.row.pid)

    def _autoscale(self, row: ServiceRow, now: float) -> ServiceRow:
        """The row with the replica count the autoscale policy wants now (recorded), or unchanged."""
        policy = row.launch.get("autoscale")
        if not isinstance(policy, dict) or now < self.next_refresh:
            return row
        self.next_refresh = now + max(1, int(policy.get("refreshSeconds", 1)))
        low = max(1, int(policy.get("min", 1)))
        high = max(low, int(policy.get("max", low)))
        target = max(1, int(policy.get("target", 70)))
        loads = [(r.in_flight, r.capacity) for r in self.replicas.values()
                 if r.terminating_since is None and r.state == ReplicaState.READY and r.in_flight is not None and r.capacity]
        used = utilization(loads)
        count = max(low, min(high, row.replicas))  # a changed policy clamps at once
        if used is not None:
            wanted = desired_replicas(len(loads), used, target, low, high)
            if wanted > count:
                count, self.low_refreshes = wanted, 0
            elif wanted < count and len(loads) >= count:
                # Only a fully measured service may shrink: a starting replica has no load yet.
                self.low_refreshes += 1
                self.low_peak = wanted if self.low_refreshes == 1 else max(self.low_peak, wanted)
                if self.low_refreshes >= SCALE_DOWN_REFRESHES:
                    count, self.low_refreshes = self.low_peak, 0
            else:
                self.low_refreshes = 0
        if count == row.replicas:
            return row
        try:
            with self.store.transaction() as conn:
                # Compare-and-set: an apply that rewrote the row in between wins; the next refresh re-decides.
                changed = self.store.set_replicas(conn, self.service, count, row.replicas, row.generation)
        except UNWRITABLE:
            return row  # the count is the row's: an unrecorded one would be lost by a restarted supervisor
        if not changed:
            return row
        log.info("replicas.autoscaled", service=self.service, from_replicas=row.replicas, to_replicas=count,
                 utilization=None if used is None else round(used, 2), target=target)
        return replace(row, replicas=count)

    def _roll(self, row: ServiceRow, by_slot: dict[int, list[_Replica]], now: float) -> None:
        # A slot holding an old replica and a ready new one: the old one may go now.
        for reps in by_slot.values():
            new_ready = [r for r in reps if r.row.generation == row.generation and r.state == ReplicaState.READY]
            if new_ready:
                for rep in reps:
                    if rep.row.generation != row.generation:
                        self._terminate(rep, now)
        busy = any(r.terminating_since is not None for r in self.replicas.values()) or any(
            r.row.generation == row.generation and r.state != ReplicaState.READY
            for r in self.replicas.values() if r.terminating_since is None
        )
        if busy:
            return  # one replica at a time: wait for the starting one to be ready and the old one to exit
        for slot in sorted(by_slot):
            reps = [r for r in by_slot[slot] if r.terminating_since is None]
            if reps and all(r.row.generation != row.generation for r in reps):
                if self.failures.get(slot, 0) >= FAILURE_LIMIT or now < self.next_start.get(slot, 0.0):
                    return  # the new version keeps failing here: back off, the old replica keeps serving
                if self._free_gpus(row) is not None:
                    self._spawn(row, slot)  # surge: the old replica stops once this one is ready
                elif any(n for s, n in self.failures.items() if s < row.replicas):
                    return  # a new replica is failing elsewhere: take no more old ones down
                else:
                    for rep in reps:
                        self._terminate(rep, now)  # no spare GPU: stop first, the slot refills after
                return

    def _free_gpus(self, row: ServiceRow) -> tuple[str, ...] | None:
        if row.gpus_per_replica == 0:
            return ()
        held = {g for r in self.replicas.values() for g in r.row.gpus}
        free = [g for g in row.gpu_pool if g not in held]
        return tuple(free[: row.gpus_per_replica]) if len(free) >= row.gpus_per_replica else None

    def _spawn(self, row: ServiceRow, slot: int) -> None:
        gpus = self._free_gpus(row)
        if gpus is None:
            return  # GPUs are still held by a draining replica
        launch = row.launch
        uniq = f"{slot}-{row.generation}-{secrets.token_hex(3)}"
        run_dir = service_dir(self.state_dir, self.service) / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        sockets = socket_dir(self.state_dir)
        sockets.mkdir(parents=True, exist_ok=True, mode=0o700)
        status_file = str(run_dir / f"replica-{uniq}.status.json")
        fd_socket = str(sockets / f"{self.service[:20]}-{uniq}.sock")
        # A candidate never splits: only the live replicas hand requests on.
        split = None if self.service.endswith(CANDIDATE_SUFFIX) else str(split_path(self.state_dir, self.service))
        argv = [*launch["argv"], *ReplicaLaunch(self.listen_fd, fd_socket, status_file, slot, split).argv()]
        declared = launch.get("env", {})
        env = child_environment(os.environ, {**declared, **replica_environment(gpus, declared)})
        logfile = log_path(self.state_dir, self.service, slot)
        logfile.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

        def spawn() -> _Replica:
            with open_log(logfile) as out:
                popen = subprocess.Popen(
                    argv, env=env, cwd=launch.get("cwd"), stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, pass_fds=(self.listen_fd,), start_new_session=True,
                )
            try:
                started = start_time(popen.pid)
            except psutil.NoSuchProcess:
                started = time.time()
            rep = ReplicaRow(self.service, popen.pid, started, slot, row.generation, gpus, status_file, fd_socket)
            self.replicas[popen.pid] = _Replica(rep, popen)
            log.info("replica.started", service=self.service, pid=popen.pid, slot=slot,
                     generation=row.generation, gpus=",".join(gpus) or "-")
            return self.replicas[popen.pid]

        if not gpus:
            rep = spawn().row
            self.record(("replica", rep.pid), lambda conn: self.store.put_replica(conn, rep))
            return
        # A GPU replica checks the pool and is recorded in one write transaction: another service's
        # placement (which may take an unused spare GPU of ours) sees either this replica or the pool
        # without that GPU, never a GPU both of us think is free. While the state database refuses
        # writes no GPU replica starts (the next tick tries again): a GPU is never shared.
        started: _Replica | None = None
        try:
            with self.store.transaction() as conn:
                latest = self.store.get_service(conn, self.service)
                if latest is None or not set(gpus) <= set(latest.gpu_pool):
                    return  # the pool changed under us: the next tick re-reads it
                started = spawn()
                self.store.put_replica(conn, started.row)
        except UNWRITABLE as exc:
            log.warning("gpu.replica_deferred", service=self.service, slot=slot, error=str(exc))
            if started is not None and started.popen is not None:  # unrecorded, so its GPU looks free: stop it
                self.replicas.pop(started.row.pid, None)
                started.popen.kill()
                started.popen.wait()

    def _terminate(self, rep: _Replica, now: float) -> None:
        if rep.terminating_since is None:
            rep.terminating_since = now
            with contextlib.suppress(ProcessLookupError):
                os.kill(rep.row.pid, signal.SIGTERM)
            log.info("replica.stopping", service=self.service, pid=rep.row.pid, slot=rep.row.slot)

    def _reap(self, row: ServiceRow, now: float) -> None:
        for pid, rep in list(self.replicas.items()):
            code = rep.exit_code()
            if code is None:
                continue
            del self.replicas[pid]
            self.record(("replica", pid), _deleting(self.service, pid))
            error = (rep.killed_for if rep.killed_for is not None
                     else read_status(rep.row.status_file).error if rep.error is None else rep.error)
            for leftover in (rep.row.status_file, rep.row.fd_socket):  # a killed replica cleans up nothing
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
            if rep.terminating_since is not None:
                log.info("replica.stopped", service=self.service, pid=pid, slot=rep.row.slot)
                continue
            # An unexpected exit: count it, and back off before the slot restarts.
            error = error or f"replica exited (code {code if code is not True else 'unknown'})"
            self.last_error = str(error)
            n = self.failures.get(rep.row.slot, 0) + 1
            self.failures[rep.row.slot] = n
            self.next_start[rep.row.slot] = now + min(BACKOFF_START_S * 2 ** (n - 1), BACKOFF_MAX_S)
            log.warning("replica.died", service=self.service, pid=pid, slot=rep.row.slot, failures=n)

    def _record_failures(self, row: ServiceRow) -> None:
        worst = max(self.failures.values(), default=0)
        error = self.last_error if worst else None
        if (worst, error) != (row.failures, row.last_error) or (worst and row.failure_generation != row.generation):
            if ("failures",) in self.pending and self.record_error is not None:
                self.pending[("failures",)] = _failing(self.service, row.generation, worst, error)  # retried on its own
                return
            self.record(("failures",), _failing(self.service, row.generation, worst, error))


def _deleting(service: str, pid: int) -> Write:
    return lambda conn: LocalStore.delete_replica(conn, service, pid)


def _failing(service: str, generation: int, failures: int, error: str | None) -> Write:
    return lambda conn: LocalStore.set_failures(conn, service, generation, failures, error)


def _listener_fd(store: LocalStore, service: str, given: int | None) -> int:
    if given is not None:
        return given
    with store.snapshot() as conn:
        row = store.get_service(conn, service)
        recorded = store.replicas(conn, service)
    for rep in recorded:
        if process_alive(rep.pid, rep.started):
            with contextlib.suppress(OSError):
                return receive_listener(rep.fd_socket)
    if row is None:
        raise SystemExit(f"service {service} is not recorded")
    sock = bind_listener(row.port)
    return sock.detach()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the supervisor process."""
    parser = argparse.ArgumentParser(prog="python -m controller.backends.local.supervising")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--listen-fd", type=int)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())  # one JSON object per line, as the replicas' logs
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    state_dir = Path(args.state_dir)
    store = LocalStore(database_path(state_dir))
    sup = Supervisor(state_dir, args.service, _listener_fd(store, args.service, args.listen_fd), store)
    os.set_inheritable(sup.listen_fd, True)

    def _stop(signum: int, frame: FrameType | None) -> None:
        sup.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    pid, started = os.getpid(), start_time(os.getpid())
    sup.record(("supervisor",), lambda conn: store.set_supervisor(conn, args.service, pid, started))
    log.info("supervisor.started", service=args.service, pid=os.getpid())
    sup.adopt()
    sup.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
