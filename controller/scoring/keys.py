"""Keys and tokens the scoring endpoint accepts, re-read from the keys file when it changes.

The keys file is JSON: ``{"primaryKey": "...", "secondaryKey": "..."}`` for ``--auth key`` and
``{"token": "..."}`` for ``--auth token`` (a static bearer token: the supervisor rotates it by
rewriting the file). Key values are never logged.
"""

from __future__ import annotations

import hmac
import os

import orjson

from controller.scoring.reporting import log_event

FIELDS_BY_MODE = {"key": ("primaryKey", "secondaryKey"), "token": ("token",)}


class KeyRing:
    """The accepted secrets of one auth mode, reloaded whenever the file's stat changes."""

    def __init__(self, path: str, mode: str) -> None:
        self._path = path
        self._fields = FIELDS_BY_MODE[mode]
        self._stamp: tuple[int, int, int] | None = None
        self._secrets: tuple[bytes, ...] = ()

    def _refresh(self) -> None:
        try:
            stat = os.stat(self._path)
        except OSError as exc:
            if self._stamp is not None or not self._secrets:
                log_event("keys_unreadable", path=self._path, error=type(exc).__name__)
            self._stamp = None
            return
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp == self._stamp:
            return
        try:
            with open(self._path, "rb") as handle:
                document = orjson.loads(handle.read())
            secrets = tuple(
                str(document[field]).encode() for field in self._fields if document.get(field)
            )
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            # A half-written file keeps the previous keys in force until the next change.
            log_event("keys_reload_failed", path=self._path, error=type(exc).__name__)
            return
        self._stamp = stamp
        self._secrets = secrets
        log_event("keys_loaded", path=self._path, count=len(secrets))

    def accepts(self, authorization: bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries one of the current secrets."""
        self._refresh()
        if not authorization or not authorization.startswith(b"Bearer "):
            return False
        presented = authorization[7:].strip()
        matched = False
        for secret in self._secrets:
            # No early exit: every secret is compared, so timing says nothing about which matched.
            matched |= hmac.compare_digest(presented, secret)
        return matched
