"""Notifications as data: receivers declared in the controller's config, the events they get, and the
exact HTTP request each provider documents for an event. Nothing here does I/O.

Providers and the shape sent (each as its public API documents it):

- ``github``: ``POST {baseUrl}/repos/{owner}/{repo}/statuses/{sha}`` with ``Authorization: Bearer``;
  ``state`` pending / success / failure / error, ``context``, ``description``, ``target_url``.
- ``gitlab``: ``POST {baseUrl}/projects/{id}/statuses/{sha}`` with ``PRIVATE-TOKEN``;
  ``state`` pending / running / success / failed, ``name``, ``description``, ``target_url``.
- ``azureDevOps``: ``POST {baseUrl}/{organization}/{project}/_apis/git/repositories/{repository}/commits/{sha}/statuses?api-version=7.1``
  with HTTP Basic (empty user, the PAT as password); ``state`` pending / succeeded / failed / error,
  ``context: {name, genre}``, ``description``, ``targetUrl``.
- ``slack``: an incoming webhook: ``text`` (the fallback) and ``blocks``.
- ``teams``: an incoming webhook: an Adaptive Card in a ``message`` (or a legacy ``MessageCard``).
- ``webhook``: the event as JSON, signed: ``X-Amlops-Signature: sha256=HEX`` where HEX is
  HMAC-SHA256, keyed with the shared secret, of ``{X-Amlops-Timestamp}.{raw body}``; receivers
  reject timestamps older than a few minutes (replays) and compare in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.structs.manifests import SecretRef

EventName = Literal["pending", "applied", "no-changes", "detected", "held", "degraded", "invalid", "failed", "rolled-back"]
Severity = Literal["info", "warning", "error"]
ReceiverType = Literal["github", "gitlab", "azureDevOps", "slack", "teams", "webhook"]

EVENTS: Final[tuple[str, ...]] = ("pending", "applied", "no-changes", "detected", "held", "degraded", "invalid", "failed",
                                  "rolled-back")
SEVERITY_OF: Final[dict[str, str]] = {
    "pending": "info",
    "applied": "info",
    "no-changes": "info",
    "detected": "info",
    "held": "warning",
    "rolled-back": "warning",
    "degraded": "error",  # a resource of the revision is stalled or conflicting: the revision is not in place
    "invalid": "error",
    "failed": "error",
}
_SEVERITY_RANK: Final = {"info": 0, "warning": 1, "error": 2}

# Commit status states per provider, by event (the vocabulary each API accepts).
GITHUB_STATES: Final = {"pending": "pending", "held": "pending", "applied": "success", "no-changes": "success",
                        "detected": "success", "degraded": "failure", "invalid": "failure", "failed": "failure",
                        "rolled-back": "failure"}
GITLAB_STATES: Final = {"pending": "running", "held": "pending", "applied": "success", "no-changes": "success",
                        "detected": "success", "degraded": "failed", "invalid": "failed", "failed": "failed",
                        "rolled-back": "failed"}
AZURE_DEVOPS_STATES: Final = {"pending": "pending", "held": "pending", "applied": "succeeded", "no-changes": "succeeded",
                              "detected": "succeeded", "degraded": "failed", "invalid": "failed",
                              "failed": "failed", "rolled-back": "failed"}

DEFAULT_BASE_URLS: Final = {
    "github": "https://api.github.com",
    "gitlab": "https://gitlab.com/api/v4",
    "azureDevOps": "https://dev.azure.com",
}
COMMIT_STATUS_TYPES: Final = ("github", "gitlab", "azureDevOps")
SIGNATURE_HEADER: Final = "X-Amlops-Signature"
TIMESTAMP_HEADER: Final = "X-Amlops-Timestamp"
EVENT_HEADER: Final = "X-Amlops-Event"
DELIVERY_HEADER: Final = "X-Amlops-Delivery"
_SHA = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimit(_Strict):
    """At most ``perMinute`` deliveries a minute to one receiver; the rest wait their turn."""

    perMinute: int = Field(default=30, ge=1, le=6000)


class Retry(_Strict):
    """Transient failures (connection errors, 429, 5xx) are retried with doubling, jittered waits."""

    attempts: int = Field(default=5, ge=1, le=20)
    backoffSeconds: float = Field(default=1.0, gt=0, le=600)
    maxBackoffSeconds: float = Field(default=60.0, gt=0, le=3600)


class Receiver(_Strict):
    """One place to report to. Credentials are references (``fromEnv`` / ``fromFile``), never values."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    type: ReceiverType
    events: list[EventName] | None = None
    severity: Severity = "info"
    baseUrl: str | None = None
    repository: str | None = None
    project: str | None = None
    organization: str | None = None
    context: str = "amlops"
    token: SecretRef | None = None
    url: str | SecretRef | None = None
    secret: SecretRef | None = None
    format: Literal["adaptiveCard", "messageCard"] = "adaptiveCard"
    timeoutSeconds: float = Field(default=10.0, gt=0, le=120)
    rateLimit: RateLimit = Field(default_factory=RateLimit)
    retry: Retry = Field(default_factory=Retry)

    @model_validator(mode="after")
    def _complete(self) -> Receiver:
        needs: dict[str, tuple[str, ...]] = {
            "github": ("repository", "token"),
            "gitlab": ("project", "token"),
            "azureDevOps": ("organization", "project", "repository", "token"),
            "slack": ("url",),
            "teams": ("url",),
            "webhook": ("url", "secret"),
        }
        missing = [n for n in needs[self.type] if getattr(self, n) is None]
        if missing:
            raise ValueError(f"a {self.type} receiver needs {', '.join(missing)}")
        if self.type == "github" and (self.repository or "").count("/") != 1:
            raise ValueError(f"repository must be OWNER/NAME (got {self.repository!r})")
        if self.type in ("slack", "teams") and isinstance(self.url, str):
            raise ValueError(f"a {self.type} webhook URL holds its secret: give it as url: {{fromEnv: …}} or {{fromFile: …}}")
        if self.baseUrl is not None and not self.baseUrl.startswith(("https://", "http://")):
            raise ValueError(f"baseUrl must be an http(s) URL (got {self.baseUrl!r})")
        return self

    def wants(self, event: str) -> bool:
        """Whether this receiver is told about ``event`` (its list, then its minimum severity).

        Without a list, chat rooms hear outcomes only: ``pending`` is for commit statuses and webhooks.
        """
        if self.events is not None and event not in self.events:
            return False
        if self.events is None and event == "pending" and self.type in ("slack", "teams"):
            return False
        return _SEVERITY_RANK[SEVERITY_OF[event]] >= _SEVERITY_RANK[self.severity]


class Notifications(_Strict):
    """The ``notifications`` section of ``amlops run --config``."""

    statusUrl: str | None = None
    receivers: list[Receiver] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> Notifications:
        names = [r.name for r in self.receivers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"receiver names must be unique (repeated: {', '.join(dupes)})")
        return self


@dataclass(frozen=True)
class Credentials:
    """A receiver's secrets, resolved from their references at start-up and on reload."""

    token: str | None = None
    url: str | None = None
    secret: str | None = None

    def values(self) -> list[str]:
        """Every secret value, for the log redactor."""
        return [v for v in (self.token, self.url, self.secret) if v]


@dataclass(frozen=True)
class RevisionEvent:
    """What happened to one revision, as every receiver is told."""

    event: str
    revision: str
    controller: str
    summary: str
    status_url: str
    source: str = ""
    path: str = "."
    errors: tuple[str, ...] = ()
    changes: tuple[dict[str, Any], ...] = ()
    time: float = 0.0

    @property
    def severity(self) -> str:
        return SEVERITY_OF[self.event]

    @property
    def is_commit(self) -> bool:
        """Whether the revision is a Git commit (a folder's content hash has no commit to mark)."""
        return bool(_SHA.match(self.revision))

    def to_json(self) -> dict[str, Any]:
        """The generic webhook's body."""
        return {
            "apiVersion": "amlops.dev/v1",
            "kind": "RevisionEvent",
            "event": self.event,
            "severity": self.severity,
            "revision": self.revision,
            "controller": self.controller,
            "source": {"url": self.source, "path": self.path},
            "summary": self.summary,
            "errors": list(self.errors),
            "changes": list(self.changes),
            "statusUrl": self.status_url,
            "time": datetime.fromtimestamp(self.time, UTC).isoformat().replace("+00:00", "Z"),
        }


@dataclass(frozen=True)
class OutgoingRequest:
    """One HTTP request to send; ``headers`` may hold credentials and are never logged."""

    method: str
    url: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The generic webhook's signature header value: ``sha256=`` + hex HMAC-SHA256 of ``timestamp.body``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return "sha256=" + digest


def _description(event: RevisionEvent, limit: int = 140) -> str:
    text = f"{event.event}: {event.summary}" if event.summary else event.event
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _base(receiver: Receiver) -> str:
    return (receiver.baseUrl or DEFAULT_BASE_URLS.get(receiver.type, "")).rstrip("/")


def build_request(receiver: Receiver, credentials: Credentials, event: RevisionEvent, *,
                  user_agent: str, timestamp: int, delivery: str) -> OutgoingRequest | None:
    """The request ``receiver`` documents for ``event``; None where it does not apply (a commit
    status for a revision that is not a commit)."""
    json_headers = {"Content-Type": "application/json", "User-Agent": user_agent}
    if receiver.type in COMMIT_STATUS_TYPES and not event.is_commit:
        return None
    if receiver.type == "github":
        owner, repo = (receiver.repository or "").split("/")
        url = f"{_base(receiver)}/repos/{urllib.parse.quote(owner)}/{urllib.parse.quote(repo)}/statuses/{event.revision}"
        body: dict[str, Any] = {"state": GITHUB_STATES[event.event], "target_url": event.status_url,
                "description": _description(event), "context": receiver.context}
        headers = {**json_headers, "Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28",
                   "Authorization": f"Bearer {credentials.token}"}
        return OutgoingRequest("POST", url, headers, _json(body))
    if receiver.type == "gitlab":
        project = urllib.parse.quote(receiver.project or "", safe="")
        url = f"{_base(receiver)}/projects/{project}/statuses/{event.revision}"
        body = {"state": GITLAB_STATES[event.event], "name": receiver.context,
                "target_url": event.status_url, "description": _description(event, 255)}
        return OutgoingRequest("POST", url, {**json_headers, "PRIVATE-TOKEN": credentials.token or ""}, _json(body))
    if receiver.type == "azureDevOps":
        parts = [urllib.parse.quote(p or "", safe="") for p in (receiver.organization, receiver.project, receiver.repository)]
        url = (f"{_base(receiver)}/{parts[0]}/{parts[1]}/_apis/git/repositories/{parts[2]}"
               f"/commits/{event.revision}/statuses?api-version=7.1")
        body = {"state": AZURE_DEVOPS_STATES[event.event], "description": _description(event, 255),
                "targetUrl": event.status_url, "context": {"name": receiver.context, "genre": "amlops"}}
        basic = base64.b64encode(f":{credentials.token}".encode()).decode()
        return OutgoingRequest("POST", url, {**json_headers, "Authorization": f"Basic {basic}"}, _json(body))
    if receiver.type == "slack":
        return OutgoingRequest("POST", credentials.url or "", json_headers, _json(slack_message(event)))
    if receiver.type == "teams":
        card = teams_message_card(event) if receiver.format == "messageCard" else teams_adaptive_card(event)
        return OutgoingRequest("POST", credentials.url or "", json_headers, _json(card))
    body_bytes = _json({**event.to_json(), "deliveryId": delivery})
    stamp = str(timestamp)
    headers = {**json_headers, EVENT_HEADER: event.event, DELIVERY_HEADER: delivery, TIMESTAMP_HEADER: stamp,
               SIGNATURE_HEADER: sign(credentials.secret or "", stamp, body_bytes)}
    url = receiver.url if isinstance(receiver.url, str) else (credentials.url or "")
    return OutgoingRequest("POST", url, headers, body_bytes)


_EMOJI: Final = {"info": ":white_check_mark:", "warning": ":warning:", "error": ":x:"}
_COLOURS: Final = {"info": "2EB67D", "warning": "ECB22E", "error": "E01E5A"}


def _headline(event: RevisionEvent) -> str:
    return f"amlops {event.controller}: {event.revision[:12]} {event.event}"


def _details(event: RevisionEvent) -> list[str]:
    lines = [event.summary] if event.summary else []
    lines += [f"error: {e}" for e in event.errors[:5]]
    lines += [f"{c.get('action', '')} {c.get('resource', '')}: {c.get('outcome', '')}" for c in event.changes[:10]]
    return lines


def slack_message(event: RevisionEvent) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` for notifications, ``blocks`` for the layout."""
    headline = f"{_EMOJI[event.severity]} {_headline(event)}"
    body = "\n".join(_details(event)) or event.event
    return {
        "text": f"{headline}: {event.summary}" if event.summary else headline,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{headline}*\n{body}"[:3000]}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"<{event.status_url}|status page> · {event.source} `{event.path}`"[:3000]}]},
        ],
    }


def teams_adaptive_card(event: RevisionEvent) -> dict[str, Any]:
    """A Teams incoming-webhook message carrying an Adaptive Card (1.4)."""
    colour = {"info": "Good", "warning": "Warning", "error": "Attention"}[event.severity]
    return {
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": None,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "color": colour, "text": _headline(event), "wrap": True},
                    *({"type": "TextBlock", "text": line, "wrap": True} for line in _details(event)),
                    {"type": "FactSet", "facts": [{"title": "Revision", "value": event.revision},
                                                  {"title": "Source", "value": f"{event.source} {event.path}"}]},
                ],
                "actions": [{"type": "Action.OpenUrl", "title": "Status page", "url": event.status_url}],
            },
        }],
    }


def teams_message_card(event: RevisionEvent) -> dict[str, Any]:
    """A legacy Office 365 connector ``MessageCard``."""
    return {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": _headline(event),
        "themeColor": _COLOURS[event.severity],
        "title": _headline(event),
        "text": "\n\n".join(_details(event)) or event.event,
        "sections": [{"facts": [{"name": "Revision", "value": event.revision},
                                {"name": "Source", "value": f"{event.source} {event.path}"}]}],
        "potentialAction": [{"@type": "OpenUri", "name": "Status page",
                             "targets": [{"os": "default", "uri": event.status_url}]}],
    }
