"""Structured logs: an event name plus fields, as text or JSON lines, with secrets redacted.

Every module logs through ``controller.structs.logformats.event_logger`` (the style is written down
there); this module configures where the lines go and in which format.

Secrets are kept out of log calls by construction; the redaction filter is defence in depth: any
known secret value (and its URL-quoted or base64 forms) that still reaches a record becomes ``***``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

from controller.structs.logformats import JsonLogFormatter, record_fields
from controller.structs.redactions import redact

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Replaces known secret values in a record's message, arguments and fields."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._settings: set[str] = set()
        self._backends: set[str] = set()
        self._secrets: tuple[str, ...] = ()

    def _publish(self) -> None:
        merged = {s for s in self._settings | self._backends if s and len(s) >= 4}
        self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def set_secrets(self, secrets: list[str] | tuple[str, ...]) -> None:
        """Replace the settings' secrets (called again on SIGHUP); backends' secrets are kept."""
        with self._lock:
            self._settings = set(secrets)
            self._publish()

    def add_secrets(self, secrets: list[str] | tuple[str, ...]) -> None:
        """Add values to redact (a backend's credentials, once it has resolved them)."""
        with self._lock:
            self._backends |= set(secrets)
            self._publish()

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets
        if not secrets:
            return True
        message = record.getMessage()
        clean = redact(message, secrets)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now, redacted, so the formatter never sees the raw exception.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), secrets)
            record.exc_info = None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {k: redact(v, secrets) if isinstance(v, str) else v for k, v in fields.items()}
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and key != "fields" and isinstance(value, str):
                setattr(record, key, redact(value, secrets))
        return True


JsonFormatter = JsonLogFormatter  # one JSON line shape for every process (controller.structs.logformats)


class TextFormatter(logging.Formatter):
    """``time level event key=value ...`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [when, f"{record.levelname:<7}", record.getMessage()]
        for key, value in record_fields(record).items():
            text = str(value)
            parts.append(f"{key}={json.dumps(text) if (' ' in text or not text) else text}")
        line = " ".join(parts)
        if record.exc_text:
            line += "\n" + record.exc_text
        elif record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(fmt: str, level: int = logging.INFO) -> RedactingFilter:
    """Send the root logger to stderr in ``fmt`` ("text" or "json"); return the filter to feed secrets to."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    redactor = RedactingFilter()
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return redactor
