"""Service keys: the primary and secondary keys of a service with ``auth: key``, or the token
signing key of a service with ``auth: token`` (tokens themselves are minted on request and never stored).

Keys live in a JSON file created with mode 0600 from its first byte (``os.open`` with the mode,
then an atomic rename), so no other user can ever read them. Replicas get the file's path, never
the keys themselves, and re-read it when its mtime changes, so regenerating a key needs no restart.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Literal

from controller.structs import tokens
from controller.structs.replicas import (
    PRIMARY_KEY,
    SECONDARY_KEY,
    TOKEN_SIGNING_KEY,
    keys_document,
    token_key_document,
)
from controller.structs.tokens import AccessToken

KeyName = Literal["primary", "secondary"]


def new_key() -> str:
    """A fresh random key (32 bytes, URL-safe base64, like Azure's)."""
    return secrets.token_urlsafe(32)


def write_keys(path: Path, primary: str, secondary: str) -> None:
    """Write both keys to ``path`` atomically; the file is 0600 from creation."""
    _write_private(path, keys_document(primary, secondary))


def _write_private(path: Path, document: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(document, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_keys(path: Path) -> tuple[str, str]:
    """``(primary, secondary)`` stored at ``path``."""
    data = json.loads(path.read_text())
    return str(data[PRIMARY_KEY]), str(data[SECONDARY_KEY])


def ensure_keys(path: Path) -> None:
    """Create the keys file with two fresh keys unless it already exists."""
    if not path.exists():
        write_keys(path, new_key(), new_key())


def regenerate(path: Path, which: KeyName) -> None:
    """Replace one key with a fresh one, keeping the other (as ``Webservice.regen_key`` does)."""
    if which not in ("primary", "secondary"):
        raise ValueError(f"key must be 'primary' or 'secondary', not {which!r}")
    primary, secondary = read_keys(path)
    if which == "primary":
        primary = new_key()
    else:
        secondary = new_key()
    write_keys(path, primary, secondary)


def ensure_token_key(path: Path) -> None:
    """Create the token signing key file of a service with ``auth: token`` unless it exists."""
    if not path.exists():
        _write_private(path, token_key_document(new_key()))


def token_for(path: Path, service: str, now: float | None = None) -> AccessToken:
    """A fresh access token for ``service``, signed with the key stored at ``path``."""
    data = json.loads(path.read_text())
    return tokens.mint(str(data[TOKEN_SIGNING_KEY]).encode(), service, time.time() if now is None else now)
