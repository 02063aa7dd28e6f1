"""Azure failures as the controller's two kinds of error: transient (retry) or permanent (stall).

Shared by both API generations: azureml-core raises its own exceptions with the HTTP answer in
their text, azure-ai-ml raises azure-core's ``HttpResponseError`` with a status code and headers.
Nothing that may carry a secret (headers, bearer tokens) is kept in the message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

from controller.structs.errors import PermanentError, TransientError

T = TypeVar("T")

_TRANSIENT_CODES: Final = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_STATUS = re.compile(r"(?:Response Code|status(?:_code)?|Code)[:=]?\s*(429|500|502|503|504)\b", re.IGNORECASE)
_RETRY_AFTER = re.compile(r"'Retry-After':\s*'([0-9.]+)'", re.IGNORECASE)
_NETWORK_ERRORS: Final = frozenset({"ConnectionError", "ConnectTimeout", "ReadTimeout", "ProxyError",
                                    "ChunkedEncodingError", "ServiceRequestError", "ServiceResponseError",
                                    "ServiceRequestTimeoutError", "ServiceResponseTimeoutError"})
_PERMANENT_CODES: Final = {"QuotaExceeded": "QuotaExceeded", "OutOfQuota": "QuotaExceeded",
                           "BadArgument": "InvalidSpec", "UserError": "InvalidSpec", "ValidationError": "InvalidSpec",
                           "InvalidRequestContent": "InvalidSpec"}


def scrub(text: str) -> str:
    """Drop header dumps (they may echo Authorization) and bearer tokens from SDK exception text."""
    return re.sub(r"Headers: \{.*?\}\n", "", re.sub(r"Bearer [A-Za-z0-9._~+/=-]+", "Bearer ***", text), flags=re.DOTALL)


def retry_after_of(response: Any) -> float | None:
    """Seconds the service asked to wait: ``retry-after-ms`` / ``x-ms-retry-after-ms``, else ``Retry-After``."""
    headers = getattr(response, "headers", None) or {}
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value:
            try:
                return float(value) / 1000.0
            except ValueError:
                pass
    value = headers.get("Retry-After")
    if value:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def classify(what: str, exc: BaseException) -> Exception:
    """An SDK failure as a ``TransientError`` or ``PermanentError`` (no headers or bodies with secrets kept)."""
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    status_code = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    if isinstance(status_code, int) and status_code in _TRANSIENT_CODES:
        wait = retry_after_of(response)
        asked = f", after the {wait:g} s the service asked for" if wait is not None else ""
        return TransientError(f"{what}: Azure answered {status_code}; will retry{asked} ({scrub(first)[:200]})",
                              retry_after=wait)
    status = _TRANSIENT_STATUS.search(text)
    if status or isinstance(exc, ConnectionError | TimeoutError) or type(exc).__name__ in _NETWORK_ERRORS:
        after = _RETRY_AFTER.search(text)
        code = status.group(1) if status else type(exc).__name__
        return TransientError(f"{what}: Azure answered {code}; will retry ({scrub(first)[:200]})",
                              retry_after=float(after.group(1)) if after else None)
    if "AADSTS" in text or type(exc).__name__ in ("AuthenticationException", "AuthenticationError",
                                                  "ClientAuthenticationError", "CredentialUnavailableError"):
        code = re.search(r"AADSTS\d+", text)
        # A credential that cannot run here (no `az`, no managed identity) says why; that text holds no secret.
        unavailable = type(exc).__name__ == "CredentialUnavailableError"
        detail = code.group(0) if code else (scrub(first)[:200] if unavailable else "authentication error")
        return PermanentError(f"{what}: login failed ({detail})", reason="AuthenticationFailed")
    if "QuotaExceeded" in text or "quota" in text.lower():
        return PermanentError(f"{what}: quota exceeded: {scrub(first)[:300]}", reason="QuotaExceeded")
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    if isinstance(code, str) and code in _PERMANENT_CODES:
        return PermanentError(f"{what}: {scrub(text)[:1200]}", reason=_PERMANENT_CODES[code])
    return PermanentError(f"{what}: {scrub(text)[:1200]}", reason="AzureError")


def call(what: str, fn: Callable[[], T]) -> T:
    """``fn()``, with SDK failures classified (our own errors pass through)."""
    try:
        return fn()
    except (PermanentError, TransientError):
        raise
    except Exception as exc:
        raise classify(what, exc) from exc
