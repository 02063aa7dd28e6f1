"""Prometheus metrics of one scoring process (each pre-forked worker keeps its own).

The hot path pays for plain integer updates only: counts live in dicts and lists owned by one
thread each (the event loop for requests, each slot thread for its own batch sizes), so no lock
is taken per request; ``prometheus_client``'s metric objects take a mutex on every ``inc()`` and
``observe()``, which was a measurable share of the loop's time per request. A collector turns
the counts into metric families only when ``/metrics`` is scraped (or the registry is read).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from controller.scoring.devices import DeviceReport
from controller.structs.rollouts import LATENCY_BUCKETS

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Buckets:
    """A histogram with one writer: a count per ``le`` bucket (the last one is +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one value in the first bucket whose bound is >= it."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


def merged(histograms: Sequence[Buckets], bounds: Sequence[float]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative ``(le, count)`` pairs and the sum over ``histograms`` (read while writers run: a scrape
    may miss an observation made during it, never corrupt one)."""
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for histogram in histograms:
        for index, count in enumerate(histogram.counts):
            counts[index] += count
        total += histogram.sum
    cumulative, running = [], 0
    for bound, count in zip([*(_label(b) for b in bounds), "+Inf"], counts, strict=True):
        running += count
        cumulative.append((bound, float(running)))
    return cumulative, total


def _label(bound: float) -> str:
    return repr(float(bound))


class ScoringMetrics(Collector):
    """Counters and histograms served on ``GET /metrics``.

    Loop-thread state: ``requests``, ``latency``, ``in_flight``, ``run_errors``,
    ``queue_rejections``. Slot threads record batch sizes through :meth:`batch_recorder`, one
    histogram each.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Buckets] = {}
        self.in_flight = 0
        self.run_errors: dict[str, int] = {}
        self.queue_rejections: dict[str, int] = {}
        self.batch_sizes: list[Buckets] = []
        self.device: DeviceReport | None = None  # set once, after init()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def observe(self, route: str, code: int, seconds: float) -> None:
        """Count one answered request and its latency (loop thread)."""
        key = (route, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        latency = self.latency.get(route)
        if latency is None:
            latency = self.latency[route] = Buckets(LATENCY_BUCKETS)
        latency.observe(seconds)

    def count_run_error(self, kind: str) -> None:
        """One run() that raised (``exception``) or overran its timeout (``timeout``)."""
        self.run_errors[kind] = self.run_errors.get(kind, 0) + 1

    def count_queue_rejection(self, reason: str) -> None:
        """One request answered 503 for a ``full`` queue, a ``wait`` past the limit or ``bytes`` over the body budget."""
        self.queue_rejections[reason] = self.queue_rejections.get(reason, 0) + 1

    def batch_recorder(self) -> Buckets:
        """A batch-size histogram for one slot thread to write alone."""
        histogram = Buckets(BATCH_BUCKETS)
        self.batch_sizes.append(histogram)
        return histogram

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        """Metric families built from the counts (called by the registry on a scrape)."""
        requests = CounterMetricFamily("amlops_scoring_requests", "HTTP requests answered, by route and status code.",
                                       labels=["route", "code"])
        for (route, code), count in list(self.requests.items()):
            requests.add_metric([route, str(code)], count)
        yield requests
        latency = HistogramMetricFamily("amlops_scoring_request_seconds",
                                        "Time from a request's last byte to its response.", labels=["route"])
        for route, histogram in list(self.latency.items()):
            buckets, total = merged([histogram], LATENCY_BUCKETS)
            latency.add_metric([route], buckets, total)
        yield latency
        yield GaugeMetricFamily("amlops_scoring_in_flight", "Scoring requests accepted and not yet answered.",
                                value=self.in_flight)
        errors = CounterMetricFamily("amlops_scoring_run_errors",
                                     "run() calls that raised or overran --scoring-timeout-ms.", labels=["kind"])
        for kind, count in list(self.run_errors.items()):
            errors.add_metric([kind], count)
        yield errors
        rejections = CounterMetricFamily("amlops_scoring_queue_rejections",
                                         "Requests answered 503: no slot freed up in time, or the body budget was spent.", labels=["reason"])
        for reason, count in list(self.queue_rejections.items()):
            rejections.add_metric([reason], count)
        yield rejections
        batch = HistogramMetricFamily("amlops_scoring_batch_size", "Requests handed to one run()/run_batch() call.")
        buckets, total = merged(list(self.batch_sizes), BATCH_BUCKETS)
        batch.add_metric([], buckets, total)
        yield batch
        device = self.device
        if device is not None:
            info = GaugeMetricFamily("amlops_scoring_device_info",
                                     "The device TensorFlow placed the model on (1 for the one in use).",
                                     labels=["device", "source"])
            info.add_metric([device.device, device.source], 1)
            yield info

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
