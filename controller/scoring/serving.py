"""One scoring process: HTTP/1.1 on asyncio + uvloop + httptools (no framework), run() off the loop.

The loop only parses, routes, authenticates and writes; run() happens on the dispatcher's slot
threads (see ``dispatching``), so health checks, /metrics and timeouts keep answering while a
run() is slow. A watchdog on the loop answers 504 for a run() past ``--scoring-timeout-ms`` (the
thread itself cannot be interrupted and keeps its slot until run() returns) and 503 for a request
that waited longer than ``--max-queue-wait-ms`` for a slot.

The run() thread is the bottleneck at every load level, so the loop's per-request work is kept
off it: responses are written with ``os.write`` (the GIL is released for the syscall, see
``Connection.send``), metrics are plain counters owned by the loop (``metrics``), and a request
without an ``x-request-id`` gets a counter-based id instead of a ``uuid4()``. Timeouts cost no
timer per request: one sweeper every ``SWEEP_INTERVAL_S`` checks the queue and the running slots.

What a client may hold is bounded: the request target (414) and head (431, ``--max-header-bytes``),
the time to send a head or between body chunks (408, ``--header-timeout-ms``), an idle keep-alive
connection (``--keepalive-timeout-ms``), and the request bodies held at once (503 + Retry-After,
``--max-body-bytes-in-flight``; see ``budgets``). Health checks are answered on the loop, so none
of this can starve them.

Only failures and lifecycle changes are logged; a line per successful request would cost more
than the request at the rates this host serves (the metrics count them instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httptools
import orjson

from controller.scoring.budgets import BodyBudget, fix_mmap_threshold, return_free_memory
from controller.scoring.devices import observe_device
from controller.scoring.dispatching import EXPIRED, OK, Dispatcher, Job
from controller.scoring.forwarding import Answer, Splitter
from controller.scoring.importing import EntryPoint, load_entry
from controller.scoring.keys import KeyRing
from controller.scoring.metrics import ScoringMetrics
from controller.scoring.options import ScoringOptions
from controller.scoring.reporting import log_event, report_load
from controller.scoring.sockets import BACKLOG
from controller.scoring.swaggers import swagger_document
from controller.structs.rollouts import Counters

Reporter = Callable[..., None]

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
SWEEP_INTERVAL_S = 0.05
DRAIN_LIMIT_S = 10.0
FRESH_GRACE_S = 1.0
QUEUE_PER_SLOT = 256
MAX_URL_BYTES = 16 * 1024
"""The request target's limit (414 past it); headers have ``--max-header-bytes``."""
LINGER_S = 2.0
"""How long a connection answered before its request was read keeps draining it before closing."""
BODY_LINGER_S = 10.0
"""The same for a body refused for lack of budget: a client sending 100 MB must get to read its 503."""
CONNECTION_SWEEP_S = 0.5
"""How often connections are checked against the header and keep-alive timeouts."""
TRIM_DELAY_S = 0.1
"""Free pages are returned a moment after a large body is released (its run() thread lets go of it too)."""
DIRECT_WRITES = os.name == "posix"  # os.write on a socket fd: POSIX only (see Connection.send)
# What a forwarded answer keeps of the candidate's headers (the request ids are this process's own).
_PASSED_HEADERS = (b"x-ms-run-fn-exec-ms", b"x-ms-run-function-failed", b"retry-after")


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


class ScoringApp:
    """Routes, auth, readiness and the lifecycle of one scoring process."""

    def __init__(self, options: ScoringOptions, report: Reporter, on_drain: Callable[[], None]) -> None:
        self.options = options
        self.report = report
        self.on_drain = on_drain
        self.metrics = ScoringMetrics(
            {"service": options.service_name or "", "version": options.version, "replica": options.replica,
             "worker": str(options.worker)},
            options.metrics_dir,
        )
        self.keys = (KeyRing(options.keys_file, options.auth, options.service_name)
                     if options.auth != "none" and options.keys_file else None)
        self.max_request_bytes = options.max_request_bytes
        self.max_header_bytes = options.max_header_bytes
        self.budget = BodyBudget(options.max_body_bytes_in_flight)
        self.timeout_s = options.scoring_timeout_ms / 1000.0
        self.ready = False
        self.draining = False
        self.connections: set[Connection] = set()
        self.dispatcher: Dispatcher | None = None
        self.server: asyncio.AbstractServer | None = None
        self.stopped: asyncio.Future[int] | None = None
        paths = ["/score"]
        if options.service_name:
            paths.append(f"/api/v1/service/{options.service_name}/score")
        self.score_paths = {path.encode() for path in paths}
        self.swagger = orjson.dumps(swagger_document(options.service_name, paths, options.auth))
        self.timeout_body = f"Scoring timeout after {options.scoring_timeout_ms} ms".encode()
        self.request_ids = RequestIds()
        # Present only on the local backend's replicas: a rollout may split their scoring traffic.
        self.splitter = Splitter(options.split_file, self.timeout_s + 5.0) if options.split_file else None

    # requests

    def release(self, size: int) -> None:
        """Give ``size`` body bytes back to the budget; return free memory once a large body is gone."""
        if self.budget.give_back(size):
            asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._trim)

    def _trim(self) -> None:
        if not self.budget.held:
            return_free_memory()

    def handle(self, conn: Connection, method: bytes, url: bytes, headers: dict[bytes, bytes],
               body: bytes, keep_alive: bool) -> None:
        """Answer one parsed request (scoring requests are answered later, from the dispatcher)."""
        started = time.monotonic()
        path = url.split(b"?", 1)[0]
        if path in self.score_paths:
            self.score(conn, method, url, headers, body, keep_alive, started)
        elif path == b"/" and method == b"GET":
            conn.respond(200, b"Healthy", TEXT, keep_alive, route="health", started=started)
        elif path == b"/-/ready" and method == b"GET":
            if self.ready and not self.draining:
                conn.respond(200, b"Ready", TEXT, keep_alive, route="ready", started=started)
            else:
                conn.respond(503, b"draining" if self.draining else b"initializing", TEXT, keep_alive,
                             RETRY_AFTER, route="ready", started=started)
        elif path == b"/swagger.json" and method == b"GET":
            conn.respond(200, self.swagger, JSON, keep_alive, route="swagger", started=started)
        elif path == b"/metrics" and method == b"GET":
            conn.respond(200, self.metrics.render(), PROMETHEUS, keep_alive, route="metrics", started=started)
        else:
            conn.respond(404, b"Not Found", TEXT, keep_alive, route="other", started=started)

    def score(self, conn: Connection, method: bytes, url: bytes, headers: dict[bytes, bytes], body: bytes,
              keep_alive: bool, started: float) -> None:
        """Authenticate a scoring request, then queue it for a slot or hand it to a candidate version."""
        request_id = headers.get(b"x-request-id") or self.request_ids.next()
        extra = b"x-request-id: %s\r\nx-ms-request-id: %s\r\n" % (request_id, request_id)
        if method != b"POST":
            conn.respond(405, b"Method Not Allowed", TEXT, keep_alive, extra, started=started)
            return
        if self.keys is not None and not self.keys.accepts(headers.get(b"authorization")):
            conn.respond(401, b'{"message":"Unauthorized"}', JSON, keep_alive, extra, started=started)
            return
        splitter = self.splitter
        if splitter is not None and splitter.weight and splitter.take():
            if b"x-request-id" not in headers:
                headers = {**headers, b"x-request-id": request_id}
            splitter.forward(url, headers, body, lambda answer: self.forwarded(
                answer, conn, headers, body, keep_alive, started, extra))
            return
        self.run_here(conn, body, keep_alive, started, request_id, extra)

    def run_here(self, conn: Connection, body: bytes, keep_alive: bool, started: float, request_id: bytes,
                 extra: bytes) -> None:
        """Queue an authenticated scoring request for one of this process's slots."""
        if not self.ready or self.dispatcher is None:
            conn.respond(503, b"the scoring service is initializing", TEXT, keep_alive, extra + RETRY_AFTER,
                         started=started)
            return
        try:
            raw = body.decode("utf-8")
        except UnicodeDecodeError:
            conn.respond(400, b"request body is not UTF-8", TEXT, keep_alive, extra, started=started)
            return
        job = Job(raw, conn, request_id, "score", keep_alive)
        if not self.dispatcher.submit(job):
            self.metrics.count_queue_rejection("full")
            conn.respond(503, b"too many queued requests", TEXT, keep_alive, extra + RETRY_AFTER, started=started)
            return
        self.metrics.in_flight += 1

    def forwarded(self, answer: Answer | None, conn: Connection, headers: dict[bytes, bytes], body: bytes,
                  keep_alive: bool, started: float, extra: bytes) -> None:
        """Answer with the candidate version's answer, or run the request here if it gave none."""
        if answer is None:
            self.run_here(conn, body, keep_alive, started, headers[b"x-request-id"], extra)
            return
        status, answered, payload = answer
        passed = b"".join(b"%s: %s\r\n" % (name, answered[name]) for name in _PASSED_HEADERS if name in answered)
        conn.respond(status, payload, answered.get(b"content-type", TEXT), keep_alive, extra + passed,
                     route="forward", started=started)

    def traffic(self) -> dict[str, Any]:
        """This process's own scoring counts and latency histogram (the status file's ``traffic``)."""
        requests = errors = forwarded = 0
        for (route, code), count in list(self.metrics.requests.items()):
            if route == "score":
                requests += count
                if code >= 500:
                    errors += count
            elif route == "forward":
                forwarded += count
        latency = self.metrics.latency.get("score")
        return Counters(requests, errors, tuple(latency.counts) if latency is not None else Counters().latency,
                        forwarded).to_json()

    def finish(self, job: Job) -> None:
        """Answer a job the dispatcher is done with (unless the watchdog already did)."""
        if job.answered:
            return
        self.answer(job, job.status, job.body)

    def answer(self, job: Job, status: int, body: bytes) -> None:
        """Write the response of ``job`` once."""
        job.answered = True
        self.metrics.in_flight -= 1
        request_id = job.request_id
        if status == OK:
            extra = b"x-request-id: %s\r\nx-ms-request-id: %s\r\nx-ms-run-fn-exec-ms: %.3f\r\n" % (
                request_id, request_id, job.elapsed_ms)
            content_type = JSON
        elif status == EXPIRED:
            self.metrics.count_queue_rejection("wait")
            body, content_type = b"no scoring slot freed up within --max-queue-wait-ms", TEXT
            extra = b"x-request-id: %s\r\nx-ms-request-id: %s\r\n%s" % (request_id, request_id, RETRY_AFTER)
        else:
            self.metrics.count_run_error("timeout" if status == 504 else "exception")
            extra = b"x-request-id: %s\r\nx-ms-request-id: %s\r\nx-ms-run-function-failed: True\r\n" % (
                request_id, request_id)
            content_type = TEXT
        job.conn.respond(status, body, content_type, job.keep_alive, extra, started=job.enqueued)

    def sweep(self) -> None:
        """Answer requests that waited too long for a slot (503) or whose run() overran (504)."""
        dispatcher = self.dispatcher
        if dispatcher is not None:
            now = time.monotonic()
            for job in dispatcher.expire_waiting(now):
                self.answer(job, EXPIRED, b"")
            for job in dispatcher.overdue(now, self.timeout_s):
                if not job.answered:
                    log_event("run_timeout", request_id=job.request_id.decode(errors="replace"),
                              timeout_ms=self.options.scoring_timeout_ms)
                    self.answer(job, 504, self.timeout_body)
        asyncio.get_running_loop().call_later(SWEEP_INTERVAL_S, self.sweep)

    def sweep_connections(self) -> None:
        """Close connections past the header or keep-alive timeout (see ``Connection.check_timeouts``)."""
        now = time.monotonic()
        header_timeout = self.options.header_timeout_ms / 1000.0
        keepalive_timeout = self.options.keepalive_timeout_ms / 1000.0
        for conn in list(self.connections):
            conn.check_timeouts(now, header_timeout, keepalive_timeout)
        asyncio.get_running_loop().call_later(min(CONNECTION_SWEEP_S, header_timeout / 4), self.sweep_connections)

    # lifecycle

    def begin_drain(self) -> None:
        """Stop accepting, let in-flight requests finish (answered with Connection: close), then stop."""
        if self.draining:
            return
        self.draining = True
        log_event("draining", connections=len(self.connections))
        if self.server is not None:
            self.server.close()
        self.on_drain()
        now = time.monotonic()
        self._check_drained(now + FRESH_GRACE_S, now + DRAIN_LIMIT_S)

    def _check_drained(self, grace_end: float, deadline: float) -> None:
        now = time.monotonic()
        fresh_grace = now < grace_end
        busy = []
        for conn in list(self.connections):
            if conn.idle(fresh_grace):
                conn.close()
            else:
                busy.append(conn)
        if busy and now < deadline:
            asyncio.get_running_loop().call_later(0.02, self._check_drained, grace_end, deadline)
            return
        if busy:
            log_event("drain_deadline", connections=len(busy))
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(0)

    async def listen(self, listener: socket.socket) -> None:
        """Start accepting on (a duplicate of) the shared listening socket."""
        if self.draining:
            return
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Connection(self), sock=listener.dup(), backlog=BACKLOG
        )

    async def run(self, listener: socket.socket) -> int:
        """Serve until SIGTERM (exit status 0) or a failed init() (status 1)."""
        loop = asyncio.get_running_loop()
        self.stopped = loop.create_future()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.begin_drain)
        self.report("initializing")
        if self.splitter is not None:
            self.splitter.start(loop)
        loop.call_soon(self.sweep_connections)  # from the start: health checks are served before init() ends
        if not self.options.defer_accept:
            await self.listen(listener)
        initialised: asyncio.Future[EntryPoint] = loop.create_future()
        threading.Thread(target=self._initialise, args=(loop, initialised), name="init", daemon=True).start()
        waiting: set[asyncio.Future[Any]] = {initialised, self.stopped}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if self.stopped.done():
            return self.stopped.result()
        try:
            entry = initialised.result()
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            log_event("init_failed", error=error)
            self.report("failed", error=error)
            if self.server is not None:
                self.server.close()
            self.on_drain()
            return 1
        self.dispatcher = Dispatcher(
            entry, self.options.max_concurrent, self.options.max_queue_wait_ms / 1000.0,
            QUEUE_PER_SLOT * self.options.max_concurrent, loop, self.finish,
            lambda: self.metrics.batch_recorder().observe,
        )
        self.dispatcher.start()
        self.ready = True
        if self.options.defer_accept:
            await self.listen(listener)
        loop.call_later(SWEEP_INTERVAL_S, self.sweep)
        gpus = tensorflow_gpus()  # the status file's load updates repeat it: each write replaces the file
        device = self.metrics.device.to_status() if self.metrics.device is not None else {}
        report_load(loop, lambda **load: self.report("ready", tensorflowGpus=gpus, **device, **load),
                    lambda: None if self.draining else self.metrics.in_flight,
                    self.options.max_concurrent, traffic=self.traffic)
        if self.options.metrics_dir:
            self._share_metrics(loop)
        log_event("ready", init_s=round(time.monotonic() - _STARTED, 3))
        code = await self.stopped
        self.dispatcher.stop()
        self.metrics.remove_snapshot()
        return code

    def _share_metrics(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write this process's metrics snapshot for the service's other processes, now and every second."""
        if self.stopped is not None and self.stopped.done():
            return
        self.metrics.write_snapshot()
        loop.call_later(METRICS_SHARE_INTERVAL_S, self._share_metrics, loop)

    def _initialise(self, loop: asyncio.AbstractEventLoop, result: asyncio.Future[EntryPoint]) -> None:
        try:
            entry = load_entry(self.options)
            entry.init()
            self.metrics.device = observe_device()  # where TensorFlow put the model, asked here off the loop
            log_event("device_observed", **self.metrics.device.to_status())
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, result, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, result, entry, None)


_STARTED = time.monotonic()
METRICS_SHARE_INTERVAL_S = 1.0


def _settle(future: asyncio.Future[EntryPoint], value: EntryPoint | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)  # type: ignore[arg-type]


def tensorflow_gpus() -> list[str] | None:
    """GPUs TensorFlow sees, only if the entry script already imported TensorFlow (else None)."""
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is None:
        return None
    try:
        return [device.name for device in tensorflow.config.list_physical_devices("GPU")]
    except Exception:  # a TF build without device listing says nothing rather than failing readiness
        return None


def serve_process(options: ScoringOptions, listener: socket.socket, report: Reporter,
                  on_drain: Callable[[], None]) -> int:
    """Run one scoring process on ``listener`` until it drains or fails; returns its exit status."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is absent on Windows
        runner = asyncio.run
    else:
        runner = uvloop.run
    fix_mmap_threshold()
    app = ScoringApp(options, report, on_drain)
    return runner(app.run(listener))
