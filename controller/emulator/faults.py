"""Fault injection and request counters.

A fault rule matches requests by ``"METHOD route-template"`` (a glob: ``"PATCH */services/{name}"``,
``"*"``) and adds latency, answers an error (429 with ``Retry-After`` or Azure ML's ``retry-after-ms``,
500, 503) for ``count``
requests or at a ``rate``, makes the long-running operations it starts end ``Failed``, or makes
their first ``pendingPolls`` polls answer a non-final state. Counters record every routed request
as ``"METHOD template" → n`` so tests can assert how many writes a reconcile made, and a request log
(the last ``LOG_LIMIT`` requests: arrival time, route, injected status) so they can assert when a
client came back after a 429 without timing anything themselves.
"""

from __future__ import annotations

import fnmatch
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Final

LOG_LIMIT: Final = 10_000
"""Requests the log keeps (the oldest are dropped first)."""


@dataclass
class FaultRule:
    """One fault; ``count`` None means every matching request (subject to ``rate``)."""

    route: str = "*"
    status: int | None = None
    count: int | None = None
    rate: float = 1.0
    retry_after: float | None = None
    latency_s: float = 0.0
    fail_operation: str | None = None
    pending_polls: int = 0
    retry_after_ms: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRule:
        """A rule from the admin API's JSON (camelCase keys)."""
        status = data.get("status")
        if status is not None and int(status) not in (400, 404, 409, 429, 500, 502, 503, 504):
            raise ValueError(f"status {status} is not an injectable error")
        return cls(
            route=str(data.get("route", "*")),
            status=int(status) if status is not None else None,
            count=int(data["count"]) if data.get("count") is not None else None,
            rate=float(data.get("rate", 1.0)),
            retry_after=float(data["retryAfter"]) if data.get("retryAfter") is not None else None,
            latency_s=float(data.get("latencySeconds", 0.0)),
            fail_operation=str(data["failOperation"]) if data.get("failOperation") else None,
            pending_polls=int(data.get("pendingPolls", 0)),
            retry_after_ms=int(data["retryAfterMs"]) if data.get("retryAfterMs") is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The admin API's JSON form."""
        return {"route": self.route, "status": self.status, "count": self.count, "rate": self.rate,
                "retryAfter": self.retry_after, "latencySeconds": self.latency_s,
                "failOperation": self.fail_operation, "pendingPolls": self.pending_polls,
                "retryAfterMs": self.retry_after_ms}


def parse_flag(text: str) -> FaultRule:
    """``--fault 'PATCH */services/{name}=429:count=1,retryAfter=1'`` → a rule."""
    route, _, rest = text.partition("=")
    data: dict[str, Any] = {"route": route.strip()}
    for part in filter(None, (p.strip() for p in rest.replace(":", ",", 1).split(","))):
        if "=" in part:
            key, value = part.split("=", 1)
            data[key.strip()] = value.strip()
        elif part.isdigit():
            data["status"] = int(part)
        else:
            raise ValueError(f"cannot read fault option {part!r}")
    return FaultRule.from_json(data)


@dataclass(frozen=True)
class Verdict:
    """What the matching rules decided for one request."""

    latency_s: float = 0.0
    status: int | None = None
    retry_after: float | None = None
    fail_operation: str | None = None
    pending_polls: int = 0
    retry_after_ms: int | None = None


class Faults:
    """The active rules and the request counters, shared by every handler thread."""

    def __init__(self, rules: list[FaultRule] | None = None) -> None:
        self._lock = threading.Lock()
        self._rules = list(rules or [])
        self._counts: Counter[str] = Counter()
        self._log: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)

    def set_rules(self, rules: list[FaultRule]) -> None:
        """Replace every rule."""
        with self._lock:
            self._rules = list(rules)

    def add_rules(self, rules: list[FaultRule]) -> None:
        """Add rules after the existing ones."""
        with self._lock:
            self._rules.extend(rules)

    def rules(self) -> list[dict[str, Any]]:
        """The active rules as JSON."""
        with self._lock:
            return [r.to_json() for r in self._rules]

    def record(self, route: str) -> Verdict:
        """Count a request to ``route`` (``"METHOD template"``) and decide its faults."""
        latency, status, retry_after, retry_after_ms, fail, pending = 0.0, None, None, None, None, 0
        with self._lock:
            self._counts[route] += 1
            for rule in self._rules:
                if not fnmatch.fnmatchcase(route, rule.route):
                    continue
                if rule.count is not None and rule.count <= 0:
                    continue
                if rule.rate < 1.0 and random.random() >= rule.rate:
                    continue
                latency += rule.latency_s
                pending = max(pending, rule.pending_polls)
                if rule.fail_operation and fail is None:
                    fail = rule.fail_operation
                if rule.status is not None and status is None:
                    status, retry_after, retry_after_ms = rule.status, rule.retry_after, rule.retry_after_ms
                if rule.count is not None:
                    rule.count -= 1
            self._log.append({"at": time.time(), "route": route, "status": status, "retryAfter": retry_after,
                              "retryAfterMs": retry_after_ms})
        return Verdict(latency, status, retry_after, fail, pending, retry_after_ms)

    def counts(self) -> dict[str, int]:
        """Requests per route since the last reset."""
        with self._lock:
            return dict(self._counts)

    def log(self) -> list[dict[str, Any]]:
        """The requests since the last reset, oldest first: ``at`` (epoch seconds, on arrival), ``route``,
        and the injected ``status`` and ``retryAfter`` (None when the request was served normally)."""
        with self._lock:
            return list(self._log)

    def reset_counts(self) -> None:
        """Start counting (and logging) from zero."""
        with self._lock:
            self._counts.clear()
            self._log.clear()
