"""The folder source: a local folder (a Git working tree or not) watched for changes.

Edits arrive in bursts (an editor writes a temporary file, renames it, touches a backup), so
events are debounced: the loop is woken once the folder has been quiet for ``debounce`` seconds.
The revision is ``dirty-<content hash>``, so an unchanged folder keeps its revision and a
reconcile of it changes nothing. The watcher only wakes the loop; the reconcile reads the folder
itself (level-triggered), so a missed event is caught by the next periodic pass.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from controller.sources.digests import HASHER
from controller.sources.gitting import Snapshot, SourceUnavailable
from controller.sources.overlays import kustomization_file, overlay_folders
from controller.structs.logformats import event_logger

log = event_logger(__name__)

DEBOUNCE_S: Final = 0.5
_IGNORED_PARTS: Final = frozenset({"__pycache__", ".git"})
_IGNORED_SUFFIXES: Final = (".swp", ".swx", "~", ".tmp", ".pyc")


def _ignored(base: Path, path: str) -> bool:
    try:
        parts = Path(path).relative_to(base).parts
    except ValueError:
        parts = Path(path).parts
    if any(p in _IGNORED_PARTS or (p.startswith(".") and p not in (".", "..")) for p in parts):
        return True
    return path.endswith(_IGNORED_SUFFIXES)


class _Debouncer(FileSystemEventHandler):
    """Calls ``fire`` once, ``delay`` seconds after the last of a burst of events."""

    def __init__(self, base: Path, fire: Callable[[], None], delay: float) -> None:
        self._base = base
        self._fire = fire
        self._delay = delay
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory and event.event_type == "modified":
            return  # a folder's mtime moves with every file event below it, hidden ones included
        paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
        if all(_ignored(self._base, p) for p in paths if p):
            return
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self._delay, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


class FolderSource:
    """Desired state read in place from ``root/path``, with a watcher that calls ``on_change`` after edits."""

    def __init__(self, root: Path, *, path: str = ".", debounce: float = DEBOUNCE_S) -> None:
        self.root = root.absolute()
        self.path = path
        self._debounce = debounce
        self._observer: BaseObserver | None = None
        self._handler: _Debouncer | None = None

    @property
    def display_url(self) -> str:
        """The watched folder, for status output."""
        return str(self.root)

    @property
    def branch(self) -> str | None:
        """A folder has no branch."""
        return None

    @property
    def secrets(self) -> tuple[str, ...]:
        """A folder needs no credentials."""
        return ()

    def start(self, on_change: Callable[[], None]) -> None:
        """Start watching; ``on_change`` runs on a watcher thread once each burst of edits settles."""
        target = self.root / self.path
        watched = target if target.is_dir() else target.parent
        if kustomization_file(target) is not None:
            watched = self.root  # an overlay reads its bases too (../base)
        if not watched.is_dir():
            raise SourceUnavailable(f"no such folder: {watched}")

        def fire() -> None:
            log.info("source.changed", folder=str(watched))
            on_change()

        self._handler = _Debouncer(watched, fire, self._debounce)
        observer = Observer()
        observer.schedule(self._handler, str(watched), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def fetch(self) -> Snapshot:
        """The folder as it is now, with a revision naming its content."""
        target = self.root / self.path
        if not target.exists():
            raise SourceUnavailable(f"no such file or folder: {target}")
        try:
            if target.is_dir() and kustomization_file(target) is not None:
                # An overlay's revision names its bases' content too, so an edit in ../base is seen.
                folders = overlay_folders(self.root, target)
                digest = "sha256:" + hashlib.sha256("".join(HASHER.tree(f) for f in folders).encode()).hexdigest()
            else:
                digest = HASHER.tree(target)
        except OSError as exc:
            # A file vanished while hashing: an edit is under way and the watcher will call again.
            raise SourceUnavailable(f"folder changed while reading it: {exc}") from None
        revision = "dirty-" + digest.removeprefix("sha256:")[:12]
        return Snapshot(revision=revision, root=self.root, path=self.path, message="working tree")

    def close(self) -> None:
        """Stop the watcher thread."""
        if self._handler is not None:
            self._handler.cancel()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
