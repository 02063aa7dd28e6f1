"""Requests, responses and the route table: ``METHOD host-kind template`` → handler.

Route templates double as counter keys (``"PUT arm {WS}/computes/{name}"``), so tests can count
requests by what they do rather than by their URL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

WS_TEMPLATE = ("/subscriptions/{sub}/resourceGroups/{rg}/providers/"
               "Microsoft.MachineLearningServices/workspaces/{ws}")


@dataclass
class Request:
    """One decrypted HTTP/1.1 request."""

    method: str
    host: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    route: str = ""

    def json(self) -> Any:
        """The body as JSON (``{}`` when empty); ``ValueError`` if it is not JSON."""
        if not self.body:
            return {}
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """A header, case-insensitively."""
        lower = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lower), None)


@dataclass
class Response:
    """What a handler answers."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON response."""
    return Response(status, json.dumps(payload).encode(), {"Content-Type": "application/json; charset=utf-8", **(headers or {})})


def arm_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """ARM's error shape: ``{"error": {"code", "message"}}``."""
    return json_response(status, {"error": {"code": code, "message": message}}, headers)


def mms_error(status: int, code: str, message: str, details: list[dict[str, str]] | None = None,
              headers: Mapping[str, str] | None = None) -> Response:
    """Model management's error shape: ``{"code", "statusCode", "message", "details"}``."""
    return json_response(status, {"code": code, "statusCode": status, "message": message,
                                  "details": details or []}, headers)


def parse_target(raw_path: str) -> tuple[str, dict[str, str]]:
    """Path (double slashes collapsed, percent-decoding deferred to matching) and query of a request target."""
    parts = urlsplit(raw_path)
    path = re.sub(r"/{2,}", "/", parts.path) or "/"
    return path, dict(parse_qsl(parts.query, keep_blank_values=True))


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    """One entry of the table."""

    method: str
    host_kind: str
    template: str
    handler: Handler
    authenticated: bool
    pattern: re.Pattern[str]

    @property
    def key(self) -> str:
        """The counter key: method, host kind and the template with ``{WS}`` folded."""
        return f"{self.method} {self.host_kind} {self.template.replace(WS_TEMPLATE, '{WS}')}"


def _compile(template: str) -> re.Pattern[str]:
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)(\+?)\}", template):
        out += re.escape(template[pos:m.start()])
        out += f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)"
        pos = m.end()
    out += re.escape(template[pos:])
    return re.compile(f"^{out}/?$", re.IGNORECASE)


class Router:
    """The route table of one emulator."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, host_kind: str, template: str, handler: Handler, *, authenticated: bool = True) -> None:
        """Register ``handler`` for ``method`` on hosts of ``host_kind`` at ``template``."""
        self.routes.append(Route(method, host_kind, template, handler, authenticated, _compile(template)))

    def match(self, method: str, host_kind: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """``(route, params, path_known)``; ``path_known`` tells 405 from 404."""
        known = False
        for route in self.routes:
            if route.host_kind != host_kind:
                continue
            m = route.pattern.match(path)
            if m is None:
                continue
            known = True
            if route.method == method:
                return route, {k: unquote(v) for k, v in m.groupdict().items()}, True
        return None, {}, known
