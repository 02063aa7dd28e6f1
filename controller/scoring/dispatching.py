"""Handing scoring jobs from the event loop to long-lived run() threads, and results back.

One thread per concurrency slot lives as long as the process. The loop appends a job to a
deque and only wakes a thread when one is idle; a busy thread drains the deque without sleeping.
Finished jobs go to a second deque, and one ``loop.call_soon_threadsafe`` per drained batch (not
per job) brings them back to the loop. Entry scripts that define ``run_batch`` get every job that
is already waiting in one call; a job that arrives alone is handed over at once, never held back
to wait for company.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from controller.scoring.importing import EntryPoint
from controller.scoring.reporting import log_event

MAX_BATCH = 64
OK, FAILED, EXPIRED, TIMED_OUT = 200, 500, 503, 504


class Job:
    """One scoring request on its way through a slot; written by one thread at a time."""

    __slots__ = ("answered", "body", "conn", "elapsed_ms", "enqueued", "keep_alive", "raw",
                 "request_id", "route", "status")

    def __init__(self, raw: str, conn: Any, request_id: bytes, route: str, keep_alive: bool) -> None:
        self.raw = raw
        self.conn = conn
        self.request_id = request_id
        self.route = route
        self.keep_alive = keep_alive
        self.enqueued = time.monotonic()
        self.status = 0
        self.body = b""
        self.elapsed_ms = 0.0
        # Set on the loop once a response went out (a timeout may answer before run() returns).
        self.answered = False


def encode_result(result: Any) -> bytes:
    """JSON-encode a run() result the way azmlinfsrv does (a str becomes a JSON string)."""
    if isinstance(result, bytes | bytearray):
        result = bytes(result).decode("utf-8")
    elif isinstance(result, dict) and ("aml_response_body" in result or "aml_response_headers" in result):
        result = result.get("aml_response_body")
    return orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


class Slot:
    """One run() thread; ``current`` is (start time, jobs) while it runs, read by the watchdog."""

    __slots__ = ("current", "record_batch", "thread")

    def __init__(self, record_batch: Callable[[int], None]) -> None:
        self.current: tuple[float, list[Job]] | None = None
        self.thread: threading.Thread | None = None
        # This slot's own batch-size histogram: one writer, so no lock per run().
        self.record_batch = record_batch


class Dispatcher:
    """Runs jobs on ``slots`` threads and reports finished ones to ``on_done`` on the loop."""

    def __init__(
        self,
        entry: EntryPoint,
        slots: int,
        max_wait_s: float,
        max_queue: int,
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[[Job], None],
        batch_recorder: Callable[[], Callable[[int], None]] = lambda: lambda size: None,
    ) -> None:
        self._entry = entry
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._loop = loop
        self._on_done = on_done
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._pending: deque[Job] = deque()
        self._done: deque[Job] = deque()
        self._idle = 0
        self._drain_scheduled = False
        self._stopping = False
        self.slots = [Slot(batch_recorder()) for _ in range(slots)]

    def start(self) -> None:
        """Start the slot threads (daemons: a run() stuck past its timeout must not block exit)."""
        for index, slot in enumerate(self.slots):
            slot.thread = threading.Thread(
                target=self._work, args=(slot,), name=f"scoring-slot-{index}", daemon=True
            )
            slot.thread.start()

    def stop(self) -> None:
        """Let idle threads exit; busy ones finish their current job first."""
        with self._lock:
            self._stopping = True
            self._wakeup.notify_all()

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False when the queue is full (the caller answers 503)."""
        with self._lock:
            if len(self._pending) >= self._max_queue:
                return False
            self._pending.append(job)
            if self._idle:
                self._wakeup.notify()
        return True

    def expire_waiting(self, now: float) -> list[Job]:
        """Take out the queued jobs that waited longer than the queue-wait limit (oldest first)."""
        expired: list[Job] = []
        limit = now - self._max_wait_s
        with self._lock:
            pending = self._pending
            while pending and pending[0].enqueued < limit:
                expired.append(pending.popleft())
        return expired

    def overdue(self, now: float, timeout_s: float) -> list[Job]:
        """Jobs whose run() has been going for longer than ``timeout_s``."""
        late: list[Job] = []
        for slot in self.slots:
            current = slot.current
            if current is not None and now - current[0] > timeout_s:
                late.extend(current[1])
        return late

    def _take(self) -> list[Job] | None:
        with self._lock:
            pending = self._pending
            while not pending:
                if self._stopping:
                    return None
                self._idle += 1
                self._wakeup.wait()
                self._idle -= 1
            if self._entry.run_batch is None or len(pending) == 1:
                return [pending.popleft()]
            return [pending.popleft() for _ in range(min(len(pending), MAX_BATCH))]

    def _work(self, slot: Slot) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            started = time.monotonic()
            fresh = []
            for job in jobs:
                if started - job.enqueued > self._max_wait_s:
                    job.status = EXPIRED
                else:
                    fresh.append(job)
            if fresh:
                slot.current = (started, fresh)
                slot.record_batch(len(fresh))
                self._score(fresh)
                slot.current = None
                for job in fresh:
                    job.raw = ""  # this thread keeps its last jobs while it waits: their bodies go now
            self._finish(jobs)

    def _score(self, jobs: list[Job]) -> None:
        entry = self._entry
        start = time.perf_counter()
        try:
            if entry.run_batch is not None:
                results = list(entry.run_batch([job.raw for job in jobs]))
                if len(results) != len(jobs):
                    raise ValueError(f"run_batch returned {len(results)} results for {len(jobs)} inputs")
            else:
                results = [entry.run(jobs[0].raw)]
            bodies = [encode_result(result) for result in results]
        except Exception as exc:  # the user's code may raise anything; the host must stay up
            elapsed = (time.perf_counter() - start) * 1000.0
            message = f"{type(exc).__name__}: {exc}"
            log_event("run_failed", error=type(exc).__name__, message=str(exc)[:500], batch=len(jobs))
            for job in jobs:
                job.status, job.body, job.elapsed_ms = FAILED, message.encode("utf-8", "replace"), elapsed
            return
        elapsed = (time.perf_counter() - start) * 1000.0
        for job, body in zip(jobs, bodies, strict=True):
            job.status, job.body, job.elapsed_ms = OK, body, elapsed

    def _finish(self, jobs: list[Job]) -> None:
        self._done.extend(jobs)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            # RuntimeError: the loop closed while a run() past its timeout was still going.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        # Clear the flag before popping: a job finished after this point schedules a new drain.
        self._drain_scheduled = False
        done = self._done
        on_done = self._on_done
        while done:
            on_done(done.popleft())
