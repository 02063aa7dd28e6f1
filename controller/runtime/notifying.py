"""Notifying: tell commit statuses, chat rooms and webhooks what each reconcile did to a revision.

The loop only *enqueues* (a dictionary update and a deque append under a lock); each receiver has
its own daemon thread that rate-limits, sends, and retries transient failures with doubling,
jittered waits. A dead or slow receiver therefore never delays a reconcile or another receiver:
its queue is bounded (the oldest event is dropped first) and its health shows as a ``Ready``
condition in ``/api/status``, on the status page and in ``/metrics``.

A revision is reported on transitions only: ``pending`` when a reconcile of a revision not seen
before starts, then each time its outcome changes (a controller re-reconciling the same commit
every interval says nothing new). Credentials are read from their references at start-up and on
SIGHUP, sent only in request headers (or as the webhook URL a chat service gave), and never logged.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from controller import __version__
from controller.sources.loading import parse_documents
from controller.sources.validating import format_field
from controller.structs.logformats import event_logger
from controller.structs.manifests import SecretRef
from controller.structs.notifications import (
    EVENTS,
    Credentials,
    Notifications,
    OutgoingRequest,
    Receiver,
    RevisionEvent,
    build_request,
)
from controller.structs.redactions import redact
from controller.structs.results import ReconcileOutcome, ReconcileStatus

log = event_logger("amlops.notify")

QUEUE_LIMIT: Final = 100
REVISIONS_REMEMBERED: Final = 256
DRAIN_S: Final = 10.0
_ERROR_BODY_CHARS: Final = 200


class ConfigError(ValueError):
    """The ``notifications`` section of the config file is wrong; the message names the field."""


def _line_of(lines: Mapping[tuple[str | int, ...], int], path: tuple[str | int, ...]) -> int:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return 0


# pydantic's words for the common mistakes, as the manifest errors say them (values never echoed: they may be secrets).
_WORDS: Final = {"extra_forbidden": "unknown field", "missing": "is required",
                 "model_type": "must be a mapping"}


def parse_notifications(config_file: str) -> Notifications:
    """The ``notifications`` section of ``config_file`` (an empty one when absent); errors name file, line and field."""
    try:
        raw = Path(config_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{config_file}: cannot read: {exc.strerror}") from None
    documents, problems = parse_documents(config_file, raw)
    if problems:
        raise ConfigError(str(problems[0]))
    if not documents or not isinstance(documents[0].data, dict) or "notifications" not in documents[0].data:
        return Notifications()
    doc = documents[0]
    try:
        return Notifications.model_validate(doc.data["notifications"] or {})
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            loc = ("notifications", *(p for p in error["loc"] if isinstance(p, str | int)))
            line = _line_of(doc.field_lines, loc)
            where = f"{config_file}:{line}" if line else config_file
            message = _WORDS.get(error["type"]) or str((error.get("ctx") or {}).get("error", error["msg"]))
            if error["type"] == "model_type" and loc[-1] in ("token", "url", "secret"):
                message = "must be a reference, {fromEnv: NAME} or {fromFile: PATH}, never the value itself"
            messages.append(f"{where}: {format_field(loc)}: {message}")
        raise ConfigError("\n".join(messages)) from None


def _resolve(ref: SecretRef | None, receiver: str, field_name: str, env: Mapping[str, str]) -> str | None:
    if ref is None:
        return None
    if ref.fromEnv is not None:
        value = env.get(ref.fromEnv)
        if not value:
            raise ConfigError(f"notifications receiver {receiver}: {field_name}: environment variable {ref.fromEnv} is not set")
        return value.strip()
    try:
        value = Path(str(ref.fromFile)).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"notifications receiver {receiver}: {field_name}: cannot read {ref.fromFile}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"notifications receiver {receiver}: {field_name}: {ref.fromFile} is empty")
    return value


def resolve_credentials(settings: Notifications, env: Mapping[str, str] | None = None) -> dict[str, Credentials]:
    """Each receiver's secrets, read from their references (environment or file)."""
    environ = os.environ if env is None else env
    resolved = {}
    for r in settings.receivers:
        url = r.url if isinstance(r.url, SecretRef) else None
        resolved[r.name] = Credentials(
            token=_resolve(r.token, r.name, "token", environ),
            url=_resolve(url, r.name, "url", environ),
            secret=_resolve(r.secret, r.name, "secret", environ),
        )
    return resolved


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A receiver that redirects is misconfigured; following would carry credentials elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER: Final = urllib.request.build_opener(_NoRedirects)


@dataclass(frozen=True)
class Delivery:
    """How one attempt went: ``retryable`` for connection errors, 408, 429 and 5xx."""

    ok: bool
    code: int | None
    message: str
    retryable: bool = False
    retry_after: float | None = None


def send(request: OutgoingRequest, timeout: float) -> Delivery:
    """Send one request; never raises."""
    req = urllib.request.Request(request.url, data=request.body, headers=request.headers, method=request.method)
    try:
        with _OPENER.open(req, timeout=timeout) as response:
            response.read(65536)
            return Delivery(True, response.status, f"HTTP {response.status}")
    except urllib.error.HTTPError as err:
        try:
            excerpt = err.read(_ERROR_BODY_CHARS).decode("utf-8", "replace").strip().replace("\n", " ")
        except OSError:
            excerpt = ""
        retry_after = err.headers.get("Retry-After") if err.headers else None
        wait = float(retry_after) if retry_after and retry_after.strip().isdigit() else None
        retryable = err.code in (408, 429) or err.code >= 500
        return Delivery(False, err.code, f"HTTP {err.code}" + (f": {excerpt}" if excerpt else ""), retryable, wait)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Delivery(False, None, f"{type(exc).__name__}: {reason}", retryable=not isinstance(exc, ValueError))


class _Bucket:
    """A token bucket: ``per_minute`` tokens a minute, at most ``per_minute`` at once."""

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self, stop: threading.Event) -> bool:
        """Wait for a token (False if ``stop`` was set meanwhile)."""
        while True:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            if stop.wait((1 - self.tokens) / self.rate):
                return False


@dataclass
class Health:
    """What the status page and ``/api/status`` show of one receiver."""

    name: str
    type: str
    ready: bool | None = None
    reason: str = "NoDeliveryYet"
    message: str = ""
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    retries: int = 0
    queued: int = 0
    consecutive_failures: int = 0
    last_delivered_at: float | None = None
    last_failed_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "conditions": [{"type": "Ready", "status": bool(self.ready), "reason": self.reason, "message": self.message}],
            "delivered": self.delivered,
            "failed": self.failed,
            "dropped": self.dropped,
            "retries": self.retries,
            "queued": self.queued,
            "consecutiveFailures": self.consecutive_failures,
            "lastDeliveredAt": self.last_delivered_at,
            "lastFailedAt": self.last_failed_at,
        }


class NotificationMetrics:
    """Counters and gauges of deliveries, registered once on the controller's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter("amlops_notifications", "Notification deliveries by receiver and outcome "
                                  "(delivered, failed, retried, dropped).", ["receiver", "outcome"], registry=registry)
        self.ready = Gauge("amlops_notification_receiver_ready", "1 while the receiver's last delivery succeeded, 0 after one failed (absent before the first).",
                           ["receiver", "type"], registry=registry)
        self.queued = Gauge("amlops_notification_queue_depth", "Events not yet delivered to a receiver "
                            "(the one in hand included).", ["receiver"], registry=registry)


@dataclass
class _Item:
    event: RevisionEvent
    delivery: str = field(default_factory=lambda: str(uuid.uuid4()))


class _Worker:
    """One receiver's queue and the daemon thread that drains it."""

    def __init__(self, receiver: Receiver, credentials: Credentials, metrics: NotificationMetrics,
                 publish: Callable[[], None]) -> None:
        self.receiver = receiver
        self.credentials = credentials
        self.metrics = metrics
        self.publish = publish
        self.health = Health(receiver.name, receiver.type)
        self.stop = threading.Event()
        self._queue: collections.deque[_Item] = collections.deque()
        self._ready = threading.Condition()
        self._busy = False
        self._bucket = _Bucket(receiver.rateLimit.perMinute)
        self._thread = threading.Thread(target=self._run, name=f"notify-{receiver.name}", daemon=True)
        self._thread.start()

    def submit(self, event: RevisionEvent) -> None:
        with self._ready:
            if len(self._queue) >= QUEUE_LIMIT:
                self._queue.popleft()
                self.health.dropped += 1
                self.metrics.deliveries.labels(receiver=self.receiver.name, outcome="dropped").inc()
            self._queue.append(_Item(event))
            # Counted until delivered or given up: the event in hand (rate-limited, retrying) too.
            self.health.queued = len(self._queue) + int(self._busy)
            self._ready.notify()
        self.metrics.queued.labels(receiver=self.receiver.name).set(self.health.queued)

    def drain(self, deadline: float) -> None:
        """Wait until the queue is empty (or ``deadline``), then stop the thread."""
        with self._ready:
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._ready.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        self.stop.set()
        with self._ready:
            self._ready.notify_all()
        self._thread.join(timeout=max(0.1, deadline - time.monotonic()) + 1)

    def _next(self) -> _Item | None:
        with self._ready:
            while not self._queue and not self.stop.is_set():
                self._ready.wait(0.5)
            if self.stop.is_set():
                return None
            self._busy = True
            item = self._queue.popleft()
        return item

    def _run(self) -> None:
        while (item := self._next()) is not None:
            try:
                if self._bucket.take(self.stop):
                    self._deliver(item)
            except Exception:  # a bug here must not kill the receiver's thread
                log.exception("notification.crashed", receiver=self.receiver.name)
            finally:
                with self._ready:
                    self._busy = False
                    self.health.queued = len(self._queue)
                    self._ready.notify_all()
                self.metrics.queued.labels(receiver=self.receiver.name).set(self.health.queued)

    def _deliver(self, item: _Item) -> None:
        r, event = self.receiver, item.event
        fields = {"receiver": r.name, "type": r.type, "event": event.event, "revision": event.revision}
        for attempt in range(1, r.retry.attempts + 1):
            request = build_request(r, self.credentials, event, user_agent=f"amlops/{__version__}",
                                    timestamp=int(time.time()), delivery=item.delivery)
            if request is None:
                return  # a commit status for a folder's revision: nothing to mark
            result = send(request, r.timeoutSeconds)
            if result.ok:
                self._succeeded(result, attempt, fields)
                return
            message = redact(result.message, self.credentials.values())
            if not result.retryable or attempt == r.retry.attempts:
                self._failed(message, attempt, fields)
                return
            self.health.retries += 1
            self.metrics.deliveries.labels(receiver=r.name, outcome="retried").inc()
            delay = min(r.retry.maxBackoffSeconds, r.retry.backoffSeconds * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            if result.retry_after is not None:
                delay = min(r.retry.maxBackoffSeconds, max(delay, result.retry_after))
            log.info("notification.retrying", **fields, attempt=attempt, error=message, wait=round(delay, 2))
            if self.stop.wait(delay):
                self._failed(f"{message} (stopped before retrying)", attempt, fields)
                return

    def _succeeded(self, result: Delivery, attempt: int, fields: dict[str, Any]) -> None:
        h = self.health
        h.ready, h.reason, h.message = True, "Delivered", f"{fields['event']} of {fields['revision'][:12]}: {result.message}"
        h.delivered += 1
        h.consecutive_failures = 0
        h.last_delivered_at = time.time()
        self.metrics.deliveries.labels(receiver=self.receiver.name, outcome="delivered").inc()
        self.metrics.ready.labels(receiver=self.receiver.name, type=self.receiver.type).set(1)
        log.info("notification.delivered", **fields, code=result.code, attempts=attempt)
        self.publish()

    def _failed(self, message: str, attempt: int, fields: dict[str, Any]) -> None:
        h = self.health
        h.ready, h.reason = False, "DeliveryFailed"
        h.message = f"{fields['event']} of {fields['revision'][:12]} not delivered after {attempt} attempt(s): {message}"
        h.failed += 1
        h.consecutive_failures += 1
        h.last_failed_at = time.time()
        self.metrics.deliveries.labels(receiver=self.receiver.name, outcome="failed").inc()
        self.metrics.ready.labels(receiver=self.receiver.name, type=self.receiver.type).set(0)
        log.warning("notification.failed", **fields, attempts=attempt, error=message)
        self.publish()


class Notifier:
    """Turns reconcile outcomes into events and hands them to each receiver's worker."""

    def __init__(self, controller: str, source: str, path: str, registry: CollectorRegistry,
                 on_health: Callable[[list[dict[str, Any]]], None]) -> None:
        self.controller = controller
        self.source = source
        self.path = path
        self.metrics = NotificationMetrics(registry)
        self._on_health = on_health
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._status_url = ""
        self._seen: collections.OrderedDict[str, str] = collections.OrderedDict()

    def configure(self, settings: Notifications, credentials: Mapping[str, Credentials], status_url: str) -> None:
        """Start a worker per receiver; on reload, the old workers finish what they hold first."""
        old = self._workers
        if old:  # let them finish on the side: the loop thread does not wait for a receiver
            deadline = time.monotonic() + DRAIN_S

            def finish() -> None:
                for worker in old:
                    worker.drain(deadline)

            threading.Thread(target=finish, name="notify-drain", daemon=True).start()
        self._status_url = settings.statusUrl or status_url
        self._workers = [_Worker(r, credentials[r.name], self.metrics, self.publish) for r in settings.receivers]
        self.publish()

    def publish(self) -> None:
        """Push every receiver's health to the status board."""
        with self._lock:
            health = [w.health.to_json() for w in self._workers]
        self._on_health(health)

    def _emit(self, event_name: str, revision: str, summary: str, errors: tuple[str, ...] = (),
              changes: tuple[dict[str, Any], ...] = ()) -> None:
        event = RevisionEvent(event_name, revision, self.controller, summary, self._status_url, self.source,
                              self.path, errors, changes, time.time())
        for worker in self._workers:
            if worker.receiver.wants(event_name):
                worker.submit(event)

    def _remember(self, revision: str, event_name: str) -> bool:
        """Record ``event_name`` as ``revision``'s latest; False when it was already."""
        with self._lock:
            previous = self._seen.get(revision)
            # "in sync" right after "applied" is the same news: the revision is in place.
            if previous == event_name or (previous == "applied" and event_name == "no-changes"):
                return False
            self._seen[revision] = event_name
            self._seen.move_to_end(revision)
            while len(self._seen) > REVISIONS_REMEMBERED:
                self._seen.popitem(last=False)
            return True

    def started(self, revision: str) -> None:
        """A reconcile of ``revision`` begins: ``pending``, the first time this revision is seen."""
        if not self._workers or revision in self._seen:
            return
        self._remember(revision, "pending")
        self._emit("pending", revision, "reconciling")

    def reconciled(self, outcome: ReconcileOutcome, summary: str) -> None:
        """A reconcile ended: report it if the revision's outcome changed."""
        event_name = outcome.status.value
        if outcome.status is ReconcileStatus.FAILED and any(c.rolled_back for c in outcome.changes):
            event_name = "rolled-back"  # a failed rollout that put the live version back: its own news
        if not self._workers or event_name not in EVENTS or not self._remember(outcome.revision, event_name):
            return
        changes = tuple(
            {"resource": str(c.id), "action": c.action.value, "outcome": c.status.value, "error": c.error}
            for c in outcome.changes
        )
        self._emit(event_name, outcome.revision, summary, tuple(outcome.errors), changes)

    def close(self, drain_s: float = DRAIN_S) -> None:
        """Deliver what is queued (for up to ``drain_s`` seconds), then stop every worker."""
        deadline = time.monotonic() + drain_s
        for worker in self._workers:
            worker.drain(deadline)
