"""One scoring process: HTTP/1.1 on asyncio + uvloop + httptools (no framework), run() off the loop.

The loop only parses, routes, authenticates and writes; run() happens on the dispatcher's slot
threads (see ``dispatching``), so health checks, /metrics and timeouts keep answering while a
run() is slow. A watchdog on the loop answers 504 for a run() past ``--scoring-timeout-ms`` (the
thread itself cannot be interrupted and keeps its slot until run() returns) and 503 for a request
that waited longer than ``--max-queue-wait-ms`` for a slot.

The run() thread is the bottleneck at every load level, so the loop's per-request work is kept
off it: responses are written with ``os.write`` (the GIL is released for the syscall, see
``connections.Connection.send``), metrics are plain counters owned by the loop (``metrics``), and
a request without an ``x-request-id`` gets a counter-based id instead of a ``uuid4()``. Timeouts
cost no timer per request: one sweeper every ``SWEEP_INTERVAL_S`` checks the queue and the running
slots.

Parsing and writing on one client connection, and what a client may hold (target, head, body
timeouts, bodies in flight), live in ``connections``; this module is the app: routes, auth,
readiness, the watchdog and the process's lifecycle. Health checks are answered on the loop, so
no limit can starve them.

Only failures and lifecycle changes are logged; a line per successful request would cost more
than the request at the rates this host serves (the metrics count them instead).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from controller.scoring.budgets import BodyBudget, fix_mmap_threshold, return_free_memory
from controller.scoring.connections import JSON, PROMETHEUS, RETRY_AFTER, TEXT, Connection, RequestIds
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

SWEEP_INTERVAL_S = 0.05
DRAIN_LIMIT_S = 10.0
FRESH_GRACE_S = 1.0
QUEUE_PER_SLOT = 256
CONNECTION_SWEEP_S = 0.5
"""How often connections are checked against the header and keep-alive timeouts."""
TRIM_DELAY_S = 0.1
"""Free pages are returned a moment after a large body is released (its run() thread lets go of it too)."""
# What a forwarded answer keeps of the candidate's headers (the request ids are this process's own).
_PASSED_HEADERS = (b"x-ms-run-fn-exec-ms", b"x-ms-run-function-failed", b"retry-after")


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
