"""Azure AD as the SDK meets it: OpenID configuration, client-credential tokens, and checking them.

Tokens are HS256 JWTs signed with a key that never leaves the emulator. ARM and workspace routes
check signature, expiry and audience, so a test passing proves the SDK really authenticated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

ARM_AUDIENCE: Final = "https://management.core.windows.net/"
AUDIENCES: Final = frozenset({ARM_AUDIENCE, "https://management.azure.com/", "https://management.core.windows.net",
                              "https://management.azure.com", "https://ml.azure.com/", "https://ml.azure.com"})
TOKEN_LIFETIME_S: Final = 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Principal:
    """The one service principal the emulator accepts."""

    tenant_id: str
    client_id: str
    client_secret: str


def new_principal() -> Principal:
    """Fresh random credentials."""
    return Principal(str(uuid.uuid4()), str(uuid.uuid4()), secrets.token_urlsafe(32))


class TokenError(Exception):
    """A token that is missing, malformed, forged, expired or for another audience."""


@dataclass(frozen=True)
class Issuer:
    """Mints and checks tokens for one principal."""

    principal: Principal
    key: bytes

    def mint(self, audience: str = ARM_AUDIENCE, lifetime_s: int = TOKEN_LIFETIME_S) -> str:
        """A signed JWT with the claims Azure AD puts in an app-only token."""
        now = int(time.time())
        header = {"alg": "HS256", "typ": "JWT"}
        claims = {
            "aud": audience, "iss": f"https://sts.windows.net/{self.principal.tenant_id}/",
            "iat": now, "nbf": now, "exp": now + lifetime_s, "tid": self.principal.tenant_id,
            "appid": self.principal.client_id, "oid": self.principal.client_id, "sub": self.principal.client_id,
            "idtyp": "app", "ver": "1.0",
        }
        signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
        signature = hmac.new(self.key, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + _b64(signature)

    def check(self, authorization: str | None) -> dict[str, Any]:
        """The claims of a ``Bearer`` token this issuer minted, still valid and for ARM; else ``TokenError``."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise TokenError("AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
        token = authorization.split(None, 1)[1].strip()
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("InvalidAuthenticationToken", "The access token is invalid.")
        expected = hmac.new(self.key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            ok = hmac.compare_digest(expected, _unb64(parts[2]))
            claims = json.loads(_unb64(parts[1]))
        except (ValueError, json.JSONDecodeError) as exc:
            raise TokenError("InvalidAuthenticationToken", "The access token is invalid.") from exc
        if not ok or not isinstance(claims, dict):
            raise TokenError("InvalidAuthenticationToken", "The access token signature is invalid.")
        if int(claims.get("exp", 0)) < time.time():
            raise TokenError("ExpiredAuthenticationToken", "The access token expiry UTC time is earlier than current UTC time.")
        if claims.get("aud") not in AUDIENCES:
            raise TokenError("InvalidAuthenticationTokenAudience", f"The access token has been obtained for wrong audience or resource '{claims.get('aud')}'.")
        return claims


def scope_audience(scope: str) -> str:
    """The audience a ``…/.default`` scope asks for (AAD drops the suffix, keeping one trailing slash)."""
    resource = scope.split()[0] if scope else ARM_AUDIENCE
    if resource.endswith("/.default"):
        resource = resource[: -len(".default")]
    while resource.endswith("//"):
        resource = resource[:-1]
    return resource


def openid_configuration(authority_host: str, tenant: str) -> dict[str, Any]:
    """The OpenID discovery document MSAL reads before asking for a token."""
    base = f"https://{authority_host}/{tenant}"
    return {
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": f"https://{authority_host}/{tenant}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"https://{authority_host}/{tenant}/v2.0",
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid"],
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    }


def instance_discovery(authority_host: str) -> dict[str, Any]:
    """``/common/discovery/instance``: the answer MSAL expects for the public cloud."""
    return {
        "tenant_discovery_endpoint": f"https://{authority_host}/common/v2.0/.well-known/openid-configuration",
        "api-version": "1.1",
        "metadata": [{"preferred_network": authority_host, "preferred_cache": "login.windows.net",
                      "aliases": [authority_host, "login.windows.net", "login.microsoft.com", "sts.windows.net"]}],
    }


def aad_error(code: str, description: str, error: str = "invalid_client") -> dict[str, Any]:
    """An AAD token-endpoint error body (``error_description`` starts with the AADSTS code)."""
    now = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    return {
        "error": error,
        "error_description": f"{code}: {description}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {now}",
        "error_codes": [int(code.removeprefix("AADSTS"))],
        "timestamp": now, "trace_id": trace, "correlation_id": correlation,
        "error_uri": "https://login.microsoftonline.com/error?code=" + code.removeprefix("AADSTS"),
    }
