"""Plans as frozen data: what a reconcile will do, and why. Renderers turn them into text."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from controller.structs.states import ResourceId


class Action(StrEnum):
    """What happens to one resource. Symbols follow Terraform's."""

    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"
    NOOP = "no-op"

    @property
    def symbol(self) -> str:
        return _SYMBOLS[self]


_SYMBOLS = {
    Action.CREATE: "+",
    Action.UPDATE: "~",
    Action.REPLACE: "-/+",
    Action.DELETE: "-",
    Action.NOOP: " ",
}


@dataclass(frozen=True)
class FieldDiff:
    """One field that differs: its dotted path, values before and after, and whether it forces a replace."""

    path: str
    before: Any
    after: Any
    forces_replace: bool = False


@dataclass(frozen=True)
class Change:
    """One resource's change: action, differing fields and the reason a reviewer should read."""

    id: ResourceId
    action: Action
    diffs: tuple[FieldDiff, ...] = ()
    reason: str = ""
    manifest_file: str | None = None
    depends_on: tuple[ResourceId, ...] = ()
    # How a new version of a service reaches traffic (canary steps, blue/green), when not replica by replica.
    rollout: str = ""


@dataclass(frozen=True)
class Plan:
    """An ordered list of changes from actual to desired state at one revision.

    ``held`` is set when a safety rule (mass delete) keeps the plan from being applied until a
    human confirms it; the plan is still shown in full.
    """

    revision: str
    changes: tuple[Change, ...]
    base_revision: str | None = None
    held: str | None = None
    warnings: tuple[str, ...] = field(default=())

    def __iter__(self) -> Iterator[Change]:
        return iter(self.changes)

    @property
    def effective(self) -> tuple[Change, ...]:
        """Changes that do something (everything but no-ops)."""
        return tuple(c for c in self.changes if c.action is not Action.NOOP)

    @property
    def has_changes(self) -> bool:
        return bool(self.effective)

    def count(self, action: Action) -> int:
        """How many changes have ``action``."""
        return sum(1 for c in self.changes if c.action is action)
