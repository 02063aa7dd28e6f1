"""What the scoring host tells the outside world: structured log lines and the status file.

The status file also carries the replica's load (``inFlight``, ``capacity``) while it serves,
which the local backend's supervisor reads to autoscale.

Log lines go to stderr, one per event: ``event=<name> key=value ...`` (text) or one JSON object
(json). Callers pass fields, never pre-formatted prose, and never keys or Authorization headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from controller.structs.logformats import log_document
from controller.structs.replicas import load_fields, status_document

_format = "text"
_status_unwritten = False


def configure_events(log_format: str) -> None:
    """Choose ``text`` or ``json`` for every later :func:`log_event` call in this process."""
    global _format
    _format = log_format


def log_event(event: str, **fields: Any) -> None:
    """Write one structured line for ``event`` to stderr."""
    now = time.time()
    if _format == "json":  # the same keys as the controller's and the supervisor's JSON lines
        level = "error" if event.endswith("failed") else "info"
        line = orjson.dumps(log_document(now, level, event, {"pid": os.getpid(), **fields}), default=str).decode()
    else:
        record: dict[str, Any] = {"ts": round(now, 3), "event": event, "pid": os.getpid(), **fields}
        line = " ".join(f"{key}={_text_value(value)}" for key, value in record.items())
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        # A closed stderr (the supervisor went away) must never take the scoring host down.
        pass


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(ch in text for ch in ' "=\n'):
        return orjson.dumps(text).decode()
    return text


def write_status(path: str | None, state: str, **fields: Any) -> bool:
    """Atomically replace the status file at ``path`` (tmp + rename) with ``state`` and ``fields``.

    A supervisor polls this file to see readiness without HTTP, so a reader must never see a
    half-written document. A write that fails (a full disk) is logged and reported False: the
    replica serves on, and the load reports write the file again until one succeeds.
    """
    global _status_unwritten
    if not path:
        return True
    document = status_document(os.getpid(), state, fields)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as handle:
            handle.write(orjson.dumps(document, option=orjson.OPT_INDENT_2, default=str))
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if not _status_unwritten:
            log_event("status_write_failed", path=path, error=exc.strerror or str(exc))
        _status_unwritten = True
        return False
    _status_unwritten = False
    return True


LOAD_REPORT_INTERVAL_S = 0.5
"""How often a serving replica looks at its load and request counts for the status file (the
autoscaler's and the rollout analysis's input)."""


def report_load(
    loop: asyncio.AbstractEventLoop,
    report: Callable[..., None],
    in_flight: Callable[[], float | None],
    capacity: int,
    last: tuple[int, Any] | None = None,
    traffic: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Write ``inFlight``, ``capacity`` (and ``traffic``) through ``report`` now and about twice a second after.

    ``in_flight`` returns the requests being run plus those queued for a slot, or None once the
    replica stops serving (draining), which ends the reports. ``traffic`` returns the replica's
    request counters (``controller.structs.rollouts.Counters``). The file is rewritten only when
    something changed: an idle replica costs a comparison per interval, not a write.
    """
    value = in_flight()
    if value is None:
        return
    count = int(value)
    counters = traffic() if traffic is not None else None
    state = (count, None if counters is None else (counters["requests"], counters["forwarded"]))
    if state != last or _status_unwritten:
        report(**load_fields(count, capacity, counters))
    loop.call_later(LOAD_REPORT_INTERVAL_S, report_load, loop, report, in_flight, capacity, state, traffic)
