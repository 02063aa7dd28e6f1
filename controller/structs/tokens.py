"""Access tokens of services with ``auth: token``: short-lived HS256 JWTs bound to one service.

Azure ML's token authentication hands clients a bearer token that expires (``Webservice.
get_access_token()`` returns it with ``refresh_after`` and ``expiry_on``); amlops does the same
with a per-service signing key that only the backend and the service's replicas can read. A token
names its service (``aud``), so one service's token never opens another, and carries its expiry
(``exp``); the scoring host checks both and the signature, in constant time. Pure functions: the
caller supplies the key and the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Final

TOKEN_LIFETIME_S: Final = 3600
REFRESH_AFTER_S: Final = 1800  # clients should fetch a new token after this, well before expiry
ISSUER: Final = "amlops"
_HEADER: Final = b'{"alg":"HS256","typ":"JWT"}'


@dataclass(frozen=True)
class AccessToken:
    """A token with the times (Unix seconds) Azure's ``AksServiceAccessToken`` reports."""

    access_token: str
    refresh_after: int
    expiry_on: int
    token_type: str = "Bearer"


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_HEADER_B64: Final = _b64(_HEADER)


def _unb64(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


def mint(key: bytes, service: str, now: float, lifetime_s: int = TOKEN_LIFETIME_S) -> AccessToken:
    """A token for ``service`` signed with ``key``, valid from ``now`` for ``lifetime_s`` seconds."""
    issued = int(now)
    claims = {"aud": service, "iss": ISSUER, "iat": issued, "exp": issued + lifetime_s}
    signing_input = _HEADER_B64 + b"." + _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = _b64(hmac.new(key, signing_input, hashlib.sha256).digest())
    return AccessToken((signing_input + b"." + signature).decode(), issued + min(REFRESH_AFTER_S, lifetime_s),
                       issued + lifetime_s)


def verify(keys: tuple[bytes, ...], token: bytes, service: str | None, now: float) -> bool:
    """Whether ``token`` is signed by one of ``keys``, unexpired at ``now`` and (if given) for ``service``."""
    parts = token.split(b".")
    if len(parts) != 3 or parts[0] != _HEADER_B64:  # only tokens this module minted
        return False
    signing_input = parts[0] + b"." + parts[1]
    matched = False
    for key in keys:
        # No early exit: every key is tried, so timing says nothing about which one matched.
        expected = _b64(hmac.new(key, signing_input, hashlib.sha256).digest())
        matched |= hmac.compare_digest(expected, parts[2])
    if not matched:
        return False
    try:
        claims = json.loads(_unb64(parts[1]))
        expires = float(claims["exp"])
        audience = claims["aud"]
    except (ValueError, TypeError, KeyError):
        return False
    if service is not None and audience != service:
        return False
    return now < expires
