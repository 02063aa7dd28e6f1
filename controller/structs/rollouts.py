"""Progressive delivery as plain data: traffic splits, per-version request counters and rollout state.

Two contracts cross a process boundary here and are read by both sides:

* the *split file* a service's replicas poll (``Split``): the share of scoring requests the live
  replicas hand to the candidate version, and where the candidate listens;
* the ``traffic`` block of a replica's status file (``Counters``): its own request counts by
  status class and its latency histogram, in the buckets of ``LATENCY_BUCKETS``.

``RolloutState`` is what a backend persists for a rollout in progress, so that a controller
killed mid-rollout resumes (or rolls back) from it on restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)
"""Upper bounds (seconds) of the scoring latency histogram; a last, unbounded bucket follows."""

ROLLOUT_ANNOTATION: Final = "amlops.dev/rollout"
"""Set to ``abort`` or ``promote`` on a Webservice to intervene in its rollout in progress."""

ROLLOUT_DIGEST_PREFIX: Final = "rollout:"
"""What a backend reports as a service's digest while a rollout is under way: no desired digest
equals it, so every pass plans an update and drives (or cleans up) the rollout."""

SPLIT_POLL_S: Final = 0.1
"""How often a replica looks at its split file: a weight change reaches traffic within this."""


@dataclass(frozen=True)
class Split:
    """The split file: ``weight`` percent of scoring requests go to the candidate on ``port``."""

    weight: int
    port: int

    def to_json(self) -> dict[str, Any]:
        """The file's content."""
        return {"weight": self.weight, "port": self.port}

    @classmethod
    def from_json(cls, data: Any) -> Split | None:
        """The split a file holds, or None for anything malformed (a replica then splits nothing)."""
        if not isinstance(data, dict):
            return None
        weight, port = data.get("weight"), data.get("port")
        if not isinstance(weight, int) or not isinstance(port, int) or not 0 <= weight <= 100 or not 0 < port < 65536:
            return None
        return cls(weight, port)


@dataclass(frozen=True)
class Counters:
    """Scoring requests one replica (or a sum of them) answered itself: totals, 5xx, latency histogram.

    ``latency`` holds a count per bucket of ``LATENCY_BUCKETS`` plus the unbounded last one (not
    cumulative). Requests a live replica handed to the candidate are counted only as ``forwarded``.
    """

    requests: int = 0
    errors: int = 0
    latency: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS) + 1)
    forwarded: int = 0

    def to_json(self) -> dict[str, Any]:
        """The ``traffic`` block of a status file."""
        return {"requests": self.requests, "errors": self.errors, "latency": list(self.latency), "forwarded": self.forwarded}

    @classmethod
    def from_json(cls, data: Any) -> Counters:
        """Counters from a status file's ``traffic`` block (zeros for anything malformed)."""
        if not isinstance(data, dict):
            return cls()
        latency = data.get("latency")
        if not isinstance(latency, list) or len(latency) != len(LATENCY_BUCKETS) + 1:
            latency = [0] * (len(LATENCY_BUCKETS) + 1)
        return cls(_count(data.get("requests")), _count(data.get("errors")), tuple(_count(n) for n in latency),
                   _count(data.get("forwarded")))

    def __add__(self, other: Counters) -> Counters:
        return Counters(self.requests + other.requests, self.errors + other.errors,
                        tuple(a + b for a, b in zip(self.latency, other.latency, strict=True)),
                        self.forwarded + other.forwarded)

    def since(self, baseline: Counters) -> Counters:
        """What was counted after ``baseline`` (a restarted replica's counters start again at zero)."""
        if self.requests < baseline.requests:
            return self
        return Counters(self.requests - baseline.requests, max(0, self.errors - baseline.errors),
                        tuple(max(0, a - b) for a, b in zip(self.latency, baseline.latency, strict=True)),
                        max(0, self.forwarded - baseline.forwarded))

    @property
    def error_rate(self) -> float:
        """The 5xx share of answered requests (0 without requests)."""
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of latency in seconds, interpolated inside its bucket as Prometheus does."""
        total = sum(self.latency)
        if total == 0:
            return None
        rank = q * total
        below = 0
        for index, count in enumerate(self.latency):
            if count and below + count >= rank:
                if index == len(LATENCY_BUCKETS):
                    return LATENCY_BUCKETS[-1]
                lower = LATENCY_BUCKETS[index - 1] if index else 0.0
                return lower + (LATENCY_BUCKETS[index] - lower) * (rank - below) / count
            below += count
        return LATENCY_BUCKETS[-1]

    @property
    def p99_ms(self) -> float | None:
        """The 99th percentile of latency in milliseconds, or None without requests."""
        value = self.quantile(0.99)
        return None if value is None else value * 1000.0


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def total(counters: Mapping[str, Counters]) -> Counters:
    """The sum of per-replica counters."""
    result = Counters()
    for value in counters.values():
        result = result + value
    return result


def window(now: Mapping[str, Counters], baseline: Mapping[str, Counters]) -> Counters:
    """Requests counted since ``baseline`` over replicas keyed by id (new replicas count from zero)."""
    return total({key: value.since(baseline.get(key, Counters())) for key, value in now.items()})


@dataclass(frozen=True)
class Traffic:
    """Per-replica counters of the live version and of the candidate, as a backend reads them now."""

    live: Mapping[str, Counters] = field(default_factory=dict)
    candidate: Mapping[str, Counters] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionFigures:
    """One version's requests over a window: the figures the analysis judges and history keeps."""

    requests: int
    errors: int
    p99_ms: float | None

    @classmethod
    def of(cls, counters: Counters) -> VersionFigures:
        p99 = counters.p99_ms
        return cls(counters.requests, counters.errors, None if p99 is None else round(p99, 2))

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "errorRate": round(self.error_rate, 4),
                "p99Ms": self.p99_ms}


@dataclass(frozen=True)
class StepFigures:
    """What one step measured: its weight, how long it ran, and both versions' figures."""

    step: int
    weight: int
    seconds: float
    candidate: VersionFigures
    live: VersionFigures

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "weight": self.weight, "seconds": round(self.seconds, 2),
                "candidate": self.candidate.to_json(), "live": self.live.to_json()}


class Phase:
    """Where a rollout stands (plain strings: they are stored)."""

    STARTING = "starting"
    STEPPING = "stepping"
    PROMOTING = "promoting"


@dataclass(frozen=True)
class RolloutState:
    """A rollout in progress, as a backend persists it between passes (and controller restarts).

    ``target`` is the digest of the desired resource being rolled out: a rollout whose target is
    no longer desired is rolled back. ``baseline`` holds each replica's counters at the start of
    the current step (``live``/``candidate`` → replica id → counters JSON). ``request`` is a
    person's ``abort`` or ``promote`` (``amlops rollout``), taken up on the next pass.
    """

    service: str
    target: str
    revision: str
    strategy: str
    phase: str
    started: float
    step: int = -1
    weight: int = 0
    step_started: float = 0.0
    baseline: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    steps: tuple[StepFigures, ...] = ()
    live_p99_ms: float | None = None
    request: str | None = None
    message: str = ""
    weights: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        data = asdict(self)
        data["steps"] = [s.to_json() for s in self.steps]
        data["baseline"] = {k: dict(v) for k, v in self.baseline.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutState:
        """Read back what ``to_json`` stored."""
        steps = tuple(
            StepFigures(s["step"], s["weight"], s["seconds"],
                        VersionFigures(s["candidate"]["requests"], s["candidate"]["errors"], s["candidate"]["p99Ms"]),
                        VersionFigures(s["live"]["requests"], s["live"]["errors"], s["live"]["p99Ms"]))
            for s in data.get("steps", [])
        )
        known = {name for name in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known and k != "steps"}
        return replace(cls(**values), steps=steps, weights=tuple(data.get("weights") or ()))

    def baseline_of(self, side: str) -> dict[str, Counters]:
        """Per-replica counters at the start of the current step, for ``live`` or ``candidate``."""
        return {key: Counters.from_json(value) for key, value in self.baseline.get(side, {}).items()}

    def summary(self) -> dict[str, Any]:
        """What status pages show: phase, step (1-based) of the weights, weight, each passed step's figures."""
        data: dict[str, Any] = {"strategy": self.strategy, "phase": self.phase, "weight": self.weight,
                                "weights": list(self.weights), "revision": self.revision, "message": self.message}
        if self.step >= 0:
            data["step"] = self.step + 1
        if self.request:
            data["request"] = self.request
        data["passed"] = [s.to_json() for s in self.steps]
        return data
