"""A local service as ``read`` and the readiness checks see it: its row plus what is alive right now."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.backends.local.processes import process_alive, read_status
from controller.backends.local.stores import ReplicaRow, ServiceRow
from controller.backends.local.supervising import FAILURE_LIMIT, utilization
from controller.structs.replicas import ReplicaState


@dataclass(frozen=True)
class ReplicaView:
    """One live replica and what its status file says."""

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
                    if r.row.generation == self.row.generation and r.state == ReplicaState.READY and r.row.slot < self.row.replicas})

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
                            if r.state == ReplicaState.READY and r.in_flight is not None and r.capacity])

    @property
    def converged(self) -> bool:
        """Every desired replica is ready at the current generation and nothing old is left."""
        return self.supervisor_alive and self.ready_current == self.row.replicas and self.stale == 0


def view_of(row: ServiceRow, replicas: list[ReplicaRow]) -> ServiceView:
    """The service ``row`` with those of ``replicas`` that are alive, as their status files say."""
    live = []
    for rep in replicas:
        if process_alive(rep.pid, rep.started):
            status = read_status(rep.status_file)
            live.append(ReplicaView(rep, status.state, status.error, status.in_flight, status.capacity))
    return ServiceView(row, process_alive(row.supervisor_pid, row.supervisor_started), tuple(live))
