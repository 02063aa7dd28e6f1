"""Plans for review (a pull request): which files moved under each resource whose content changed.

A plan between two Git trees says *that* a model's files changed (their digest); a reviewer wants
*which* ones. Both trees are on disk while planning, so the files under each changed resource's
path fields (``path``, ``sourceDirectory``, ``entryScript``, ``condaFile``, ``pipRequirements``)
are compared by content and listed in the change's reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Final

from controller.structs.plans import Action, Plan
from controller.structs.states import DesiredState, ResourceId

FILES_SHOWN: Final = 20


def _contents(root: Path, relative: str) -> dict[str, str]:
    """Digest of every file at or under ``root/relative``, keyed by its path relative to ``root``."""
    start = root / relative
    if start.is_file():
        paths = [start]
    elif start.is_dir():
        paths = sorted(p for p in start.rglob("*") if p.is_file())
    else:
        return {}
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def changed_files(base: DesiredState, head: DesiredState, base_root: Path, head_root: Path) -> dict[ResourceId, list[str]]:
    """Per resource in both trees, its files that were added (``A``), modified (``M``) or deleted (``D``)."""
    found: dict[ResourceId, list[str]] = {}
    for rid, resource in head.resources.items():
        before = base.resources.get(rid)
        if before is None:
            continue
        old: dict[str, str] = {}
        new: dict[str, str] = {}
        for relative in before.files.values():
            old.update(_contents(base_root, relative))
        for relative in resource.files.values():
            new.update(_contents(head_root, relative))
        lines = [f"M {p}" for p in sorted(old.keys() & new.keys()) if old[p] != new[p]]
        lines += [f"A {p}" for p in sorted(new.keys() - old.keys())]
        lines += [f"D {p}" for p in sorted(old.keys() - new.keys())]
        if lines:
            found[rid] = sorted(lines, key=lambda line: line[2:])
    return found


def with_changed_files(plan: Plan, files: dict[ResourceId, list[str]]) -> Plan:
    """``plan`` with each updated or replaced resource's changed files appended to its reason."""
    changes = []
    for change in plan.changes:
        listed = files.get(change.id)
        if listed and change.action in (Action.UPDATE, Action.REPLACE):
            shown = ", ".join(listed[:FILES_SHOWN])
            more = f" and {len(listed) - FILES_SHOWN} more" if len(listed) > FILES_SHOWN else ""
            change = dataclasses.replace(change, reason=f"{change.reason}; files: {shown}{more}")
        changes.append(change)
    return dataclasses.replace(plan, changes=tuple(changes))
