"""What wakes the loop early or stops it: wake-up reasons (a webhook, ``POST /api/sync``, a folder
edit, a reload) and the signals (SIGTERM/SIGINT stop after the change in flight, SIGHUP reloads)."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class Wakeup:
    """Why the loop should run now; many wake-ups before it looks collapse into one."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reasons: list[str] = []

    def wake(self, reason: str) -> None:
        with self._lock:
            self._reasons.append(reason)
        self._event.set()

    def take(self) -> list[str]:
        with self._lock:
            reasons, self._reasons = self._reasons, []
        self._event.clear()
        return reasons

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


class Signals:
    """Flags the signal handlers set; the loop reads them (no locks, no work inside a handler)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload_requested = False

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        # Only set flags here: the loop notices within a fraction of a second.
        self.stop.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True

    def install(self) -> None:
        """SIGTERM/SIGINT: finish the change in flight and exit; SIGHUP: reload settings."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
