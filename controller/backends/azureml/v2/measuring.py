"""A v2 endpoint's scoring figures per deployment, from Azure Monitor (azure-monitor-query).

Azure ML publishes online endpoint metrics under the endpoint's ARM id
(``…/onlineEndpoints/{name}/providers/Microsoft.Insights/metrics``): ``RequestsPerMinute``
(a count per interval) and ``RequestLatency_P99`` (milliseconds), with the dimensions
``deployment`` and ``statusCodeClass``. One query over a time span, split by both, gives each
deployment's requests, 5xx and p99 (the highest of its status classes' p99s, a conservative
reading): ``MetricsQueryClient`` of azure-monitor-query 1.x (2.x moved metrics to a
regional batch client that does not take an ARM resource id), authenticated by the workspace's
own credential. A span longer than one interval is answered in several buckets: counts are
summed, and the p99 is the highest bucket's (a percentile cannot be merged; the highest is the
conservative reading).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Final

from controller.backends.azureml.v2.sessions import V2Session

_GRAIN: Final = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class DeploymentFigures:
    """One deployment's answered scoring requests over a span."""

    requests: int = 0
    errors: int = 0
    p99_ms: float | None = None


def _utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC)


class EndpointMetrics:
    """Azure Monitor metrics of a workspace's online endpoints (one ``MetricsQueryClient``, built on first use)."""

    def __init__(self, session: V2Session) -> None:
        self.session = session
        self._client: Any = None

    def _query(self, endpoint: str, start: float, end: float) -> Any:
        from azure.monitor.query import MetricsQueryClient

        s = self.session
        if self._client is None:
            self._client = MetricsQueryClient(s.credential())
        uri = f"{s.scope}/onlineEndpoints/{endpoint}"
        what = f"read the metrics of endpoint {endpoint} from Azure Monitor"
        return s.call(what, lambda: self._client.query_resource(
            uri, metric_names=["RequestsPerMinute", "RequestLatency_P99"], granularity=_GRAIN,
            timespan=(_utc(start), _utc(max(end, start + 1.0))), aggregations=["Total", "Average"],
            filter="deployment eq '*' and statusCodeClass eq '*'"))

    def figures(self, endpoint: str, start: float, end: float) -> dict[str, DeploymentFigures]:
        """Each deployment's requests, 5xx and p99 over ``[start, end)`` (epoch seconds)."""
        counts: dict[str, list[int]] = {}
        p99: dict[str, float] = {}
        for metric in self._query(endpoint, start, end).metrics:
            for series in metric.timeseries:
                labels = series.metadata_values or {}
                deployment = str(labels.get("deployment", ""))
                if metric.name == "RequestsPerMinute":
                    total = int(sum(v.total or 0 for v in series.data))
                    found = counts.setdefault(deployment, [0, 0])
                    found[0] += total
                    if str(labels.get("statusCodeClass", "")) == "5xx":
                        found[1] += total
                elif metric.name == "RequestLatency_P99":
                    values = [v.average for v in series.data if v.average is not None]
                    if values:
                        p99[deployment] = max([*values, p99.get(deployment, 0.0)])
        return {name: DeploymentFigures(n[0], n[1], p99.get(name)) for name, n in counts.items()}

    def close(self) -> None:
        """Close the metrics client's HTTP session."""
        client, self._client = self._client, None
        if client is not None:
            client.close()
