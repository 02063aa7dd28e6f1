"""HTTP/1.1 on one client connection of a scoring process: httptools parsing, bounded heads and
bodies, answers written in order.

What a client may hold is bounded here: the request target (414) and head (431,
``--max-header-bytes``), the time to send a head or between body chunks (408,
``--header-timeout-ms``), an idle keep-alive connection (``--keepalive-timeout-ms``), and the
request bodies held at once (503 + Retry-After, ``--max-body-bytes-in-flight``; see ``budgets``).
A parsed request goes to the app (``serving.ScoringApp.handle``), which answers through
``Connection.respond``; responses are written with ``os.write`` where that is safe (see
``Connection.send``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools

if TYPE_CHECKING:
    from controller.scoring.serving import ScoringApp

REASONS = {
    200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Payload Too Large", 414: b"URI Too Long",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    503: b"Service Unavailable", 504: b"Gateway Timeout",
}
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"
RETRY_AFTER = b"retry-after: 1\r\n"
MAX_URL_BYTES = 16 * 1024
"""The request target's limit (414 past it); headers have ``--max-header-bytes``."""
LINGER_S = 2.0
"""How long a connection answered before its request was read keeps draining it before closing."""
BODY_LINGER_S = 10.0
"""The same for a body refused for lack of budget: a client sending 100 MB must get to read its 503."""
DIRECT_WRITES = os.name == "posix"  # os.write on a socket fd: POSIX only (see Connection.send)


class RequestIds:
    """UUID-shaped request ids for requests that bring none: a random prefix per process, then a counter.

    ``uuid.uuid4()`` costs a ``getrandom`` syscall and a string round trip per request, which the
    profile showed on the loop thread; ids only need to be unique, not unpredictable. Made in the
    serving process itself, so pre-forked workers never share a prefix.
    """

    __slots__ = ("count", "prefix")

    def __init__(self) -> None:
        random = os.urandom(10).hex()
        self.prefix = f"{random[:8]}-{random[8:12]}-4{random[12:15]}-{random[15:19]}-".encode()
        self.count = int.from_bytes(os.urandom(2), "big") << 32

    def next(self) -> bytes:
        """The next id (``xxxxxxxx-xxxx-4xxx-xxxx-`` then 12 hex digits)."""
        self.count += 1
        return b"%s%012x" % (self.prefix, self.count & 0xFFFFFFFFFFFF)


class Connection(asyncio.Protocol):
    """One client connection: parses requests with httptools and answers them in order."""

    def __init__(self, app: ScoringApp) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.fd = -1  # the socket's fd for GIL-free writes (see send), -1 where they are off
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.in_message = False
        self.headers_done = False
        self.head_bytes = 0  # bytes received while the head was still incomplete
        self.header_bytes = 0  # bytes of the request target and headers parsed
        self.since = time.monotonic()  # when the current head, body pause or idle spell began
        self.swept_body = 0
        self.reserved = 0  # body bytes taken from the budget by the message being read
        self.held: deque[int] = deque()  # ... and by each read request not answered yet, in order
        self.busy = False
        self.closing = False
        self.answered = 0
        self.waiting: deque[tuple[bytes, bytes, dict[bytes, bytes], bytes, bool]] = deque()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket") if DIRECT_WRITES else None
        self.fd = sock.fileno() if sock is not None else -1
        self.app.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.connections.discard(self)
        self.transport = None
        self.closing = True
        leftover = self.reserved + sum(self.held)
        self.reserved = 0
        self.held.clear()
        if leftover:
            self.app.release(leftover)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.respond(400, b"upgrades are not supported", TEXT, False, route="other")
        except httptools.HttpParserError:
            self.respond(400, b"malformed HTTP request", TEXT, False, route="other")
        if self.in_message and not self.headers_done and not self.closing:
            # httptools buffers an unfinished header line whole: stop it growing past the limit.
            self.head_bytes += len(data)
            if self.head_bytes > self.app.max_header_bytes:
                self.reject(431, b"request headers larger than --max-header-bytes")

    def eof_received(self) -> bool | None:
        return None

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.in_message = True
        self.headers_done = False
        self.url = b""
        self.headers = {}
        self.body = []
        self.body_size = self.swept_body = self.head_bytes = self.header_bytes = 0
        self.since = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_URL_BYTES and not self.closing:
            self.reject(414, b"request target longer than 16 KiB")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value
        self.header_bytes += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self.headers_done = True
        if self.closing:
            return
        if self.header_bytes + len(self.url) > self.app.max_header_bytes:
            self.reject(431, b"request headers larger than --max-header-bytes")
            return
        length = self.headers.get(b"content-length")
        if length is not None and length.isdigit() and (size := int(length)):
            if size > self.app.max_request_bytes:
                self.reject_oversize()
            elif self.app.budget.take(size):
                self.reserved = size
            else:
                self.reject_busy()

    def on_body(self, body: bytes) -> None:
        if self.closing:
            return
        self.body_size += len(body)
        if self.body_size > self.reserved:  # a chunked body: taken from the budget as it comes
            if self.body_size > self.app.max_request_bytes:
                self.reject_oversize()
                return
            if not self.app.budget.take(self.body_size - self.reserved):
                self.reject_busy()
                return
            self.reserved = self.body_size
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.closing:
            return
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body = []  # the chunks go now; the joined body lives until the answer is written
        self.held.append(self.reserved)
        self.reserved = 0
        request = (self.parser.get_method(), self.url, self.headers, body, self.parser.should_keep_alive())
        if self.busy:
            # HTTP/1.1 pipelining: answer in order, one at a time.
            self.waiting.append(request)
        else:
            self.busy = True
            self.app.handle(self, *request)

    # answering

    def reject_oversize(self) -> None:
        """Answer 413 before the body is read, then drop the rest of it."""
        self.respond(413, b"request body larger than --max-request-bytes", TEXT, False, route="score",
                     linger=LINGER_S)

    def reject_busy(self) -> None:
        """Answer 503 + Retry-After: the bodies already held use the process's budget."""
        self.app.metrics.count_queue_rejection("bytes")
        self.respond(503, b"too many request bytes in flight (--max-body-bytes-in-flight)", TEXT, False,
                     RETRY_AFTER, route="score", linger=BODY_LINGER_S)

    def reject(self, status: int, message: bytes) -> None:
        """Answer a request whose head breaks a limit, and read nothing more of it."""
        self.respond(status, message, TEXT, False, route="other", linger=LINGER_S)
        if self.transport is not None:
            self.transport.pause_reading()  # a client still sending is held back by its own socket buffer

    def check_timeouts(self, now: float, header_timeout: float, keepalive_timeout: float) -> None:
        """Close a connection whose head is late, whose body stalled, or that idled too long (slowloris)."""
        if self.closing or self.busy:
            return  # a request under way has run()'s own timeout
        if self.in_message:
            if self.headers_done and self.body_size != self.swept_body:
                self.swept_body, self.since = self.body_size, now  # the body is still coming
            elif now - self.since > header_timeout:
                self.respond(408, b"request not received within --header-timeout-ms", TEXT, False, route="other")
        elif now - self.since > (keepalive_timeout if self.answered else header_timeout):
            self.close()

    def respond(self, status: int, body: bytes, content_type: bytes, keep_alive: bool,
                extra: bytes = b"", route: str = "score", started: float | None = None,
                linger: float = 0.0) -> None:
        """Write one response; close afterwards when the client or a drain asks for it."""
        app = self.app
        keep = keep_alive and not app.draining
        transport = self.transport
        if transport is not None and not self.closing:
            head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n" % (
                status, REASONS.get(status, b"Status"), content_type, len(body), extra,
                b"" if keep else b"connection: close\r\n",
            )
            self.send(transport, head + body)
            if not keep:
                self.closing = True
                if linger:
                    # Closing with unread request bytes would reset the connection and could
                    # destroy the 413 before the client reads it: half-close, read and drop what
                    # still comes for ``linger`` seconds (a client that read the answer closes first).
                    with contextlib.suppress(OSError, RuntimeError):
                        transport.write_eof()
                    asyncio.get_running_loop().call_later(linger, transport.close)
                else:
                    transport.close()
        now = self.since = time.monotonic()
        app.metrics.observe(route, status, 0.0 if started is None else now - started)
        if self.held:  # the request answered held its body until now
            app.release(self.held.popleft())
        self.answered += 1
        self.busy = False
        if self.waiting and not self.closing:
            self.busy = True
            self.app.handle(self, *self.waiting.popleft())

    def send(self, transport: asyncio.Transport, data: bytes) -> None:
        """Write ``data`` with ``os.write`` when nothing is queued, else through the transport.

        uvloop's ``transport.write`` makes its ``write`` syscall while holding the GIL; on
        loopback that syscall also runs the reader's TCP receive path, and the profile showed
        it as the largest single GIL hold on the loop thread, stalling the run() thread each
        time its TensorFlow call returned. ``os.write`` releases the GIL for the syscall. Only
        an empty transport buffer allows it (the bytes stay in order), the transport is not
        closing (so the fd is still this connection's), and whatever the socket did not take,
        or an error, goes to ``transport.write`` (which buffers it or reports the loss).
        """
        sent = 0
        if self.fd >= 0 and not transport.is_closing() and not transport.get_write_buffer_size():
            try:
                sent = os.write(self.fd, data)
            except OSError:  # EAGAIN, EPIPE, ECONNRESET: the transport handles and reports them
                sent = 0
        if sent < len(data):
            transport.write(data[sent:] if sent else data)

    def idle(self, fresh_grace: bool) -> bool:
        """No request under way; with ``fresh_grace`` (the drain's first moments) no connection is idle.

        A just-accepted connection usually has its first request on the wire already, and a busy
        keep-alive client may be sending its next one right now: closing either resets a request
        the client cannot safely retry. During the grace every answer says ``connection: close``,
        so connections in use end cleanly; only the ones still quiet after it are closed.
        """
        if self.busy or self.in_message:
            return False
        return not fresh_grace

    def close(self) -> None:
        """Close now (used when draining)."""
        if self.transport is not None:
            self.closing = True
            self.transport.close()
