"""What every command of the command line works with: exit codes, settings, the backend pool, the
folder a command points at, and the terminal (colour, confirmation, live progress)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from controller.core.connecting import BackendPool, Targets, folder_targets
from controller.core.rendering import render_json, render_markdown, render_text
from controller.runtime.logs import RedactingFilter
from controller.settings import Settings, resolve_settings
from controller.structs.errors import ValidationFailed
from controller.structs.plans import Plan
from controller.structs.results import ExecutionEvent, ExecutionPhase
from controller.structs.states import ResourceId

EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_USAGE = 0, 1, 2, 64


# The redaction filter of this process's log handler: backends' credentials join it when they open.
_redactor = RedactingFilter()


def use_redactor(redactor: RedactingFilter) -> None:
    """Feed the credentials of backends opened from now on to ``redactor`` (the log handler's filter)."""
    global _redactor
    _redactor = redactor


def root_and_path(target: str) -> tuple[Path, str]:
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


def open_pool(settings: Settings) -> BackendPool:
    """The backends of one command, opened on first use; their credentials join the log redaction."""
    return BackendPool(settings.state_dir, settings.controller_name, on_secrets=_redactor.add_secrets)


def settings_of(args: argparse.Namespace) -> Settings:
    """``--state-dir`` and ``--controller-name``, else the environment, else the defaults."""
    return resolve_settings(getattr(args, "state_dir", None), getattr(args, "controller_name", None))


def print_validation(exc: ValidationFailed) -> int:
    """Every validation error on stderr, then how many; the exit code for it."""
    for error in exc.errors:
        print(error, file=sys.stderr)
    print(f"{len(exc.errors)} error(s); nothing planned", file=sys.stderr)
    return EXIT_ERROR


def render_plan(the_plan: Plan, output: str, color: bool) -> str:
    """``the_plan`` as ``--output`` asks: text (coloured on a terminal), markdown or json."""
    if output == "json":
        return render_json(the_plan)
    if output == "markdown":
        return render_markdown(the_plan)
    return render_text(the_plan, color=color)


def use_color(args: argparse.Namespace, stream: TextIO) -> bool:
    """Colour on a terminal, unless ``--no-color`` or ``NO_COLOR`` says otherwise."""
    return not getattr(args, "no_color", False) and stream.isatty() and "NO_COLOR" not in os.environ


def confirm_or_refuse(question: str, assume_yes: bool) -> bool:
    """Whether the user typed ``yes`` (``--yes`` answers for them; without a terminal the answer is no)."""
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        print(f"{question} refused: not a terminal; pass --yes to confirm", file=sys.stderr)
        return False
    return input(f"{question} Only 'yes' will be accepted: ").strip() == "yes"


class LiveProgress:
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


def manifests_path(args: argparse.Namespace) -> str | None:
    """``--path``; else ``manifests`` when that folder is in the cwd; else None (the local backend alone)."""
    if args.path is not None:
        return str(args.path)
    return "manifests" if Path("manifests").is_dir() else None


def targets_of(args: argparse.Namespace, pool: BackendPool, command: str) -> Targets:
    """The backends the manifests' workspaces name, as apply would open them; the local backend alone without manifests.

    Invalid manifests say so and fall back to the local backend: status, keys and logs are what
    one reaches for while a commit is broken. Raises ``BackendError`` when a backend cannot be opened.
    """
    target = manifests_path(args)
    if target is not None:
        root, path = root_and_path(target)
        try:
            return folder_targets(root, path, pool.backend_for)
        except ValidationFailed as exc:
            first = f"; first: {exc.errors[0]}" if exc.errors else ""
            print(f"amlops {command}: the manifests in {target} are invalid ({len(exc.errors)} error(s){first}); "
                  "using the local backend only", file=sys.stderr)
    targets = Targets()
    targets.add(pool.backend_for(None))
    return targets
