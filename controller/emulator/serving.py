"""The HTTPS proxy: CONNECT to an emulated host, TLS terminated with the throw-away CA, routed locally.

Every other CONNECT is refused with 403; nothing is ever forwarded anywhere. The listen port also
answers a plain-HTTP admin API under ``/_emulator/`` (faults, request counters, health).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from controller.emulator.authorities import Authority
from controller.emulator.emulating import Emulator
from controller.emulator.faults import FaultRule
from controller.emulator.frontends import PATH_PREFIX
from controller.emulator.logins import TokenError
from controller.emulator.records import attach_verdict
from controller.emulator.routetables import Request, Response, arm_error, json_response, parse_target
from controller.structs.logformats import event_logger

log = event_logger(__name__)

_MAX_BODY = 512 * 1024 * 1024


class ProxyServer(ThreadingHTTPServer):
    """A threaded proxy bound to one emulator."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: Emulator, authority: Authority) -> None:
        self.emulator = emulator
        self.authority = authority
        super().__init__(address, _OuterHandler)


class _Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http.message", message=format % args)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def _send(self, response: Response, head_only: bool = False) -> None:
        self.send_response(response.status)
        headers = dict(response.headers)
        if "Content-Length" not in headers:
            headers["Content-Length"] = str(len(response.body))
        headers.setdefault("x-ms-request-id", headers.get("x-ms-request-id", "emulator"))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head_only and response.body:
            self.wfile.write(response.body)
        self.wfile.flush()


class _InnerHandler(_Base):
    """Requests inside a CONNECT tunnel, already decrypted."""

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, ssl.SSLError, TimeoutError):
            self.close_connection = True

    def _dispatch(self) -> None:
        emulator = self.server.emulator
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        kind = emulator.host_kind(host)
        try:
            body = self._read_body()
        except ValueError:
            self._send(arm_error(413, "RequestEntityTooLarge", "The request body is too large."))
            return
        if kind is None:
            self._send(arm_error(403, "HostNotEmulated", f"{host} is not emulated here"))
            return
        path, query = parse_target(self.path)
        route, params, known = emulator.router.match(self.command, kind, path)
        if route is None:
            emulator.faults.record(f"{self.command} {kind} <unmatched>")
            log.info("route.not_found", method=self.command, host=host, path=path)
            if known:
                self._send(arm_error(405, "MethodNotAllowed", f"The requested method {self.command} is not allowed for {path}."))
            else:
                self._send(arm_error(404, "NoRegisteredProviderFound" if kind == "arm" else "NotFound",
                                     f"The emulator does not serve {self.command} {path} on {host}."))
            return
        request = Request(self.command, host, path, query, dict(self.headers.items()), body, params, route.key)
        verdict = emulator.faults.record(route.key)
        if verdict.latency_s:
            time.sleep(verdict.latency_s)
        if verdict.status is not None:
            headers = {"Retry-After": f"{verdict.retry_after:g}"} if verdict.retry_after is not None else {}
            if verdict.retry_after_ms is not None:  # what Azure ML's v2 routes send (azure-core reads it first)
                headers["retry-after-ms"] = str(verdict.retry_after_ms)
            codes = {429: "TooManyRequests", 500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable",
                     504: "GatewayTimeout", 400: "BadRequest", 404: "NotFound", 409: "Conflict"}
            self._send(arm_error(verdict.status, codes.get(verdict.status, "Error"),
                                 f"Injected fault ({verdict.status}) for {route.key}.", headers),
                       head_only=self.command == "HEAD")
            return
        if route.authenticated:
            try:
                emulator.issuer.check(request.header("Authorization"))
            except TokenError as exc:
                code, message = exc.args[0], exc.args[1]
                self._send(arm_error(401, code, message, {"WWW-Authenticate": 'Bearer authorization_uri='
                                     '"https://login.microsoftonline.com/common", error="invalid_token"'}))
                return
        attach_verdict(request, verdict)
        try:
            response = route.handler(request)
        except Exception:  # a handler bug must answer 500 like Azure, not drop the connection
            log.exception("handler.failed", route=route.key)
            response = arm_error(500, "InternalServerError", "The emulator failed to handle this request.")
        log.info("request.answered", method=self.command, route=route.key, status=response.status)
        self._send(response, head_only=self.command == "HEAD")

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _dispatch


class _OuterHandler(_Base):
    """Requests to the proxy itself: CONNECT tunnels and the plain-HTTP admin API."""

    def do_CONNECT(self) -> None:
        host, _, port = self.path.rpartition(":")
        host = host.strip("[]").lower()
        if self.server.emulator.host_kind(host) is None or port not in ("443", ""):
            message = (f"amlops emulator: CONNECT to {self.path} refused: only the emulated Azure hosts "
                       "(login.microsoftonline.com, management.azure.com, <region>.api.azureml.ms, "
                       "<account>.blob.core.windows.net) are served, and nothing is forwarded off this machine.\n")
            log.warning("connect.refused", target=self.path)
            self.send_response(403, "Forbidden")
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(message.encode())))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(message.encode())
            self.close_connection = True
            return
        self.send_response(200, "Connection Established")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        context = self.server.authority.context_for(host)
        try:
            tls = context.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("tls.handshake_failed", host=host, error=str(exc))
            return
        try:
            _InnerHandler(tls, self.client_address, self.server)
        finally:
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_RDWR)
            tls.close()

    def _admin(self) -> None:
        emulator = self.server.emulator
        try:
            body = self._read_body()
        except ValueError:
            self._send(json_response(413, {"error": "too large"}))
            return
        path, _query = parse_target(self.path)
        if path.startswith(PATH_PREFIX):  # the v2 endpoints' scoring URIs (the router in front of replicas)
            answer = emulator.frontend.handle(self.command, path, dict(self.headers.items()), body)
            self._send(Response(answer.status, answer.body, answer.headers))
            return
        if self.path.startswith("http://") or self.path.startswith("https://"):
            self._send(Response(403, b"amlops emulator: plain-HTTP proxying is refused; nothing is forwarded.\n",
                                {"Content-Type": "text/plain"}))
            return
        if path == "/_emulator/health" and self.command == "GET":
            self._send(json_response(200, {"status": "ok"}))
        elif path == "/_emulator/requests" and self.command == "GET":
            self._send(json_response(200, emulator.faults.counts()))
        elif path == "/_emulator/requests/log" and self.command == "GET":
            self._send(json_response(200, {"requests": emulator.faults.log()}))
        elif path == "/_emulator/requests" and self.command in ("DELETE", "POST"):
            emulator.faults.reset_counts()
            self._send(json_response(200, {}))
        elif path == "/_emulator/faults" and self.command == "GET":
            self._send(json_response(200, {"faults": emulator.faults.rules()}))
        elif path == "/_emulator/faults" and self.command == "DELETE":
            emulator.faults.set_rules([])
            self._send(json_response(200, {"faults": []}))
        elif path == "/_emulator/faults" and self.command == "POST":
            try:
                data = json.loads(body or b"{}")
                items = data if isinstance(data, list) else data.get("faults", [data])
                rules = [FaultRule.from_json(dict(item)) for item in items]
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                self._send(json_response(400, {"error": f"invalid fault: {exc}"}))
                return
            if isinstance(data, dict) and data.get("replace", True) is False:
                emulator.faults.add_rules(rules)
            else:
                emulator.faults.set_rules(rules)
            self._send(json_response(200, {"faults": emulator.faults.rules()}))
        else:
            self._send(json_response(404, {"error": f"no admin route {self.command} {path}; see /_emulator/faults, "
                                                    "/_emulator/requests, /_emulator/requests/log, /_emulator/health"}))

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _admin
