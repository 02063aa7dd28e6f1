"""Keys and tokens the scoring endpoint accepts, re-read from the keys file when it changes.

The keys file is JSON (``controller.structs.replicas``): ``{"primaryKey": "...", "secondaryKey": "..."}``
for ``--auth key`` and ``{"tokenSigningKey": "..."}`` for ``--auth token``, where requests carry short-lived tokens signed
with that key for this service (``controller.structs.tokens``). Key values are never logged. The file is looked at no more often than every
``CHECK_INTERVAL_S``, not on every request; a missing file accepts no key at all.
"""

from __future__ import annotations

import hmac
import os
import time

import orjson

from controller.scoring.reporting import log_event
from controller.structs import tokens
from controller.structs.replicas import AUTH_FIELDS

CHECK_INTERVAL_S = 0.5


class KeyRing:
    """The accepted secrets of one auth mode, reloaded whenever the file's stat changes."""

    def __init__(self, path: str, mode: str, service: str | None = None) -> None:
        self._path = path
        self._mode = mode
        self._service = service  # a token must name this service (when the host knows its name)
        self._fields = AUTH_FIELDS[mode]
        self._stamp: tuple[int, int, int] | None = None
        self._secrets: tuple[bytes, ...] = ()
        self._checked: float | None = None
        self._unreadable = False

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._checked is not None and now - self._checked < CHECK_INTERVAL_S:
            return
        self._checked = now
        try:
            stat = os.stat(self._path)
        except OSError as exc:
            if not self._unreadable:
                log_event("keys_unreadable", path=self._path, error=type(exc).__name__)
            # A deleted keys file revokes every key: old secrets must not outlive it.
            self._stamp, self._secrets, self._unreadable = None, (), True
            return
        self._unreadable = False
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
        if self._mode == "token":
            return tokens.verify(self._secrets, presented, self._service, time.time())
        matched = False
        for secret in self._secrets:
            # No early exit: every secret is compared, so timing says nothing about which matched.
            matched |= hmac.compare_digest(presented, secret)
        return matched
