"""The one shape of a log line, shared by the controller, the supervisors and the scoring hosts.

Keys follow the convention log collectors parse without configuration: ``time`` (RFC 3339, UTC,
milliseconds), ``level``, ``msg`` (the event name), then ``logger`` and the event's fields.

The one logging style in ``controller/`` is an event name plus fields, written through
:func:`event_logger`::

    log = event_logger(__name__)
    log.info("service.applied", service=name, generation=3)
    log.exception("sync.crashed", revision=revision)

- The event name is a constant, lower case, ``area.what_happened`` (dots between parts,
  underscores inside a part): ``reconcile.planned``, ``source.fetch.failed``. It never holds a value.
- Everything variable is a keyword field, never ``%s`` arguments or an f-string: collectors index
  fields, the text formatter prints them as ``key=value``, and the redacting filter scrubs each one.
- Fields travel as ``extra={"fields": {...}}`` on the standard :class:`logging.LogRecord`, so
  handlers, levels and filters stay those of :mod:`logging`; a field may use any name, even one a
  ``LogRecord`` already has (``name``, ``message``), because it never becomes a record attribute.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Final

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def rfc3339(seconds: float) -> str:
    """``seconds`` since the epoch as an RFC 3339 UTC timestamp with milliseconds: ``2026-01-02T03:04:05.678Z``."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_document(created: float, level: str, msg: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A log line's JSON object: the conventional keys first, then the fields (which never overwrite them)."""
    document: dict[str, Any] = {"time": rfc3339(created), "level": level.lower(), "msg": msg}
    for key, value in fields.items():
        document.setdefault(key, value)
    return document


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """``extra={"fields": {...}}`` and any other ``extra`` keys, in that order."""
    fields = getattr(record, "fields", None)
    result = dict(fields) if isinstance(fields, dict) else {}
    for key, value in record.__dict__.items():
        if key not in _STANDARD and key != "fields" and not key.startswith("_"):
            result.setdefault(key, value)
    return result


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, msg, logger, then the fields (and an exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = log_document(record.created, record.levelname, record.getMessage(),
                           {"logger": record.name, **record_fields(record)})
        if record.exc_text:
            doc["exception"] = record.exc_text
        elif record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class EventLogger:
    """A :class:`logging.Logger` that takes an event name and keyword fields (the style above)."""

    __slots__ = ("logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self.logger: Final = logger

    def _emit(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self.logger.isEnabledFor(level):
            # stacklevel 3: the record names the caller's file and line, not this wrapper's.
            self.logger.log(level, event, exc_info=exc_info, extra={"fields": fields}, stacklevel=3)

    def log(self, level: int, event: str, /, **fields: Any) -> None:
        """Log ``event`` at ``level`` (a :mod:`logging` level number)."""
        self._emit(level, event, False, fields)

    def debug(self, event: str, /, **fields: Any) -> None:
        """Log ``event`` at DEBUG."""
        self._emit(logging.DEBUG, event, False, fields)

    def info(self, event: str, /, **fields: Any) -> None:
        """Log ``event`` at INFO."""
        self._emit(logging.INFO, event, False, fields)

    def warning(self, event: str, /, **fields: Any) -> None:
        """Log ``event`` at WARNING."""
        self._emit(logging.WARNING, event, False, fields)

    def error(self, event: str, /, **fields: Any) -> None:
        """Log ``event`` at ERROR."""
        self._emit(logging.ERROR, event, False, fields)

    def exception(self, event: str, /, **fields: Any) -> None:
        """Log ``event`` at ERROR with the traceback of the exception being handled."""
        self._emit(logging.ERROR, event, True, fields)

    def is_enabled_for(self, level: int) -> bool:
        """Whether a record at ``level`` would be handled (to skip costly fields)."""
        return self.logger.isEnabledFor(level)


def event_logger(name: str) -> EventLogger:
    """The event logger for module ``name`` (pass ``__name__``), over ``logging.getLogger(name)``."""
    return EventLogger(logging.getLogger(name))
