"""Git push webhooks: verify the sender, read which branch moved, and nothing more.

The payload is never trusted for content (level-triggered, like controller-runtime): a valid push
to the followed branch only wakes the loop, which then fetches the source itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

MAX_BODY_BYTES: Final = 5 * 1024 * 1024


@dataclass(frozen=True)
class Verdict:
    """What to answer a webhook call, and whether to wake the loop."""

    status: int
    reason: str
    wake: bool = False
    provider: str = ""
    branch: str | None = None


def _header(headers: Mapping[str, str], name: str) -> str:
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), "")


def github_signature_valid(secret: str, body: bytes, header: str) -> bool:
    """Whether ``X-Hub-Signature-256`` is ``sha256=`` + HMAC-SHA256 of ``body`` under ``secret``."""
    if not secret or not header.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().encode())


def gitlab_token_valid(secret: str, header: str) -> bool:
    """Whether ``X-Gitlab-Token`` equals the secret (compared in constant time)."""
    return bool(secret) and hmac.compare_digest(secret.encode(), header.encode())


def _pushed_branch(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    ref = payload.get("ref") if isinstance(payload, dict) else None
    if isinstance(ref, str) and ref.startswith("refs/heads/"):
        return ref.removeprefix("refs/heads/")
    return None


def judge(headers: Mapping[str, str], body: bytes, secret: str | None, branch: str | None) -> Verdict:
    """Decide the answer to ``POST /hooks/git``: 401 unless authentic, 202 ignored unless a push to ``branch``.

    ``branch=None`` (a source that follows the remote's default branch not yet fetched, or a
    folder) accepts a push to any branch: waking the loop costs one fetch and changes nothing.
    """
    if not secret:
        return Verdict(401, "webhook secret not configured")
    if _header(headers, "X-Hub-Signature-256") or _header(headers, "X-GitHub-Event"):
        provider = "github"
        if not github_signature_valid(secret, body, _header(headers, "X-Hub-Signature-256")):
            return Verdict(401, "bad or missing signature", provider=provider)
        event = _header(headers, "X-GitHub-Event")
        if event == "ping":
            return Verdict(200, "pong", provider=provider)
        is_push = event == "push"
    elif _header(headers, "X-Gitlab-Token") or _header(headers, "X-Gitlab-Event"):
        provider = "gitlab"
        if not gitlab_token_valid(secret, _header(headers, "X-Gitlab-Token")):
            return Verdict(401, "bad or missing token", provider=provider)
        is_push = _header(headers, "X-Gitlab-Event") == "Push Hook"
    else:
        return Verdict(401, "no signature: expected X-Hub-Signature-256 or X-Gitlab-Token")
    if not is_push:
        return Verdict(202, "ignored: not a push event", provider=provider)
    pushed = _pushed_branch(body)
    if pushed is None:
        return Verdict(202, "ignored: push carries no branch ref", provider=provider)
    if branch is not None and pushed != branch:
        return Verdict(
            202, f"ignored: push to {pushed}, following {branch}", provider=provider, branch=pushed
        )
    return Verdict(202, "sync triggered", wake=True, provider=provider, branch=pushed)


def bearer_token_valid(expected: str | None, authorization: str) -> bool:
    """Whether an ``Authorization: Bearer <token>`` header carries ``expected`` (constant-time)."""
    if not expected or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(expected.encode(), authorization.removeprefix("Bearer ").strip().encode())
