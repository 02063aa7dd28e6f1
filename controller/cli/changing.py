"""``amlops plan``, ``apply`` and ``delete``: show, make and remove changes, once, from a folder of manifests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controller.cli.contexts import (
    EXIT_CHANGES,
    EXIT_ERROR,
    EXIT_OK,
    LiveProgress,
    confirm_or_refuse,
    open_pool,
    print_validation,
    render_plan,
    root_and_path,
    settings_of,
    use_color,
)
from controller.core.connecting import source_for
from controller.core.deleting import delete
from controller.core.reconciling import ReconcileOptions, apply_once, plan_once
from controller.core.recording import Recorder
from controller.core.rendering import render_text
from controller.core.reviewing import review
from controller.runtime.locking import LeaderLock
from controller.settings import Settings
from controller.structs.errors import BackendError, RevisionUnavailable, ValidationFailed
from controller.structs.manifests import Kind
from controller.structs.plans import Plan
from controller.structs.results import ChangeStatus, ReconcileStatus
from controller.structs.states import ResourceId


def _plan_between_refs(args: argparse.Namespace, settings: Settings) -> int:
    """What merging ``--head`` would change relative to ``--base``: Git only, no backend at all."""
    try:
        found = review(Path(args.repo).absolute(), args.base, args.head, args.path or args.path_arg,
                       controller_name=settings.controller_name, allow_mass_delete=args.allow_mass_delete)
    except RevisionUnavailable as exc:
        print(f"amlops plan: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if found.base_errors:
        print(f"base {args.base} ({found.base_revision}) is invalid; planning against an empty state:", file=sys.stderr)
        for error in found.base_errors:
            print(f"  {error}", file=sys.stderr)
    if found.plan is None:
        return print_validation(ValidationFailed(found.head_errors))
    sys.stdout.write(render_plan(found.plan, args.output, use_color(args, sys.stdout)))
    return EXIT_CHANGES if found.plan.has_changes else EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    """Show what apply would change; exit 0 (none), 2 (changes) or 1 (error)."""
    settings = settings_of(args)
    if args.base:
        return _plan_between_refs(args, settings)
    root, path = root_and_path(args.path_arg)
    options = ReconcileOptions(controller_name=settings.controller_name, source=source_for(root, path),
                               allow_mass_delete=args.allow_mass_delete)
    pool = open_pool(settings)
    try:
        the_plan = plan_once(root, path, pool.backend_for, options)
    except ValidationFailed as exc:
        return print_validation(exc)
    except BackendError as exc:
        print(f"amlops: reading actual state failed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        pool.close()
    sys.stdout.write(render_plan(the_plan, args.output, use_color(args, sys.stdout)))
    return EXIT_CHANGES if the_plan.has_changes else EXIT_OK


# --- apply --------------------------------------------------------------------------------------


def cmd_apply(args: argparse.Namespace) -> int:
    """Plan, show, confirm and apply once; exit 0 (applied, or nothing to do) or 1 (failed, invalid, held,
    refused); with ``--detailed-exitcode``, 2 when changes were applied.

    The plan shown is the plan applied: confirmation happens inside the reconcile pass, after its
    own read and plan, so nothing that changed while the prompt waited slips in unseen.
    """
    settings = settings_of(args)
    root, path = root_and_path(args.path_arg)
    color = use_color(args, sys.stdout)
    lock = LeaderLock(settings.state_dir)
    if not lock.try_acquire():
        print(f"amlops apply: a controller (pid {lock.holder() or '?'}) is reconciling {settings.state_dir}; "
              "change the repository it follows instead", file=sys.stderr)
        return EXIT_ERROR
    shown: list[Plan] = []

    def confirm(the_plan: Plan) -> bool:
        shown.append(the_plan)
        sys.stdout.write(render_text(the_plan, color=color))
        sys.stdout.flush()
        return confirm_or_refuse("Apply these changes?", args.yes)

    progress = LiveProgress(sys.stderr)
    pool = open_pool(settings)
    try:
        # The same source name as ``amlops run --repo <this folder> --path <path>``: one inventory.
        options = ReconcileOptions(controller_name=settings.controller_name, source=source_for(root, path),
                                   allow_mass_delete=args.allow_mass_delete,
                                   parallelism=args.parallelism, progress=progress, backend_progress=progress.backend,
                                   confirm=confirm)
        # A rollout under way: the confirmed change is carried on, pass after pass, until it ends.
        outcome = apply_once(root, path, pool.backend_for, Recorder(settings.state_dir), options)
    finally:
        pool.close()
        lock.release()
    if not shown and outcome.plan is not None:
        sys.stdout.write(render_text(outcome.plan, color=color))
    for error in outcome.errors:
        print(error, file=sys.stderr)
    if outcome.status is ReconcileStatus.INVALID:
        print(f"{len(outcome.errors)} error(s); nothing applied", file=sys.stderr)
        return EXIT_ERROR
    if outcome.status is ReconcileStatus.NO_CHANGES:
        # Nothing to do can still mean a resource is stuck on this very input (Unschedulable, ...).
        stalled = [c for c in outcome.plan.changes if c.reason.startswith("stalled")] if outcome.plan else []
        for change in stalled:
            print(f"amlops apply: {change.id} is still {change.reason.splitlines()[0]}", file=sys.stderr)
        return EXIT_ERROR if stalled else EXIT_OK
    if outcome.status is ReconcileStatus.HELD:
        print("amlops apply: nothing applied", file=sys.stderr)
        return EXIT_ERROR
    done = sum(1 for c in outcome.changes if c.status is ChangeStatus.SUCCEEDED)
    print(f"Apply {outcome.status.value}: {done} of {len(outcome.changes)} change(s) succeeded at {outcome.revision}.")
    if outcome.status is not ReconcileStatus.APPLIED:
        return EXIT_ERROR
    return EXIT_CHANGES if args.detailed_exitcode else EXIT_OK


# --- delete -------------------------------------------------------------------------------------


def _parse_resource(text: str) -> ResourceId | None:
    kind, sep, name = text.partition("/")
    if not sep or not name:
        return None
    for known in Kind:
        if known.value.lower() == kind.lower():
            return ResourceId(known, name)
    return None


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete one resource (``KIND/NAME``) or everything a folder of manifests declares, services first."""
    settings = settings_of(args)
    target = _parse_resource(args.target) if not Path(args.target).exists() else None
    lock = LeaderLock(settings.state_dir)
    if not lock.try_acquire():
        print(f"amlops delete: a controller (pid {lock.holder() or '?'}) is reconciling {settings.state_dir}; "
              "remove the manifests from the repository it follows instead", file=sys.stderr)
        return EXIT_ERROR
    pool = open_pool(settings)

    def confirm(the_plan: Plan) -> bool:
        sys.stdout.write(render_text(the_plan, color=use_color(args, sys.stdout)))
        return confirm_or_refuse("Delete these resources?", args.yes)

    try:
        deletion = delete(target if target is not None else root_and_path(args.target), pool.backend_for,
                          Recorder(settings.state_dir), controller_name=settings.controller_name, confirm=confirm,
                          force=args.force, include_retained=args.include_retained,
                          progress=LiveProgress(sys.stderr), note=lambda line: print(line, file=sys.stderr))
    except ValidationFailed as exc:
        return print_validation(exc)
    finally:
        pool.close()
        lock.release()
    if deletion.plan is None:
        return EXIT_OK if target is None else EXIT_ERROR
    if not deletion.confirmed:
        return EXIT_ERROR
    for outcome in deletion.failed:
        print(f"{outcome.id}: {outcome.error}", file=sys.stderr)
    return EXIT_ERROR if deletion.failed else EXIT_OK
