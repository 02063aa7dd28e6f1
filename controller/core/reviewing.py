"""Plans for review (a pull request): what merging one commit onto another would change, and which
files moved under each resource whose content changed.

A plan between two Git trees says *that* a model's files changed (their digest); a reviewer wants
*which* ones. Both trees are on disk while planning, so the files under each changed resource's
path fields (``path``, ``sourceDirectory``, ``entryScript``, ``condaFile``, ``pipRequirements``)
are compared by content and listed in the change's reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from controller.core.planning import as_applied, plan, static_replace_fields
from controller.sources.loading import load_desired_state
from controller.sources.revisions import checkout
from controller.structs.errors import ManifestError, RevisionUnavailable, ValidationFailed
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


@dataclass(frozen=True)
class Review:
    """A plan between two commits (None when the head is invalid), and the validation errors of each side.

    An invalid base is planned against as if empty; an invalid head has no plan.
    """

    plan: Plan | None
    base_revision: str
    base_errors: tuple[ManifestError, ...] = ()
    head_errors: tuple[ManifestError, ...] = ()


def review(repo_dir: Path, base_ref: str, head_ref: str, path: str, *, controller_name: str,
           allow_mass_delete: bool = False) -> Review:
    """What merging ``head_ref`` would change relative to ``base_ref`` (``amlops plan --base``): Git only, no backend.

    The base is taken as applied by ``controller_name``; an invalid base counts as empty, an invalid
    head gets no plan (both say why in the review). Raises ``RevisionUnavailable`` for a folder
    that is no repository, an unknown ref or a failing git command.
    """
    base_errors: tuple[ManifestError, ...] = ()
    try:
        with checkout(repo_dir, base_ref) as (base_root, base_sha), checkout(repo_dir, head_ref) as (head_root, head_sha):
            try:
                base = load_desired_state(base_root, path, revision=base_sha)
            except ValidationFailed as exc:
                base_errors = tuple(exc.errors)
                base = DesiredState(base_sha, str(base_root), {})
            try:
                head = load_desired_state(head_root, path, revision=head_sha)
            except ValidationFailed as exc:
                return Review(None, base_sha, base_errors, tuple(exc.errors))
            files = changed_files(base, head, base_root, head_root)  # while both trees are on disk
    except ValueError as exc:
        raise RevisionUnavailable(" ".join(str(exc).split())) from None
    the_plan = plan(
        head,
        as_applied(base, controller_name=controller_name),
        controller_name=controller_name,
        replace_fields=static_replace_fields,
        base_revision=base_sha,
        allow_mass_delete=allow_mass_delete,
    )
    return Review(with_changed_files(the_plan, files), base_sha, base_errors)
