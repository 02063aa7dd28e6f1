"""Prometheus metrics of one scoring process (each pre-forked worker keeps its own), and one view of them all.

Every replica of a service answers on one port, so a scrape lands on whichever process accepts it;
on its own, each answer would be that process's counters alone, and a scraper would see them jump
between processes (11, 18, 1, 18…) as resets. So every series carries ``service``, ``version``,
``replica`` and ``worker`` labels, each process writes its snapshot to the service's shared
metrics folder (``--metrics-dir``) about every second, and ``/metrics`` answers with its own live
counters plus the latest snapshot of every other live process there: any process gives the view of
all, each series monotonic (a scrape also writes the answering process's snapshot, so the next scrape, on
whichever process, shows it no lower), at most a second behind for the other processes.

The hot path pays for plain integer updates only: counts live in dicts and lists owned by one
thread each (the event loop for requests, each slot thread for its own batch sizes), so no lock
is taken per request; ``prometheus_client``'s metric objects take a mutex on every ``inc()`` and
``observe()``, which was a measurable share of the loop's time per request. A collector turns
the counts into metric families only when ``/metrics`` is scraped (or the registry is read).
"""

from __future__ import annotations

import contextlib
import os
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from controller.scoring.devices import DeviceReport
from controller.structs.rollouts import LATENCY_BUCKETS

IDENTITY_LABELS = ("service", "version", "replica", "worker")
SNAPSHOT_SUFFIX = ".prom"

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

    def __init__(self, identity: Mapping[str, str] | None = None, share_dir: str | None = None) -> None:
        self.identity = [str((identity or {}).get(name, "")) for name in IDENTITY_LABELS]
        self.share_dir = Path(share_dir) if share_dir else None
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
        ident, names = self.identity, list(IDENTITY_LABELS)
        requests = CounterMetricFamily("amlops_scoring_requests", "HTTP requests answered, by route and status code.",
                                       labels=[*names, "route", "code"])
        for (route, code), count in list(self.requests.items()):
            requests.add_metric([*ident, route, str(code)], count)
        yield requests
        latency = HistogramMetricFamily("amlops_scoring_request_seconds",
                                        "Time from a request's last byte to its response.", labels=[*names, "route"])
        for route, histogram in list(self.latency.items()):
            buckets, total = merged([histogram], LATENCY_BUCKETS)
            latency.add_metric([*ident, route], buckets, total)
        yield latency
        in_flight = GaugeMetricFamily("amlops_scoring_in_flight", "Scoring requests accepted and not yet answered.",
                                      labels=names)
        in_flight.add_metric(ident, self.in_flight)
        yield in_flight
        errors = CounterMetricFamily("amlops_scoring_run_errors",
                                     "run() calls that raised or overran --scoring-timeout-ms.", labels=[*names, "kind"])
        for kind, count in list(self.run_errors.items()):
            errors.add_metric([*ident, kind], count)
        yield errors
        rejections = CounterMetricFamily("amlops_scoring_queue_rejections",
                                         "Requests answered 503: no slot freed up in time, or the body budget was spent.", labels=[*names, "reason"])
        for reason, count in list(self.queue_rejections.items()):
            rejections.add_metric([*ident, reason], count)
        yield rejections
        batch = HistogramMetricFamily("amlops_scoring_batch_size", "Requests handed to one run()/run_batch() call.",
                                      labels=names)
        buckets, total = merged(list(self.batch_sizes), BATCH_BUCKETS)
        batch.add_metric(ident, buckets, total)
        yield batch
        device = self.device
        if device is not None:
            # Identity labels too: merged with the other processes' snapshots, each series stays unique.
            info = GaugeMetricFamily("amlops_scoring_device_info",
                                     "The device TensorFlow placed the model on (1 for the one in use).",
                                     labels=[*names, "device", "source"])
            info.add_metric([*ident, device.device, device.source], 1)
            yield info

    # The shared view ---------------------------------------------------------------------------

    def _snapshot_path(self) -> Path | None:
        return None if self.share_dir is None else self.share_dir / f"{os.getpid()}{SNAPSHOT_SUFFIX}"

    def write_snapshot(self, text: bytes | None = None) -> None:
        """Write this process's metrics where the service's other processes read them (tmp + rename)."""
        target = self._snapshot_path()
        if target is None:
            return
        with contextlib.suppress(OSError):  # a full or vanished folder costs the shared view, never a request
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(generate_latest(self.registry) if text is None else text)
            os.replace(tmp, target)

    def remove_snapshot(self) -> None:
        """Forget this process's snapshot (it stops serving: its series end)."""
        target = self._snapshot_path()
        if target is not None:
            with contextlib.suppress(OSError):
                target.unlink()

    def _peer_snapshots(self) -> list[str]:
        """The latest snapshot of every other live process of the service; dead ones' files are removed."""
        if self.share_dir is None or not self.share_dir.is_dir():
            return []
        texts = []
        for path in sorted(self.share_dir.glob(f"*{SNAPSHOT_SUFFIX}")):
            pid = int(path.stem) if path.stem.isdigit() else 0
            if pid == os.getpid() or pid <= 0:
                continue
            if not _alive(pid):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            with contextlib.suppress(OSError, UnicodeDecodeError):
                texts.append(path.read_text())
        return texts

    def render(self) -> bytes:
        """The text exposition of this process's live metrics and every live peer's latest snapshot."""
        own = generate_latest(self.registry)
        # What this scrape shows of this process goes to its snapshot too: a next scrape that lands on
        # another process reads these values or newer ones, never the older periodic snapshot, so no
        # series steps back (a scraper would take that for a counter reset).
        self.write_snapshot(own)
        peers = self._peer_snapshots()
        if not peers:
            return own
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged([own.decode(), *peers]))
        return generate_latest(registry)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Merged(Collector):
    """Several expositions as one: each family once, with the samples of all (their labels tell them apart)."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = texts

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for text in self.texts:
            try:
                parsed = list(text_string_to_metric_families(text))
            except ValueError:  # a snapshot cut short: skip it until its next write
                continue
            for family in parsed:
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                merged.samples.extend(family.samples)
        yield from families.values()
