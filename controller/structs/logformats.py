"""The one shape of a JSON log line, shared by the controller, the supervisors and the scoring hosts.

Keys follow the convention log collectors parse without configuration: ``time`` (RFC 3339, UTC,
milliseconds), ``level``, ``msg`` (the event name), then ``logger`` and the event's fields.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

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
