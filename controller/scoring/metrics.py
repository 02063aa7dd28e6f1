"""Prometheus metrics of one scoring process (each pre-forked worker keeps its own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


class ScoringMetrics:
    """Counters and histograms served on ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "amlops_scoring_requests", "HTTP requests answered, by route and status code.",
            ["route", "code"], registry=self.registry,
        )
        self.latency = Histogram(
            "amlops_scoring_request_seconds", "Time from a request's last byte to its response.",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.in_flight = Gauge(
            "amlops_scoring_in_flight", "Scoring requests accepted and not yet answered.",
            registry=self.registry,
        )
        self.run_errors = Counter(
            "amlops_scoring_run_errors", "run() calls that raised or overran --scoring-timeout-ms.",
            ["kind"], registry=self.registry,
        )
        self.queue_rejections = Counter(
            "amlops_scoring_queue_rejections", "Requests answered 503 because no slot freed up in time.",
            ["reason"], registry=self.registry,
        )
        self.batch_size = Histogram(
            "amlops_scoring_batch_size", "Requests handed to one run()/run_batch() call.",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry,
        )
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, code: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        children = self._children.get((route, code))
        if children is None:
            # labels() takes a lock and builds a key each call; the hot path reuses the children.
            children = (self.requests.labels(route, str(code)), self.latency.labels(route))
            self._children[(route, code)] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
