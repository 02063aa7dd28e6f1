"""The source ``amlops run`` follows: a Git repository (a URL, or a local repository's committed
history) or a watched folder, behind one shape so the loop never asks which one it has."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from controller.runtime.reloading import Reloadable
from controller.sources.gitting import GitSource, Snapshot, looks_like_git_repo
from controller.sources.watching import FolderSource


class Source(Protocol):
    """What the loop needs of a source: a snapshot per call, a name to show, secrets to redact."""

    @property
    def display_url(self) -> str: ...

    @property
    def branch(self) -> str | None: ...

    @property
    def secrets(self) -> tuple[str, ...]: ...

    def fetch(self) -> Snapshot: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Followed:
    """A source with what differs between kinds said once, where it is opened."""

    source: Source
    kind: str  # "git" or "folder", as the status page shows it
    # Start calling back on every change (a watched folder); Git sources are polled and ignore it.
    watch: Callable[[Callable[[], None]], None]
    # Take a reloaded token and timeout (Git); a folder has neither.
    reconfigure: Callable[[Reloadable], None]


def _ignore_watch(on_change: Callable[[], None]) -> None:
    return None


def _ignore_settings(settings: Reloadable) -> None:
    return None


def open_source(repo: str, path: str, *, branch: str | None, watch: bool, ssh_key_file: str | None,
                cache_dir: Path, settings: Reloadable) -> Followed:
    """A folder source for ``watch`` or a plain folder, else a Git source (a URL, or a local repo's committed history)."""
    local = Path(repo).expanduser()
    if watch or ("://" not in repo and local.is_dir() and not looks_like_git_repo(local)):
        if not local.is_dir():
            raise SystemExit(f"amlops run: --watch needs a local folder, got {repo!r}")
        folder = FolderSource(local, path=path)
        return Followed(folder, "folder", folder.start, _ignore_settings)
    git = GitSource(
        repo,
        cache_dir=cache_dir,
        path=path,
        branch=branch,
        token=settings.git_token,
        ssh_key_file=ssh_key_file,
        timeout_s=settings.git_timeout,
    )

    def reconfigure(fresh: Reloadable) -> None:
        git.set_token(fresh.git_token)
        git.set_timeout(fresh.git_timeout)

    return Followed(git, "git", _ignore_watch, reconfigure)
