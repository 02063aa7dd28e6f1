"""Azure Monitor metrics of v2 online endpoints, from the router's real per-request counters.

Route (Azure Monitor's REST shape, ``Microsoft.Insights/metrics`` under the endpoint's ARM id):

    GET https://management.azure.com{WS}/onlineEndpoints/{name}/providers/Microsoft.Insights/metrics
        ?api-version=2023-10-01&metricnames=RequestsPerMinute,RequestLatency_P99
        &timespan=2026-12-03T10:00:00Z/2026-12-03T10:10:00Z&interval=PT1M&aggregation=Total,Average
        &$filter=deployment eq '*' and statusCodeClass eq '5xx'

Metrics (names and units as Azure ML publishes them for online endpoints):
``RequestsPerMinute`` (Count; aggregations total/count/average per interval), ``RequestLatency``
(Milliseconds; average, minimum, maximum), ``RequestLatency_P50`` / ``_P90`` / ``_P95`` /
``_P99`` (Milliseconds; the percentile over the interval, answered as ``average``). Dimensions:
``deployment``, ``statusCode`` (``"200"``), ``statusCodeClass`` (``"2xx"``, ``"5xx"``). In
``$filter``, ``dim eq '*'`` splits the answer into one time series per value (each series names
its value in ``metadatavalues``); ``dim eq 'v'`` keeps only matching requests; terms are joined
with ``and``. ``timespan`` defaults to the last hour, ``interval`` to ``PT1M`` (``PT5M``,
``PT1H`` and ``FULL`` also work). Buckets without requests are answered with ``total: 0`` /
``count: 0`` and no latency values, as Azure Monitor does.

Counts come from every request the endpoint's router answered (``frontends.Frontend``): status
and latency as measured at the router, forwarding included, which is what Azure's endpoint-level
metrics measure too.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable
from typing import Any, Final

from controller.emulator.frontends import Frontend, Sample
from controller.emulator.routetables import WS_TEMPLATE, Request, Response, Router, arm_error, json_response

_METRICS: Final = {
    "RequestsPerMinute": ("Count", "Requests Per Minute", "total"),
    "RequestLatency": ("MilliSeconds", "Request Latency", "average"),
    "RequestLatency_P50": ("MilliSeconds", "Request Latency P50", "average"),
    "RequestLatency_P90": ("MilliSeconds", "Request Latency P90", "average"),
    "RequestLatency_P95": ("MilliSeconds", "Request Latency P95", "average"),
    "RequestLatency_P99": ("MilliSeconds", "Request Latency P99", "average"),
}
_DIMENSIONS: Final = ("deployment", "statusCode", "statusCodeClass")
_TERM: Final = re.compile(r"^\s*(\w+)\s+eq\s+'([^']*)'\s*$", re.IGNORECASE)
_INTERVALS: Final = {"PT1M": 60, "PT5M": 300, "PT15M": 900, "PT30M": 1800, "PT1H": 3600}


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> float:
    return datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    """The ``q`` percentile (0–100) by the nearest-rank method."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _dimension(deployment: str, sample: Sample, name: str) -> str:
    if name == "deployment":
        return deployment
    if name == "statusCode":
        return str(sample.status)
    return f"{sample.status // 100}xx"


def _aggregate(metric: str, samples: list[Sample], aggregations: list[str]) -> dict[str, float]:
    if metric == "RequestsPerMinute":
        out = {"total": float(len(samples)), "count": float(len(samples))}
        if "average" in aggregations:
            out["average"] = float(len(samples))
        return {k: v for k, v in out.items() if k in aggregations or k == "total"}
    if not samples:
        return {}
    latencies = [s.latency_ms for s in samples]
    if metric == "RequestLatency":
        return {"average": sum(latencies) / len(latencies), "minimum": min(latencies), "maximum": max(latencies),
                "count": float(len(latencies))}
    return {"average": percentile(latencies, float(metric.rsplit("_P", 1)[1]))}


class InsightRoutes:
    """Azure Monitor metrics of v2 online endpoints, from the router's real per-request counters."""

    frontend: Frontend
    endpoint_record: Callable[..., dict[str, Any] | None]

    def _register_insights(self, router: Router) -> None:
        router.add("GET", "arm", WS_TEMPLATE + "/onlineEndpoints/{name}/providers/Microsoft.Insights/metrics",
                   self.endpoint_metrics)

    def endpoint_metrics(self, req: Request) -> Response:
        rec = self.endpoint_record(req.params)
        if rec is None:
            return arm_error(404, "ResourceNotFound", f"Endpoint {req.params['name']} was not found.")
        names = [n.strip() for n in req.query.get("metricnames", "RequestsPerMinute").split(",") if n.strip()]
        unknown = [n for n in names if n not in _METRICS]
        if unknown:
            return arm_error(400, "BadRequest", f"Failed to find metric configuration for provider: "
                             f"Microsoft.MachineLearningServices, resource type: workspaces/onlineEndpoints, metric: "
                             f"{', '.join(unknown)}. Valid metrics: {', '.join(_METRICS)}.")
        now = datetime.datetime.now(datetime.UTC).timestamp()
        try:
            start, _, end = req.query.get("timespan", "").partition("/")
            t0, t1 = (_parse_time(start), _parse_time(end)) if end else (now - 3600, now)
        except ValueError:
            return arm_error(400, "BadRequest", "timespan must be START/END in ISO 8601 (e.g. "
                             "2026-12-03T10:00:00Z/2026-12-03T11:00:00Z).")
        interval = req.query.get("interval", "PT1M").upper()
        if interval != "FULL" and interval not in _INTERVALS:
            return arm_error(400, "BadRequest", f"interval {interval} is not supported; use one of "
                             f"{', '.join(_INTERVALS)} or FULL.")
        step = (t1 - t0) if interval == "FULL" else _INTERVALS[interval]
        aggregations = [a.strip().lower() for a in req.query.get("aggregation", "").split(",") if a.strip()]
        split, keep = [], {}
        for term in filter(None, re.split(r"\s+and\s+", req.query.get("$filter", ""), flags=re.IGNORECASE)):
            m = _TERM.match(term)
            if m is None or m.group(1) not in _DIMENSIONS:
                return arm_error(400, "BadRequest", f"Cannot read filter term {term!r}: use "
                                 f"\"<dimension> eq '<value>|*'\" with dimensions {', '.join(_DIMENSIONS)}.")
            if m.group(2) == "*":
                split.append(m.group(1))
            else:
                keep[m.group(1)] = m.group(2)
        series: dict[tuple[str, ...], list[Sample]] = {}
        for deployment, samples in self.frontend.samples(rec["name"]).items():
            for s in samples:
                if not t0 <= s.at < t1 or any(_dimension(deployment, s, d) != v for d, v in keep.items()):
                    continue
                series.setdefault(tuple(_dimension(deployment, s, d) for d in split), []).append(s)
        if not series and not split:
            series[()] = []
        buckets = [t0 + i * step for i in range(max(1, math.ceil((t1 - t0) / step)))]
        value = []
        for name in names:
            unit, title, primary = _METRICS[name]
            wanted = aggregations or [primary]
            timeseries = []
            for key, samples in sorted(series.items()):
                data = []
                for b in buckets:
                    inside = [s for s in samples if b <= s.at < b + step]
                    data.append({"timeStamp": _iso(b), **_aggregate(name, inside, wanted)})
                timeseries.append({"metadatavalues": [{"name": {"value": d, "localizedValue": d}, "value": v}
                                                      for d, v in zip(split, key, strict=True)], "data": data})
            value.append({"id": f"{rec['id']}/providers/Microsoft.Insights/metrics/{name}",
                          "type": "Microsoft.Insights/metrics", "name": {"value": name, "localizedValue": title},
                          "displayDescription": f"{title} of the endpoint's deployments, measured at its router.",
                          "unit": unit, "timeseries": timeseries, "errorCode": "Success"})
        return json_response(200, {"cost": 0, "timespan": f"{_iso(t0)}/{_iso(t1)}", "interval": interval,
                                   "value": value, "namespace": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
                                   "resourceregion": rec.get("location")})
