"""The leader lock: one holder per state dir, released when its holder lets go."""

from __future__ import annotations

import threading
from pathlib import Path

from controller.runtime.locking import LeaderLock
from controller.runtime.running import backoff_delay


def test_only_one_lock_holder_per_state_dir(tmp_path: Path) -> None:
    first, second = LeaderLock(tmp_path), LeaderLock(tmp_path)
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()


def test_waiting_for_the_lock_stops_when_told(tmp_path: Path) -> None:
    holder, waiter = LeaderLock(tmp_path), LeaderLock(tmp_path)
    assert holder.try_acquire()
    stop = threading.Event()
    stop.set()
    assert waiter.wait(stop, poll=0.01) is False
    holder.release()


def test_backoff_doubles_with_jitter_and_is_capped_at_the_interval() -> None:
    assert backoff_delay(0, 60) == 60
    assert backoff_delay(1, 60, rng=lambda: 1.0) == 1.0
    assert backoff_delay(3, 60, rng=lambda: 1.0) == 4.0
    assert backoff_delay(3, 60, rng=lambda: 0.0) == 2.0
    assert backoff_delay(30, 60, rng=lambda: 1.0) == 60
    assert backoff_delay(100, 5, rng=lambda: 0.5) <= 5
