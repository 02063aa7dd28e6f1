"""Keeping secrets out of text that leaves the process: log lines, error messages, notifications."""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterable


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (and its URL-quoted and base64 forms) replaced by ``***``."""
    for secret in secrets:
        if not secret:
            continue
        forms = {secret, urllib.parse.quote(secret, safe=""), base64.b64encode(secret.encode()).decode()}
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "***")
    return text
