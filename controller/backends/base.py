"""The protocol every backend implements: read actual state, create, update and delete resources.

Like a Terraform provider, a backend knows how to do things to one kind of target; it does not
decide *what* to do (that is the planner's job) and it never sleeps waiting for an event that
the reconcile loop could observe on its next pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from controller.backends.keys import KeyName
from controller.structs.manifests import Kind
from controller.structs.plans import Change
from controller.structs.rollouts import RolloutState, Traffic, VersionFigures
from controller.structs.states import ActualResource, ActualState, DesiredResource, DesiredState, ResourceId
from controller.structs.tokens import AccessToken

ProgressFn = Callable[[str, float | None], None]
"""Reports progress of a long operation: a short message and a fraction done (or None if unknown)."""


def no_progress(message: str, fraction: float | None) -> None:
    """A progress sink that drops everything."""


@dataclass(frozen=True)
class ApplyContext:
    """What a backend needs besides the resource itself to apply a change.

    ``root`` is the folder on disk where the manifests' relative paths resolve (the checkout of
    ``revision``). ``desired`` gives access to related resources (a service's environment and
    models). ``controller_name`` and ``source`` go into the ownership tags.
    """

    controller_name: str
    revision: str
    root: str
    desired: DesiredState
    progress: ProgressFn = field(default=no_progress)
    # The source applying (``structs.states.source_id``), written in the ownership tags.
    source: str = ""


class KindHandler(Protocol):
    """One resource kind on one backend, as a Terraform provider has one implementation per resource type.

    ``replace_fields`` is a class attribute (dotted spec paths that cannot change in place), so the
    planner can ask a backend's declaration without opening the backend.
    """

    kind: Kind
    replace_fields: frozenset[str]

    def read(self) -> Iterable[ActualResource]:
        """Every resource of this kind the backend sees, with one list call (or a few)."""
        ...

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> str | None:
        """Create ``resource``; may return a note for the history (see ``Backend.create``)."""
        ...

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> str | None:
        """Bring an existing resource to ``resource``'s spec; may return a note for the history."""
        ...

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Delete ``id``; already gone is fine."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Read / create / update / delete per resource kind, plus readiness."""

    name: str

    def read(self) -> ActualState:
        """Actual state of every resource this backend sees, owned or not.

        Implementations make a number of calls proportional to the number of kinds, not of
        resources (list calls), and report drift: a killed replica is visible here.
        """
        ...

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> str | None:
        """Create ``resource``. Raises ``PermanentError`` or ``TransientError`` on failure.

        May return a short note that users must find in the history afterwards (a service that
        moved to a new scoring URI says where); ``None`` otherwise.
        """
        ...

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> str | None:
        """Bring an existing resource to ``resource``'s spec, in place (or by rolling replicas).

        May return a note for the history, as ``create`` does.
        """
        ...

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Delete the resource; deleting something already gone is not an error."""
        ...

    def replace_fields(self, kind: Kind) -> frozenset[str]:
        """Dotted spec paths of ``kind`` that cannot change in place: a change forces a replace."""
        ...

    def close(self) -> None:
        """Release connections and handles. Never stops the services it manages."""
        ...


@runtime_checkable
class ServiceAccess(Protocol):
    """Optional, beside ``Backend``: a service's keys and logs, for ``amlops keys`` and ``amlops logs``.

    Not part of reconciling (the loop never needs a key), so a backend may leave it out; callers
    check ``isinstance(backend, ServiceAccess)``. Keys are returned, never logged.
    """

    def get_keys(self, service: str) -> tuple[str, str]:
        """``(primary, secondary)`` keys of a service with ``auth: key``."""
        ...

    def regenerate_key(self, service: str, which: KeyName) -> None:
        """Replace the primary or secondary key of a service; the other keeps working."""
        ...

    def get_token(self, service: str) -> AccessToken:
        """A fresh access token of a service with ``auth: token`` (``Webservice.get_access_token()``)."""
        ...

    def tail_log(self, service: str, replica: int = 0, lines: int = 100) -> str:
        """The last ``lines`` lines of a service's log (of replica ``replica`` where the backend can pick one)."""
        ...


@runtime_checkable
class TrafficSplitting(Protocol):
    """Optional, beside ``Backend``: a candidate version of a service beside the live one, and a traffic split.

    The primitives a rollout (``controller.core.rolling_out``) is made of; the backend decides
    nothing, it only does and reports. None of them waits for a version to become ready: the
    rollout asks again on its next pass. The rollout's state is kept by the backend, next to the
    split it describes, so that a restarted controller finds both.
    """

    def rollout_state(self, service: str) -> RolloutState | None:
        """The stored state of ``service``'s rollout in progress (with a pending request), or None."""
        ...

    def save_rollout(self, service: str, state: RolloutState | None) -> None:
        """Store the state of ``service``'s rollout, or forget it (None)."""
        ...

    def request_rollout(self, service: str, action: str) -> bool:
        """Record a person's ``abort`` or ``promote``; False when no rollout is in progress."""
        ...

    def needs_candidate(self, resource: DesiredResource, ctx: ApplyContext) -> bool:
        """Whether applying ``resource`` starts a new version of a running service (else it is a plain update)."""
        ...

    def start_candidate(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Start the new version beside the live one, with no traffic."""
        ...

    def candidate_health(self, service: str) -> tuple[str, str]:
        """``("starting" | "ready" | "failed", message)`` for the candidate version."""
        ...

    def set_weight(self, service: str, weight: int) -> None:
        """Send ``weight`` percent of the service's scoring requests to the candidate (0: none)."""
        ...

    def traffic(self, service: str) -> Traffic:
        """Each version's replicas' own request counters, now."""
        ...

    def sample(self, service: str, body: bytes, candidate: bool) -> tuple[int, bytes]:
        """Send one scoring request to the candidate (or the live version) alone; its status and body."""
        ...

    def promote_candidate(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Make the new version the live one (its traffic keeps going to the candidate meanwhile)."""
        ...

    def promoted(self, service: str) -> bool:
        """Whether the live version now runs ``promote_candidate``'s version on every replica."""
        ...

    def discard_candidate(self, service: str) -> None:
        """Return all traffic to the live version and remove the candidate (idempotent)."""
        ...


@runtime_checkable
class TrafficWindows(Protocol):
    """Optional, beside ``TrafficSplitting``: metrics asked for over a time span rather than read as counters.

    Azure Monitor answers request counts, 5xx and latency percentiles over a span; a percentile over
    a step cannot be had by subtracting two readings, so such a backend is asked for each step's
    window directly (from the step's start until now).
    """

    def figures_since(self, service: str, since: float) -> tuple[VersionFigures, VersionFigures]:
        """``(candidate, live)`` figures over the scoring requests answered from ``since`` (epoch seconds) until now."""
        ...

