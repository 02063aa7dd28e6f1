"""One controller per state dir: a leader lock held with ``flock`` for the process's lifetime.

The kernel drops an ``flock`` when its holder dies, even by ``kill -9``, so a standby that keeps
trying the lock takes over without any lease to expire or stale pid file to clean up.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import Final

LOCK_FILE: Final = "controller.lock"


class LeaderLock:
    """An exclusive, non-blocking ``flock`` on ``state_dir/controller.lock``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._fd is not None

    def try_acquire(self, source: str = "") -> bool:
        """Take the lock if it is free; never blocks. Records our pid (and the source a controller
        follows) in the file, for people and for standbys to read."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n{source}\n".encode())
        self._fd = fd
        return True

    def wait(self, stop: threading.Event, poll: float = 1.0) -> bool:
        """Try the lock every ``poll`` seconds until it is ours (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            if self.try_acquire():
                return True
            stop.wait(poll)
        return False

    def _lines(self) -> list[str]:
        try:
            return self.path.read_text().splitlines()
        except OSError:
            return []

    def holder(self) -> str:
        """The pid written by the current holder, as text (empty if unknown)."""
        lines = self._lines()
        return lines[0].strip() if lines else ""

    def holder_source(self) -> str:
        """The source the current holder follows ('' for ``amlops apply`` or when unknown)."""
        lines = self._lines()
        return lines[1].strip() if len(lines) > 1 else ""

    def release(self) -> None:
        """Give the lock up (the kernel does it anyway when the process ends)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
