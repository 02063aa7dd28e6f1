"""HTTP endpoints on one port: health, readiness, metrics, status (JSON and HTML), sync and webhooks.

Handlers only read the status board or wake the loop; nothing here reconciles, so a slow reconcile
never blocks ``/healthz`` and a flood of webhooks collapses into one pending wake-up.
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from controller.core.rendering import JSON_FORMAT_VERSION, describe_rollout_state
from controller.runtime.metrics import CONTENT_TYPE, ControllerMetrics
from controller.runtime.statuses import StatusBoard
from controller.runtime.webhooks import MAX_BODY_BYTES, bearer_token_valid, judge
from controller.structs.logformats import event_logger, rfc3339

log = event_logger(__name__)


@dataclass(frozen=True)
class Endpoints:
    """What the handlers may touch: the status board, metrics, the loop's wake-up, and secrets (read per call)."""

    status: StatusBoard
    metrics: ControllerMetrics
    wake: Callable[[str], None]
    webhook_secret: Callable[[], str | None]
    api_token: Callable[[], str | None]
    branch: Callable[[], str | None]


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) as a tuple."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Handler(BaseHTTPRequestHandler):
    server_version = "amlops"
    endpoints: Endpoints  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http.request", line=format % args)

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, doc: Any) -> None:
        self._send(code, (json.dumps(doc, indent=2, default=str) + "\n").encode(), "application/json")

    def _body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length) if length else b""

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        e = self.endpoints
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            ready, reason = e.status.readiness()
            self._send(200 if ready else 503, (reason + "\n").encode())
        elif path == "/metrics":
            self._send(200, e.metrics.render(), CONTENT_TYPE)
        elif path == "/api/status":
            self._json(200, api_document(e.status.snapshot()))
        elif path in ("/", "/index.html"):
            self._send(200, render_page(e.status.snapshot()).encode(), "text/html; charset=utf-8")
        else:
            self._send(404, b"not found\n")

    def do_POST(self) -> None:
        e = self.endpoints
        path = self.path.split("?", 1)[0]
        body = self._body()
        if body is None:
            self._send(413, b"body too large or malformed\n")
            return
        if path == "/api/sync":
            if not bearer_token_valid(e.api_token(), self.headers.get("Authorization", "")):
                log.warning("api.sync.denied", client=self.client_address[0])
                self._send(401, b"unauthorized: Authorization: Bearer <api token> required\n")
                return
            e.wake("api")
            self._json(202, {"accepted": True, "reason": "sync requested"})
        elif path == "/hooks/git":
            headers = {k: v for k, v in self.headers.items()}
            verdict = judge(headers, body, e.webhook_secret(), e.branch())
            e.metrics.webhooks.labels(provider=verdict.provider or "unknown", code=str(verdict.status)).inc()
            log.info("webhook.received", provider=verdict.provider, code=verdict.status, reason=verdict.reason)
            if verdict.wake:
                e.wake(f"webhook:{verdict.provider}")
            self._json(verdict.status, {"reason": verdict.reason, "synced": verdict.wake})
        else:
            self._send(404, b"not found\n")


class HttpServer:
    """A ``ThreadingHTTPServer`` on its own daemon thread."""

    def __init__(self, listen: str, endpoints: Endpoints) -> None:
        handler = type("Handler", (_Handler,), {"endpoints": endpoints})
        self._server = ThreadingHTTPServer(parse_listen(listen), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def address(self) -> str:
        """The bound ``host:port`` (useful with port 0)."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        """Serve on a background thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


def _rfc3339_times(value: Any, key: str = "") -> Any:
    """``value`` with every ``…At`` field given in seconds since the epoch written as RFC 3339 instead."""
    if isinstance(value, dict):
        return {k: _rfc3339_times(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_rfc3339_times(v) for v in value]
    if key.endswith("At") and isinstance(value, int | float) and not isinstance(value, bool):
        return rfc3339(value)
    return value


def api_document(snapshot: dict[str, Any]) -> dict[str, Any]:
    """``/api/status``: the status board in the shape every amlops JSON document has (camelCase keys,
    RFC 3339 times, a ``formatVersion``), as ``amlops status --output json`` and plan JSON."""
    return {"formatVersion": JSON_FORMAT_VERSION, **_rfc3339_times(snapshot)}


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _tone(condition: dict[str, Any]) -> str:
    """Green for good news, red for bad, amber for what deserves a look (Ready and Synced are the positive types)."""
    active = bool(condition.get("status"))
    if condition.get("type") in ("Ready", "Synced"):
        return "ok" if active else "bad"
    if condition.get("type") in ("Substituted", "Progressing", "GpuUnavailable"):
        return "warn" if active else "ok"
    return "bad" if active else "ok"


def render_page(doc: dict[str, Any]) -> str:
    """A small self-refreshing HTML status page: last reconcile, errors, and a table of resources."""
    esc = html.escape
    last = doc.get("lastReconcile") or {}
    source = doc.get("source") or {}
    rows = []
    for r in doc.get("resources") or []:
        conds = " ".join(
            f'<span class="c {_tone(c)}" title="{esc(str(c.get("message", "")))}">'
            f"{esc(str(c.get('type')))}: {esc(str(c.get('reason')))}</span>"
            for c in r.get("conditions") or []
        )
        # What is wrong is written out, not left to a tooltip a reader may never hover over.
        conds += "".join(
            f'<div class="msg">{esc(str(c.get("type")))}: {esc(str(c.get("message")))}</div>'
            for c in r.get("conditions") or [] if c.get("message") and _tone(c) != "ok"
        )
        detail = r.get("details") or {}
        parts = []
        if detail.get("scoringUri"):
            parts.append(f"<code>{esc(str(detail['scoringUri']))}</code>")
        if detail.get("replicas"):
            parts.append(f"replicas {esc(str(detail['replicas']))}")
        versions = detail.get("modelVersions") or ([f"v{detail['version']}"] if detail.get("version") else [])
        if versions:
            parts.append(esc(", ".join(str(v) for v in versions)))
        if isinstance(detail.get("rollout"), dict):
            parts.append("rollout: " + esc(describe_rollout_state(detail["rollout"])))
        extra = "<br>".join(parts)
        rows.append(
            f"<tr><td>{esc(str(r.get('kind')))}</td><td>{esc(str(r.get('name')))}</td>"
            f"<td class=\"{'stale' if r.get('inSync') is False else ''}\">{esc(str(r.get('status') or ''))}</td>"
            f"<td>{conds}</td><td>{extra}</td></tr>"
        )
    errors = "".join(f"<li><code>{esc(str(err))}</code></li>" for err in last.get("errors") or [])
    changes = "".join(
        f"<li><code>{esc(str(c.get('symbol', '')))} {esc(str(c.get('id')))}</code> {esc(str(c.get('outcome', '')))}"
        f" {esc(str(c.get('message', '') or ''))}</li>"
        for c in last.get("changes") or []
    )
    history = "".join(
        f"<tr><td>{_when(h.get('finishedAt'))}</td><td><code>{esc(str(h.get('revision', ''))[:12])}</code></td>"
        f"<td>{esc(str(h.get('status')))}</td><td>{esc(str(h.get('summary', '')))}</td></tr>"
        for h in doc.get("history") or []
    )
    receivers = "".join(
        f"<tr><td>{esc(str(n.get('name')))}</td><td>{esc(str(n.get('type')))}</td><td>"
        + " ".join(f'<span class="c {_tone(c)}">{esc(str(c.get("type")))}: {esc(str(c.get("reason")))}</span> '
                   f"{esc(str(c.get('message', '')))}" for c in n.get("conditions") or [])
        + f"</td><td>{esc(str(n.get('delivered')))} / {esc(str(n.get('failed')))} / {esc(str(n.get('dropped')))}</td></tr>"
        for n in doc.get("notifications") or []
    )
    notifications = (
        "<h2>Notifications</h2><table><tr><th>Receiver</th><th>Type</th><th>Condition</th>"
        f"<th>Delivered / failed / dropped</th></tr>{receivers}</table>" if receivers else ""
    )
    status = str(last.get("status", "pending"))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>amlops — {esc(str(doc.get("controller")))}</title>
<style>
body{{font:14px system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}} code{{font-size:13px}}
.c{{display:inline-block;padding:1px 6px;margin:1px;border-radius:8px;font-size:12px}}
.ok{{background:#d4f4dd}} .bad{{background:#fbd5d5}} .warn{{background:#fdecc8}}
.msg{{font-size:12px;color:#8a1c1c;margin-top:2px}} .stale{{color:#b01c1c;font-weight:bold}}
.s-applied,.s-no-changes{{color:#17702e}} .s-invalid,.s-failed{{color:#b01c1c}} .s-held,.s-detected{{color:#8a5a00}}
</style></head><body>
<h1>amlops <small>{esc(str(doc.get("controller")))} ({esc(str(doc.get("role")))})</small></h1>
<p>Source <code>{esc(str(source.get("url")))}</code>{f' branch <code>{esc(str(source.get("branch")))}</code>' if source.get("branch") else ""}
path <code>{esc(str(source.get("path")))}</code>{" — <b>detect only</b>" if doc.get("detectOnly") else ""}</p>
<p>Last reconcile: <b class="s-{esc(status)}">{esc(status)}</b> at {_when(last.get("finishedAt"))}
of <code>{esc(str(last.get("revision", "—")))}</code>;
last applied <code>{esc(str(doc.get("lastAppliedRevision") or "—"))}</code>;
next at {_when(doc.get("nextReconcileAt"))}.</p>
{f"<p>Source error: <code>{esc(str(source.get('lastFetchError')))}</code></p>" if source.get("lastFetchError") else ""}
{f"<h2>Errors</h2><ul>{errors}</ul>" if errors else ""}
{f"<h2>Changes</h2><ul>{changes}</ul>" if changes else ""}
<h2>Resources</h2>
<table><tr><th>Kind</th><th>Name</th><th>Status</th><th>Conditions</th><th>Live</th></tr>{"".join(rows)}</table>
{notifications}
<h2>History</h2>
<table><tr><th>Finished</th><th>Revision</th><th>Status</th><th>Summary</th></tr>{history}</table>
</body></html>
"""
