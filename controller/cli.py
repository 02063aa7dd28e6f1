"""The ``amlops`` command line. Each subcommand parses flags and calls one function below it.

Exit codes (each command's ``--help`` lists its own): 0 success, 1 an error (invalid manifests, a
failed change, an unreadable backend), 64 a usage error (bad flags; EX_USAGE, never 2). Only
``plan``, and ``apply --detailed-exitcode``, use 2: there are changes (planned, or applied), as
Terraform's ``-detailed-exitcode`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TextIO, runtime_checkable

from controller import __version__
from controller.backends.base import ApplyContext, Backend, ServiceAccess, TrafficSplitting
from controller.completing import bash_completion
from controller.core.connecting import BackendPool
from controller.core.executing import execute
from controller.core.planning import as_applied, plan, static_replace_fields
from controller.core.reconciling import ReconcileOptions, plan_step, read_step, reconcile, target_step
from controller.core.recording import Recorder, ResourceStatus
from controller.core.rendering import (
    JSON_FORMAT_VERSION,
    describe_rollout_state,
    render_json,
    render_markdown,
    render_text,
    render_validation_github,
    render_validation_json,
)
from controller.core.reviewing import changed_files, with_changed_files
from controller.core.rolling_out import describe, intervene
from controller.runtime.flags import add_run_arguments
from controller.runtime.locking import LeaderLock
from controller.runtime.logs import RedactingFilter, configure_logging
from controller.runtime.statuses import mark_sync
from controller.settings import Settings, resolve_settings
from controller.sources.loading import desired_documents, load_desired_state
from controller.sources.overlays import documents_yaml
from controller.structs.errors import (
    BackendError,
    ManifestError,
    PermanentError,
    StateDirFull,
    ValidationFailed,
)
from controller.structs.manifests import Kind
from controller.structs.plans import Action, Change, Plan
from controller.structs.results import ChangeStatus, ExecutionEvent, ExecutionPhase, ReconcileStatus
from controller.structs.schemas import manifest_schemas
from controller.structs.states import ActualResource, ActualState, DesiredState, ResourceId, source_id

Handler = Callable[[argparse.Namespace], int]


def _root_and_path(target: str) -> tuple[Path, str]:
    """The repo boundary for ``target`` (cwd when the target lies under it) and the path inside it."""
    cwd = Path.cwd()
    absolute = Path(target).absolute()
    try:
        return cwd, absolute.relative_to(cwd).as_posix() or "."
    except ValueError:
        base = absolute if absolute.is_dir() else absolute.parent
        # An overlay reaches into its repository (../base): the boundary is the Git work tree's top.
        top = next((p for p in (base, *base.parents) if (p / ".git").exists()), None)
        if top is not None:
            return top, absolute.relative_to(top).as_posix() or "."
        return base, "." if absolute.is_dir() else absolute.name


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate manifests; print every error as ``file:line: Kind name: field: message`` (or as JSON, or
    as GitHub Actions ``::error`` annotations with ``--output github``)."""
    errors: list[ManifestError] = []
    total = 0
    output = getattr(args, "output", "text")
    for target in args.paths:
        root, path = _root_and_path(target)
        if getattr(args, "render", False) and output == "text":  # json and github keep stdout to one format
            _print_rendered(root, path)
        try:
            state = load_desired_state(root, path)
        except ValidationFailed as exc:
            errors.extend(_relative_to_cwd(error, root) for error in exc.errors)
            continue
        total += len(state)
    if output == "json":
        sys.stdout.write(render_validation_json(total, errors))
    elif output == "github":
        sys.stdout.write(render_validation_github(errors))
        if not errors:
            print(f"{total} resources valid", file=sys.stderr)
    else:
        for error in errors:
            print(error, file=sys.stderr)
        if not errors:
            print(f"{total} resources valid")
    return EXIT_ERROR if errors else EXIT_OK


def _relative_to_cwd(error: ManifestError, root: Path) -> ManifestError:
    """``error`` with its file named from the current folder (what annotations and editors expect)."""
    try:
        shown = (root / error.file).absolute().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return error
    return dataclasses.replace(error, file=shown)


def _print_rendered(root: Path, path: str) -> None:
    """The documents ``path`` renders to (an overlay's kustomization applied), as YAML on stdout."""
    documents, _ = desired_documents(root, root / path)
    sys.stdout.write(documents_yaml(documents))


def cmd_render(args: argparse.Namespace) -> int:
    """Print what a folder renders to (overlays applied), then validate it; exit 1 on any error."""
    args.render = True
    failed = False
    for target in args.paths:
        root, path = _root_and_path(target)
        _print_rendered(root, path)
        try:
            load_desired_state(root, path)
        except ValidationFailed as exc:
            failed = True
            for error in exc.errors:
                print(error, file=sys.stderr)
    return 1 if failed else 0


def cmd_schemas(args: argparse.Namespace) -> int:
    """Write (or with --check, compare) the JSON Schemas generated from the manifest models."""
    out = Path(args.dir)
    stale = []
    for name, schema in manifest_schemas().items():
        text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        target = out / name
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(str(target))
        else:
            out.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    if stale:
        print("stale schemas (run `amlops schemas export`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run one scoring host in the foreground, in place of this process (TensorFlow stays out of the CLI)."""
    argv = [sys.executable, "-m", "controller.scoring", *args.rest]
    # The scoring host's --help and usage errors name the command the user typed.
    os.execve(sys.executable, argv, {**os.environ, "AMLOPS_PROG": "amlops serve"})
    return 0  # pragma: no cover - execv does not return


# --- shared pieces ------------------------------------------------------------------------------

EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_USAGE = 0, 1, 2, 64


# The redaction filter of this process's log handler: backends' credentials join it when they open.
_REDACTOR = RedactingFilter()


def _pool(settings: Settings) -> BackendPool:
    return BackendPool(settings.state_dir, settings.controller_name, on_secrets=_REDACTOR.add_secrets)


def _settings(args: argparse.Namespace) -> Settings:
    return resolve_settings(getattr(args, "state_dir", None), getattr(args, "controller_name", None))


def _revision_of(root: Path) -> str:
    """The commit checked out at ``root`` (``+dirty`` when the tree has edits), or ``working-tree``."""
    try:
        import git

        repo = git.Repo(root, search_parent_directories=True)
        sha = repo.head.commit.hexsha[:12]
        return sha + ("+dirty" if repo.is_dirty(untracked_files=True) else "")
    except Exception:  # not a repo, no commits, git missing: the folder is all there is
        return "working-tree"


def _print_validation(exc: ValidationFailed) -> int:
    for error in exc.errors:
        print(error, file=sys.stderr)
    print(f"{len(exc.errors)} error(s); nothing planned", file=sys.stderr)
    return EXIT_ERROR


def _render(the_plan: Plan, output: str, color: bool) -> str:
    if output == "json":
        return render_json(the_plan)
    if output == "markdown":
        return render_markdown(the_plan)
    return render_text(the_plan, color=color)


def _use_color(args: argparse.Namespace, stream: TextIO) -> bool:
    return not getattr(args, "no_color", False) and stream.isatty() and "NO_COLOR" not in os.environ


def _confirm(question: str, assume_yes: bool) -> bool:
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        print(f"{question} refused: not a terminal; pass --yes to confirm", file=sys.stderr)
        return False
    return input(f"{question} Only 'yes' will be accepted: ").strip() == "yes"


class _LiveProgress:
    """One line per change on a terminal (rewritten in place), plain lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started: dict[ResourceId, float] = {}

    def __call__(self, event: ExecutionEvent) -> None:
        label = f"{event.action.symbol} {event.id}"
        if event.phase is ExecutionPhase.STARTED:
            self.started.setdefault(event.id, time.monotonic())
            if event.attempt == 1:
                self._line(f"{label}: {event.action.value}…", final=False)
            return
        elapsed = time.monotonic() - self.started.get(event.id, time.monotonic())
        if event.phase is ExecutionPhase.RETRYING:
            self._line(f"{label}: attempt {event.attempt} failed, {event.message}", final=False)
        elif event.phase is ExecutionPhase.SUCCEEDED:
            self._line(f"{label}: done after {elapsed:.1f}s", final=True)
        elif event.phase is ExecutionPhase.PROGRESSING:
            self._line(f"{label}: {event.message}", final=False)
        else:
            self._line(f"{label}: {event.phase.value}: {event.message}", final=True)

    def _line(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        elif final or "attempt" in text:
            self.stream.write(text + "\n")
        self.stream.flush()

    def backend(self, message: str, fraction: float | None) -> None:
        """Backend progress (``2/3 replicas ready``) as a transient line on a terminal."""
        if self.tty:
            self.stream.write("\r\x1b[2K  " + message)
            self.stream.flush()


# --- plan ---------------------------------------------------------------------------------------


@contextmanager
def _checkout(repo_dir: Path, ref: str) -> Iterator[tuple[Path, str]]:
    """``ref``'s tree extracted into a temp folder (the user's working tree is never touched)."""
    import git

    repo = git.Repo(repo_dir, search_parent_directories=True)
    commit = repo.commit(ref)
    with tempfile.TemporaryDirectory(prefix="amlops-plan-") as tmp:
        archive = Path(tmp) / "tree.tar"
        with archive.open("wb") as handle:
            repo.archive(handle, treeish=commit.hexsha, format="tar")
        target = Path(tmp) / "tree"
        target.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        yield target, commit.hexsha[:12]


def _plan_between_refs(args: argparse.Namespace, settings: Settings) -> int:
    """What merging ``--head`` would change relative to ``--base``: Git only, no backend at all."""
    import git

    repo_dir = Path(args.repo).absolute()
    manifests = args.path or args.path_arg
    try:
        with _checkout(repo_dir, args.base) as (base_root, base_sha), _checkout(repo_dir, args.head) as (head_root, head_sha):
            try:
                base = load_desired_state(base_root, manifests, revision=base_sha)
            except ValidationFailed as exc:
                print(f"base {args.base} ({base_sha}) is invalid; planning against an empty state:", file=sys.stderr)
                for error in exc.errors:
                    print(f"  {error}", file=sys.stderr)
                base = DesiredState(base_sha, str(base_root), {})
            try:
                head = load_desired_state(head_root, manifests, revision=head_sha)
            except ValidationFailed as exc:
                return _print_validation(exc)
            files = changed_files(base, head, base_root, head_root)  # while both trees are on disk
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        print(f"amlops plan: {repo_dir} is not a Git repository (--repo names one)", file=sys.stderr)
        return EXIT_ERROR
    except (git.BadName, git.BadObject) as exc:
        # An unknown ref is a user's typo or a branch not fetched yet: one line, never a traceback.
        print(f"amlops plan: {exc} in {repo_dir} (is the branch fetched? git fetch origin <branch>)", file=sys.stderr)
        return EXIT_ERROR
    except git.GitCommandError as exc:
        detail = " ".join(str(exc.stderr or exc).replace("stderr:", "").split()).strip("'\" ")
        print(f"amlops plan: git {exc.command[1] if len(exc.command) > 1 else ''} failed: {detail}", file=sys.stderr)
        return EXIT_ERROR
    except (git.GitError, ValueError) as exc:
        print(f"amlops plan: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_ERROR
    the_plan = plan(
        head,
        as_applied(base, controller_name=settings.controller_name),
        controller_name=settings.controller_name,
        replace_fields=static_replace_fields,
        base_revision=base_sha,
        allow_mass_delete=args.allow_mass_delete,
    )
    the_plan = with_changed_files(the_plan, files)
    sys.stdout.write(_render(the_plan, args.output, _use_color(args, sys.stdout)))
    return EXIT_CHANGES if the_plan.has_changes else EXIT_OK


def _plan_against_backend(args: argparse.Namespace, settings: Settings) -> tuple[Plan | None, DesiredState | None, int]:
    root, path = _root_and_path(args.path_arg)
    try:
        desired = load_desired_state(root, path, revision=_revision_of(root))
    except ValidationFailed as exc:
        return None, None, _print_validation(exc)
    pool = _pool(settings)
    try:
        targets = target_step(desired, pool.backend_for)
        actual = read_step(targets)
        options = ReconcileOptions(controller_name=settings.controller_name, source=source_id(str(root), None, path),
                                   allow_mass_delete=getattr(args, "allow_mass_delete", False))
        the_plan = plan_step(desired, actual, targets, options)
    except BackendError as exc:
        print(f"amlops: reading actual state failed: {exc}", file=sys.stderr)
        return None, None, EXIT_ERROR
    finally:
        pool.close()
    return the_plan, desired, EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    """Show what apply would change; exit 0 (none), 2 (changes) or 1 (error)."""
    settings = _settings(args)
    if args.base:
        return _plan_between_refs(args, settings)
    the_plan, _, code = _plan_against_backend(args, settings)
    if the_plan is None:
        return code
    sys.stdout.write(_render(the_plan, args.output, _use_color(args, sys.stdout)))
    return EXIT_CHANGES if the_plan.has_changes else EXIT_OK


# --- apply --------------------------------------------------------------------------------------


def cmd_apply(args: argparse.Namespace) -> int:
    """Plan, show, confirm and apply once; exit 0 (applied, or nothing to do) or 1 (failed, invalid, held,
    refused); with ``--detailed-exitcode``, 2 when changes were applied.

    The plan shown is the plan applied: confirmation happens inside the reconcile pass, after its
    own read and plan, so nothing that changed while the prompt waited slips in unseen.
    """
    settings = _settings(args)
    root, path = _root_and_path(args.path_arg)
    color = _use_color(args, sys.stdout)
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
        return _confirm("Apply these changes?", args.yes)

    progress = _LiveProgress(sys.stderr)
    pool = _pool(settings)
    try:
        # The same source name as ``amlops run --repo <this folder> --path <path>``: one inventory.
        options = ReconcileOptions(controller_name=settings.controller_name, source=source_id(str(root), None, path),
                                   allow_mass_delete=args.allow_mass_delete,
                                   parallelism=args.parallelism, progress=progress, backend_progress=progress.backend,
                                   confirm=confirm)
        revision = _revision_of(root)
        outcome = reconcile(root, path, revision, pool.backend_for, Recorder(settings.state_dir), options)
        while outcome.status is ReconcileStatus.PROGRESSING and outcome.requeue_after is not None:
            # A rollout under way: the confirmed change is carried on, pass after pass, until it ends.
            time.sleep(outcome.requeue_after)
            outcome = reconcile(root, path, revision, pool.backend_for, Recorder(settings.state_dir),
                                replace(options, confirm=None))
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


# --- status / history -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _BackendsInUse:
    """The backends a manifests folder's workspaces name (each once), and which one holds each declared resource."""

    backends: tuple[Backend, ...]
    owner: Mapping[ResourceId, Backend]


@runtime_checkable
class _LogFiles(Protocol):
    """A backend whose replica logs are files on this machine (the local one): what ``logs --follow`` tails."""

    def log_path(self, service: str, replica: int = 0) -> Path: ...


def _manifests_path(args: argparse.Namespace) -> str | None:
    """``--path``; else ``manifests`` when that folder is in the cwd; else None (the local backend alone)."""
    if args.path is not None:
        return str(args.path)
    return "manifests" if Path("manifests").is_dir() else None


def _backends_in_use(args: argparse.Namespace, pool: BackendPool, command: str) -> _BackendsInUse:
    """Open the backends the manifests' workspaces name, as apply would; the local backend alone without manifests.

    Invalid manifests say so and fall back to the local backend: status, keys and logs are what
    one reaches for while a commit is broken. Raises ``BackendError`` when a backend cannot be opened.
    """
    target = _manifests_path(args)
    if target is not None:
        root, path = _root_and_path(target)
        try:
            desired = load_desired_state(root, path)
        except ValidationFailed as exc:
            first = f"; first: {exc.errors[0]}" if exc.errors else ""
            print(f"amlops {command}: the manifests in {target} are invalid ({len(exc.errors)} error(s){first}); "
                  "using the local backend only", file=sys.stderr)
        else:
            targets = target_step(desired, pool.backend_for)
            return _BackendsInUse(tuple(targets.backends), dict(targets.owner))
    return _BackendsInUse((pool.backend_for(None),), {})


def _status_row(resource: ActualResource, backend: Backend, controller_name: str,
                record: ResourceStatus | None) -> dict[str, Any]:
    conditions = [c.to_json() for c in resource.conditions]
    row: dict[str, Any] = {
        "kind": resource.id.kind.value,
        "name": resource.id.name,
        "backend": backend.name,
        "managed": resource.owned_by(controller_name),
        "conditions": conditions,
        "recordedConditions": record.to_json()["conditions"] if record else [],
        "lastAppliedRevision": record.last_applied_revision if record else resource.tags.get("amlops.dev/revision"),
        "lastAttemptedRevision": record.last_attempted_revision if record else None,
    }
    if resource.id.kind is Kind.WEBSERVICE:
        # The local backend counts replicas; Azure ML (SDK v1) reports a state and the desired count only.
        replicas = resource.details.get("replicas") or {}
        row["scoringUri"] = resource.details.get("scoringUri")
        row["replicas"] = {"ready": replicas.get("ready"), "desired": replicas.get("desired", resource.spec.get("replicas"))}
        row["modelVersions"] = list(resource.details.get("modelVersions") or resource.details.get("modelIds") or [])
        if "state" in resource.details:
            row["state"] = resource.details["state"]
        if resource.details.get("placement"):
            row["placement"] = resource.details["placement"]  # which replica runs on which GPU (local backend)
        if isinstance(resource.details.get("rollout"), dict):
            row["rollout"] = resource.details["rollout"]
    return row


def _status_rows(settings: Settings, in_use: _BackendsInUse) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows from every backend in use (a resource two backends report shows once, from the first), and read errors."""
    recorded = Recorder(settings.state_dir).resource_status()
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    seen: set[ResourceId] = set()
    for backend in in_use.backends:
        try:
            actual = backend.read()
        except BackendError as exc:
            errors.append(f"reading the {backend.name} backend failed: {exc}")
            continue
        for resource in actual:
            if resource.id not in seen:
                seen.add(resource.id)
                rows.append(_status_row(resource, backend, settings.controller_name, recorded.get(resource.id)))
    return rows, errors


def _state_word(row: dict[str, Any]) -> str:
    live = [c for c in row["conditions"] if c["type"] != "Synced"]  # Synced is shown on its own
    conditions = {c["type"]: c for c in live or row["recordedConditions"]}
    # A permanent failure is recorded, not observed: the previous version may well be Ready meanwhile.
    conditions.setdefault("Stalled", next((c for c in row["recordedConditions"] if c["type"] == "Stalled"), {}))
    if conditions.get("Stalled", {}).get("status"):
        return f"Stalled ({conditions['Stalled']['reason']})"
    ready = conditions.get("Ready")
    if ready is None:
        return "Unknown"
    return "Ready" if ready["status"] else f"NotReady ({ready['reason']})"


def cmd_status(args: argparse.Namespace) -> int:
    """Every resource with its state and conditions; services with URI, replicas and model versions.

    Reads every backend the manifests' workspaces name (``--path``); exit 1 if one could not be read.
    """
    settings = _settings(args)
    pool = _pool(settings)
    try:
        rows, errors = _status_rows(settings, _backends_in_use(args, pool, "status"))
    except BackendError as exc:
        print(f"amlops status: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        pool.close()
    for error in errors:
        print(f"amlops status: {error}", file=sys.stderr)
    code = EXIT_ERROR if errors else EXIT_OK
    source = Recorder(settings.state_dir).source_status()
    # The same out-of-sync marking as the status page: an invalid or held latest revision ran nowhere.
    last = {"status": source.last_status, "revision": source.last_attempted_revision, "errors": list(source.last_errors)}
    for row in rows:
        row["status"] = _state_word(row)  # the same one-word summary as /api/status gives
        mark_sync(row, last)
    if args.output == "json":
        payload = {"formatVersion": JSON_FORMAT_VERSION, "lastAppliedRevision": source.last_applied_revision,
                   "lastAttemptedRevision": source.last_attempted_revision, "lastStatus": source.last_status,
                   "lastErrors": list(source.last_errors), "resources": rows}
        print(json.dumps(payload, indent=2, sort_keys=True, default=str))
        return code
    print(f"last applied revision: {source.last_applied_revision or '-'}   last attempted: "
          f"{source.last_attempted_revision or '-'} ({source.last_status or 'never reconciled'})")
    if not rows:
        print("no resources")
        return code
    for row in rows:
        line = f"{row['kind'] + '/' + row['name']:<40} {row['status']:<28} rev {row['lastAppliedRevision'] or '-'}"
        if not row["managed"]:
            line += "  (not managed)"
        print(line)
        if row["kind"] == Kind.WEBSERVICE.value:
            replicas = row["replicas"]
            ready = "-" if replicas["ready"] is None else replicas["ready"]
            desired = "-" if replicas["desired"] is None else replicas["desired"]
            print(f"    uri: {row['scoringUri']}  replicas: {ready}/{desired} ready  "
                  f"models: {', '.join(row['modelVersions']) or '-'}")
            for replica in row.get("placement") or []:
                gpus = ", ".join(f"{g['uuid']}" + (f" ({g['name']})" if g.get("name") else "") for g in replica["gpus"])
                print(f"    replica {replica['slot']} (pid {replica['pid']}, generation {replica['generation']}): "
                      f"{gpus or 'no GPU'}")
        if row.get("rollout"):
            print(f"    rollout: {describe_rollout_state(row['rollout'])}")
        observed = {c["type"] for c in row["conditions"]}
        recorded = [c for c in row["recordedConditions"] if c["type"] == "Stalled" and c["type"] not in observed]
        for condition in [*row["conditions"], *recorded]:
            if condition["message"] and (not condition["status"] or condition["type"] not in ("Ready", "Synced")):
                print(f"    {condition['type']}={condition['status']} {condition['reason']}: {condition['message'].splitlines()[0]}")
    return code


def cmd_history(args: argparse.Namespace) -> int:
    """The latest reconciles, newest first."""
    entries = Recorder(_settings(args).state_dir).history(args.limit)
    if args.output == "json":
        print(json.dumps([e.to_json() for e in entries], indent=2, sort_keys=True))
        return EXIT_OK
    for entry in entries:
        counts = entry.plan["summary"] if entry.plan else None
        summary = f"+{counts['add']} ~{counts['change']} -/+{counts['replace']} -{counts['destroy']}" if counts else ""
        took = sum(entry.durations.values())
        print(f"#{entry.id:<5} {entry.started}  {entry.revision:<20} {entry.status:<11} {summary:<18} {took:.2f}s")
        for error in entry.errors[:5]:
            print(f"        {error}")
        if len(entry.errors) > 5:
            print(f"        … and {len(entry.errors) - 5} more")
        for change in entry.changes:
            for step in change.get("rollout") or []:  # a passed rollout keeps every step's figures
                print(f"        {change['kind']}/{change['name']} step {step['step']} ({step['weight']} %) "
                      f"{step['seconds']:g} s: {_figures('new', step['candidate'])}; {_figures('live', step['live'])}")
    return EXIT_OK


# --- keys / logs ------------------------------------------------------------------------------------


def _service_backend(in_use: _BackendsInUse, service: str) -> Backend:
    """The backend holding ``service``: the one its manifest's workspace names, else the one that reports it."""
    rid = ResourceId(Kind.WEBSERVICE, service)
    declared = in_use.owner.get(rid)
    if declared is not None:
        return declared
    if len(in_use.backends) == 1:
        return in_use.backends[0]  # its own error says best whether the service is there
    for backend in in_use.backends:
        if rid in backend.read().resources:
            return backend
    raise PermanentError(f"service {service!r} is not declared in the manifests, and no backend they name has it",
                         reason="NotFound")


def _service_access(args: argparse.Namespace, pool: BackendPool, command: str) -> ServiceAccess:
    backend = _service_backend(_backends_in_use(args, pool, command), args.service)
    if not isinstance(backend, ServiceAccess):
        raise PermanentError(f"the {backend.name} backend cannot give out keys, tokens or logs", reason="Unsupported")
    return backend


def cmd_keys(args: argparse.Namespace) -> int:
    """Print a service's keys to stdout (on request only; they never go to a log), from the backend that holds it."""
    settings = _settings(args)
    pool = _pool(settings)
    try:
        access = _service_access(args, pool, "keys")
        if args.regenerate:
            access.regenerate_key(args.service, args.regenerate)
            print(f"regenerated the {args.regenerate} key of {args.service}", file=sys.stderr)
        primary, secondary = access.get_keys(args.service)
    except BackendError as exc:
        print(f"amlops keys: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        pool.close()
    if args.primary:
        print(primary)
    elif args.output == "json":
        print(json.dumps({"primaryKey": primary, "secondaryKey": secondary}))
    else:
        print(f"primary:   {primary}\nsecondary: {secondary}")
    return EXIT_OK


def _figures(label: str, figures: Mapping[str, Any]) -> str:
    p99 = figures.get("p99Ms")
    return (f"{label} {figures.get('requests', 0)} requests, {figures.get('errors', 0)} errors "
            f"({100 * float(figures.get('errorRate', 0)):.1f} %), p99 {'-' if p99 is None else f'{p99:g} ms'}")


def cmd_rollout(args: argparse.Namespace) -> int:
    """Show where a service's rollout stands, or ask the controller to ``promote`` or ``abort`` it."""
    settings = _settings(args)
    pool = _pool(settings)
    try:
        backend = _service_backend(_backends_in_use(args, pool, "rollout"), args.service)
        if not isinstance(backend, TrafficSplitting):
            raise PermanentError(f"the {backend.name} backend cannot split traffic", reason="Unsupported")
        if args.action != "status":
            if not intervene(backend, args.service, args.action):
                print(f"amlops rollout: {args.service} has no rollout in progress", file=sys.stderr)
                return EXIT_ERROR
            print(f"{args.action} requested for the rollout of {args.service}: the controller acts on its next pass")
            return EXIT_OK
        data = describe(backend, args.service)
    except BackendError as exc:
        print(f"amlops rollout: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        pool.close()
    if args.output == "json":
        print(json.dumps({"service": args.service, "rollout": data}, indent=2, sort_keys=True))
        return EXIT_OK
    if data is None:
        print(f"{args.service}: no rollout in progress")
        return EXIT_OK
    print(f"{args.service}: {describe_rollout_state(data)}")
    if data.get("weights"):
        print(f"  steps: {' → '.join(f'{w} %' for w in data['weights'])}")
    current = data.get("window")
    if current:
        print(f"  this step, {current['seconds']:g} s: {_figures('new', current['candidate'])}; "
              f"{_figures('live', current['live'])}")
    for step in data.get("passed") or []:
        print(f"  passed step {step['step']} ({step['weight']} %) in {step['seconds']:g} s: "
              f"{_figures('new', step['candidate'])}; {_figures('live', step['live'])}")
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    """Print a fresh access token of a service with ``auth: token`` to stdout (never to a log)."""
    settings = _settings(args)
    pool = _pool(settings)
    try:
        token = _service_access(args, pool, "token").get_token(args.service)
    except BackendError as exc:
        print(f"amlops token: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        pool.close()
    if args.output == "json":
        print(json.dumps({"accessToken": token.access_token, "tokenType": token.token_type,
                          "refreshAfter": token.refresh_after, "expiryOn": token.expiry_on}))
    else:
        print(token.access_token)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(token.expiry_on))
        refresh = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(token.refresh_after))
        print(f"expires {when}; fetch a new one after {refresh}", file=sys.stderr)
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    """Print (and with --follow, on the local backend, keep printing) one replica's log."""
    settings = _settings(args)
    pool = _pool(settings)
    try:
        try:
            access = _service_access(args, pool, "logs")
            if args.follow and not isinstance(access, _LogFiles):
                print(f"amlops logs: --follow works on the local backend only; {args.service} is on another one "
                      "(run again without --follow to see its latest lines)", file=sys.stderr)
                return EXIT_ERROR
            print(access.tail_log(args.service, args.replica, args.tail))
        except BackendError as exc:
            print(f"amlops logs: {exc}", file=sys.stderr)
            return EXIT_ERROR
        if not args.follow or not isinstance(access, _LogFiles):
            return EXIT_OK
        return _follow(access.log_path(args.service, args.replica))
    finally:
        pool.close()


def _follow(path: Path) -> int:
    """Print what is appended to ``path`` until interrupted (a rotated or truncated log is read from its start)."""
    position = path.stat().st_size if path.exists() else 0
    try:
        while True:
            if path.exists():
                size = path.stat().st_size
                if size < position:  # the log was rotated or truncated
                    position = 0
                if size > position:
                    with path.open("rb") as handle:
                        handle.seek(position)
                        sys.stdout.write(handle.read().decode(errors="replace"))
                        sys.stdout.flush()
                        position = handle.tell()
            time.sleep(0.5)
    except KeyboardInterrupt:
        return EXIT_OK


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
    settings = _settings(args)
    target = _parse_resource(args.target) if not Path(args.target).exists() else None
    lock = LeaderLock(settings.state_dir)
    if not lock.try_acquire():
        print(f"amlops delete: a controller (pid {lock.holder() or '?'}) is reconciling {settings.state_dir}; "
              "remove the manifests from the repository it follows instead", file=sys.stderr)
        return EXIT_ERROR
    pool = _pool(settings)
    try:
        if target is not None:
            desired = DesiredState("delete", str(Path.cwd()), {})
            owners: dict[ResourceId, Backend] = {target: pool.backend_for(None)}
        else:
            root, path = _root_and_path(args.target)
            try:
                desired = load_desired_state(root, path, revision=_revision_of(root))
            except ValidationFailed as exc:
                return _print_validation(exc)
            # Workspaces are never deleted (as in pruning): they hold what other repos deploy.
            owners = {rid: b for rid, b in target_step(desired, pool.backend_for).owner.items() if rid.kind is not Kind.WORKSPACE}
            # deletionPolicy: Retain protects a resource from a folder-wide delete too; naming it
            # (KIND/NAME) or --include-retained deletes it.
            for rid in sorted(owners, key=lambda r: (r.order(), r.name)):
                resource = desired.resources[rid]
                if getattr(resource.manifest.spec, "deletionPolicy", "Delete") == "Retain" and not args.include_retained:
                    print(f"{rid}: kept (deletionPolicy: Retain; --include-retained deletes it too)", file=sys.stderr)
                    del owners[rid]
        ids = sorted(owners, key=lambda r: (r.order(), r.name))
        seen: dict[int, ActualState] = {}
        for backend in owners.values():
            if id(backend) not in seen:
                seen[id(backend)] = backend.read()
        existing: set[ResourceId] = set()
        for rid in ids:
            found = seen[id(owners[rid])].resources.get(rid)
            if found is None:
                print(f"{rid}: not found", file=sys.stderr)
            elif not found.owned_by(settings.controller_name) and not args.force:
                # Same rule as pruning: what amlops did not create is not amlops' to delete.
                print(f"{rid}: not created by controller {settings.controller_name!r}; skipped (--force deletes it anyway)",
                      file=sys.stderr)
            else:
                existing.add(rid)
        if not existing:
            return EXIT_OK if target is None else EXIT_ERROR
        changes = tuple(Change(rid, Action.DELETE, reason="amlops delete") for rid in
                        sorted(existing, key=lambda r: (-r.order(), r.name)))
        deps = [Change(c.id, c.action, c.diffs, c.reason, c.manifest_file,
                       tuple(o.id for o in changes if o.id.order() > c.id.order())) for c in changes]
        the_plan = Plan(desired.revision, tuple(deps))
        sys.stdout.write(render_text(the_plan, color=_use_color(args, sys.stdout)))
        if not _confirm("Delete these resources?", args.yes):
            return EXIT_ERROR
        ctx = ApplyContext(settings.controller_name, desired.revision, desired.root, desired)
        outcomes = execute(the_plan, desired, owners.__getitem__, ctx, progress=_LiveProgress(sys.stderr))
    finally:
        pool.close()
        lock.release()
    recorder = Recorder(settings.state_dir)
    failed = 0
    for outcome in outcomes:
        if outcome.status is ChangeStatus.SUCCEEDED:
            recorder.forget(outcome.id)
        else:
            failed += 1
            print(f"{outcome.id}: {outcome.error}", file=sys.stderr)
    return EXIT_ERROR if failed else EXIT_OK


# --- run ------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """The long-lived controller; its loop lives in ``controller.runtime.running`` (imported only here)."""
    from controller.runtime.running import main_run

    return main_run(args)


# --- the parser ---------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=None, help="state folder (default $AMLOPS_STATE_DIR or the user state dir)")
    parser.add_argument("--controller-name", default=None, help="owner name in the tags (default $AMLOPS_CONTROLLER_NAME or amlops)")


def _manifests_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", default=None, metavar="PATH",
                        help="manifests folder whose Workspace manifests pick the backends to ask "
                             "(default: manifests, if that folder is here; else the local backend only)")


# --- exit codes, help and completion (every option has help; every command lists its exit codes) ---


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors exiting 64 (EX_USAGE): 2 means "changes" for plan and apply."""

    def error(self, message: str) -> Any:  # argparse types this NoReturn; Any keeps mypy and ruff content
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _exit_codes(*lines: str) -> str:
    return "exit codes:\n" + "\n".join(f"  {line}" for line in (*lines, "64  usage error (unknown flag, missing argument)"))


_EXIT_PLAIN = _exit_codes("0   success", "1   error")


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the shell completion script (``source <(amlops completion bash)``)."""
    sys.stdout.write(bash_completion(build_parser()))
    return EXIT_OK


# --- the parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = _Parser(prog="amlops", description="GitOps for Azure ML GPU inference",
                     epilog=_exit_codes("0   success", "1   error", "2   changes (plan; apply --detailed-exitcode)"),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"amlops {__version__}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    def command(name: str, help_text: str, epilog: str = _EXIT_PLAIN, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    validate = command("validate", "check manifests; exit 1 on any error",
                       _exit_codes("0   every manifest is valid", "1   at least one error (each printed with file and line)"))
    validate.add_argument("paths", nargs="+", metavar="PATH", help="files or folders of manifests")
    validate.add_argument("--output", choices=("text", "json", "github"), default="text",
                          help="text (errors on stderr), json (a document on stdout), or github "
                               "(::error annotations for GitHub Actions, on stdout)")
    validate.add_argument("--render", action="store_true",
                          help="also print the manifests as rendered (an overlay's kustomization applied)")
    validate.set_defaults(handler=cmd_validate)

    render = command("render", "print manifests as rendered (overlays applied), then validate them",
                     _exit_codes("0   rendered and valid", "1   an error (each printed with file and line)"))
    render.add_argument("paths", nargs="+", metavar="PATH",
                        help="files or folders of manifests (a folder with a kustomization.yaml is rendered)")
    render.set_defaults(handler=cmd_render)

    schemas = command("schemas", "JSON Schemas of the manifest kinds")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True, parser_class=_Parser, metavar="ACTION")
    export = schemas_sub.add_parser("export", help="write schemas/*.json", description="write schemas/*.json",
                                    epilog=_exit_codes("0   written, or up to date with --check", "1   stale (--check)"),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    export.add_argument("--dir", default="schemas", help="folder to write the schemas to (default schemas)")
    export.add_argument("--check", action="store_true", help="fail if the files on disk are stale")
    export.set_defaults(handler=cmd_schemas)

    # `serve` and `emulator` parse their own flags (main() hands them over); listed here for --help.
    serve = command("serve", "run one scoring host in the foreground (like azmlinfsrv); see amlops serve --help",
                    _exit_codes("0   drained after SIGTERM", "1   init() failed or the port could not be opened"),
                    add_help=False)
    serve.add_argument("rest", nargs=argparse.REMAINDER, help="the scoring host's flags")
    serve.set_defaults(handler=cmd_serve)
    emulator = command("emulator", "run the Azure ML emulator (HTTPS); see amlops emulator --help", add_help=False)
    emulator.add_argument("rest", nargs=argparse.REMAINDER, help="the emulator's flags")

    plan_cmd = command("plan", "show what apply would change (exit 0 none, 2 changes, 1 error)",
                       _exit_codes("0   no changes", "1   error (invalid manifests, unreadable backend, unknown Git ref)",
                                   "2   changes"))
    plan_cmd.add_argument("path_arg", nargs="?", default="manifests", metavar="PATH", help="manifests folder (default manifests)")
    plan_cmd.add_argument("--output", choices=("text", "markdown", "json"), default="text",
                          help="text for a terminal, markdown for a pull request comment, json for programs")
    plan_cmd.add_argument("--no-color", action="store_true", help="no ANSI colours (also when NO_COLOR is set)")
    plan_cmd.add_argument("--base", default=None, help="Git ref the plan starts from (no backend is read)")
    plan_cmd.add_argument("--head", default="HEAD", help="Git ref whose manifests would be merged (default HEAD)")
    plan_cmd.add_argument("--repo", default=".", help="Git repository for --base/--head (default .)")
    plan_cmd.add_argument("--path", default=None, help="manifests folder inside the repo for --base/--head (default PATH)")
    plan_cmd.add_argument("--allow-mass-delete", action="store_true", help="do not mark mass deletes as held")
    _common(plan_cmd)
    plan_cmd.set_defaults(handler=cmd_plan)

    apply = command("apply", "plan and apply once, with live progress",
                    _exit_codes("0   applied, or nothing to do",
                                "1   error: invalid manifests, a failed change, a held plan, or no confirmation",
                                "2   changes were applied (only with --detailed-exitcode)"))
    apply.add_argument("path_arg", nargs="?", default="manifests", metavar="PATH", help="manifests folder (default manifests)")
    apply.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    apply.add_argument("--detailed-exitcode", action="store_true",
                       help="exit 2 when changes were applied (0 only when there was nothing to do), like terraform")
    apply.add_argument("--allow-mass-delete", action="store_true",
                       help="apply a plan that deletes most owned resources instead of holding it")
    apply.add_argument("--parallelism", type=int, default=4, help="changes applied at once (default 4)")
    apply.add_argument("--no-color", action="store_true", help="no ANSI colours (also when NO_COLOR is set)")
    _common(apply)
    apply.set_defaults(handler=cmd_apply)

    status = command("status", "every resource with its state and conditions",
                     _exit_codes("0   every backend in use was read", "1   a backend could not be read"))
    status.add_argument("--output", choices=("text", "json"), default="text", help="text for people, json for programs")
    _manifests_arg(status)
    _common(status)
    status.set_defaults(handler=cmd_status)

    history = command("history", "recent reconciles, newest first")
    history.add_argument("--limit", type=int, default=20, help="how many reconciles to show (default 20)")
    history.add_argument("--output", choices=("text", "json"), default="text", help="text for people, json for programs")
    _common(history)
    history.set_defaults(handler=cmd_history)

    keys = command("keys", "print a service's keys (to stdout only)")
    keys.add_argument("service", help="web service name")
    keys.add_argument("--regenerate", choices=("primary", "secondary"), default=None,
                      help="regenerate this key first (callers using it are refused from then on)")
    keys.add_argument("--output", choices=("text", "json"), default="text",
                      help="json: primaryKey, secondaryKey, as Azure ML gives them")
    keys.add_argument("--primary", action="store_true", help="print only the primary key (for $(...) in scripts)")
    _manifests_arg(keys)
    _common(keys)
    keys.set_defaults(handler=cmd_keys)

    token = command("token", "print a fresh access token of a service with auth: token (to stdout only)")
    token.add_argument("service", help="web service name")
    token.add_argument("--output", choices=("text", "json"), default="text",
                       help="json: accessToken, tokenType, refreshAfter, expiryOn (Unix seconds), as Azure ML gives them")
    _manifests_arg(token)
    _common(token)
    token.set_defaults(handler=cmd_token)

    rollout = command("rollout", "where a service's rollout stands; promote or abort it",
                      _exit_codes("0   done (status printed; promote/abort recorded)", "1   error (no such service or rollout)"))
    rollout.add_argument("action", choices=("status", "promote", "abort"),
                         help="status: step, weights and live figures; promote: finish now; abort: all traffic back to live")
    rollout.add_argument("service", help="web service name")
    rollout.add_argument("--output", choices=("text", "json"), default="text", help="text for people, json for tools")
    _manifests_arg(rollout)
    _common(rollout)
    rollout.set_defaults(handler=cmd_rollout)

    logs = command("logs", "a service replica's log")
    logs.add_argument("service", help="web service name")
    logs.add_argument("--replica", type=int, default=0,
                      help="replica number, 0-based (local backend; Azure ML returns the log of a replica it picks)")
    logs.add_argument("--tail", type=int, default=100, help="lines to print first")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing new lines (local backend only; on azureml, run again to see new lines)")
    _manifests_arg(logs)
    _common(logs)
    logs.set_defaults(handler=cmd_logs)

    delete = command("delete", "delete KIND/NAME or everything a manifests folder declares",
                     _exit_codes("0   deleted, or nothing of a folder's to delete",
                                 "1   a delete failed, KIND/NAME was not found, or no confirmation"))
    delete.add_argument("target", metavar="PATH|KIND/NAME", help="a manifests folder, or one resource such as Webservice/my-svc")
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    delete.add_argument("--force", action="store_true", help="also delete resources amlops did not create")
    delete.add_argument("--include-retained", action="store_true",
                        help="also delete resources whose deletionPolicy is Retain (clusters, by default)")
    delete.add_argument("--no-color", action="store_true", help="no ANSI colours (also when NO_COLOR is set)")
    _common(delete)
    delete.set_defaults(handler=cmd_delete)

    run = command("run", "the long-lived controller: watch a repo and keep its state applied",
                  _exit_codes("0   stopped cleanly (SIGTERM), or --once reconciled", "1   --once failed or was invalid",
                              "3   --once held the plan (mass delete)"))
    add_run_arguments(run)
    run.set_defaults(handler=cmd_run)

    completion = command("completion", "print a shell completion script: source <(amlops completion bash)")
    completion.add_argument("shell", choices=("bash",), help="the shell to complete in")
    completion.set_defaults(handler=cmd_completion)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``amlops`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        # Every flag after `serve` belongs to the scoring host, as with `azmlinfsrv`.
        return cmd_serve(argparse.Namespace(rest=argv[1:]))
    if argv[:1] == ["emulator"]:
        # The Azure ML emulator parses its own flags; it is imported only when asked for.
        from controller.emulator.__main__ import main as emulator_main

        return emulator_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "run":  # run configures its own logging from --log-format / --log-level
        global _REDACTOR
        _REDACTOR = configure_logging(os.environ.get("AMLOPS_LOG_FORMAT", "text"), logging.WARNING)
    handler: Handler = args.handler
    try:
        return handler(args)
    except StateDirFull as exc:  # a write the state dir's filesystem had no room for: one line, no traceback
        print(f"amlops {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"amlops {args.command}: state dir full: {_settings(args).state_dir}: cannot write "
              f"{exc.filename or 'a file'} ({exc.strerror})", file=sys.stderr)
        return EXIT_ERROR
