"""Prometheus metrics of the controller, in a registry of their own (never the global one)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class ResourceCondition:
    """One resource's condition, as counted by ``amlops_resources``."""

    kind: str
    condition: str
    status: bool


class ControllerMetrics:
    """The controller's metrics; ``render()`` gives the text exposition for ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reconcile_seconds = Histogram(
            "amlops_reconcile_duration_seconds",
            "Wall time of one reconcile, fetch included.",
            ["status"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        )
        self.reconciles = Counter(
            "amlops_reconciles", "Reconciles by final status.", ["status"], registry=self.registry
        )
        self.changes = Counter(
            "amlops_changes",
            "Changes applied, by action and outcome.",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.resources = Gauge(
            "amlops_resources",
            "Resources by kind and condition.",
            ["kind", "condition", "status"],
            registry=self.registry,
        )
        self.last_applied = Gauge(
            "amlops_last_applied_revision_info",
            "1 for the revision last applied successfully (its sha is the label).",
            ["revision"],
            registry=self.registry,
        )
        self.last_applied_timestamp = Gauge(
            "amlops_last_applied_timestamp_seconds",
            "When a revision was last applied.",
            registry=self.registry,
        )
        self.fetch_errors = Counter(
            "amlops_source_fetch_errors", "Failures to fetch the source.", registry=self.registry
        )
        self.webhooks = Counter(
            "amlops_webhook_requests",
            "Webhook calls by answer.",
            ["provider", "code"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "amlops_leader", "1 while this process holds the leader lock.", registry=self.registry
        )
        self.state_dir_writable = Gauge(
            "amlops_state_dir_writable",
            "1 while the state dir takes writes (checked before each reconcile); 0 when full or read-only.",
            registry=self.registry,
        )

    def applied(self, revision: str, when: float) -> None:
        """Record ``revision`` as the last one applied."""
        self.last_applied.clear()
        self.last_applied.labels(revision=revision).set(1)
        self.last_applied_timestamp.set(when)

    def set_resources(self, conditions: Iterable[ResourceCondition]) -> None:
        """Replace the resource gauge with the counts of ``conditions``."""
        counts: dict[tuple[str, str, str], int] = {}
        for c in conditions:
            key = (c.kind, c.condition, "true" if c.status else "false")
            counts[key] = counts.get(key, 0) + 1
        self.resources.clear()
        for (kind, condition, status), n in counts.items():
            self.resources.labels(kind=kind, condition=condition, status=status).set(n)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
