"""Prometheus metrics of the controller, in a registry of their own (never the global one)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from controller.structs.results import ReconcileStatus

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Counters' ``_created`` series say when this process started counting, which the process start
# time already says; they doubled the series a scrape returns. (A process-wide switch of the library.)
disable_created_metrics()  # type: ignore[no-untyped-call]

CONDITION_STATUSES = ("True", "False", "Unknown")


@dataclass(frozen=True)
class ResourceCondition:
    """One resource's condition, as counted by ``amlops_resources`` and shown by ``amlops_resource_condition``."""

    kind: str
    condition: str
    status: bool
    name: str = ""
    reason: str = ""


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
        # Level signals to alert on (as Flux's gotk_reconcile_condition): one series per resource,
        # condition type and status, 1 for the status it has now, 0 for the others.
        self.resource_condition = Gauge(
            "amlops_resource_condition",
            "1 for each resource condition's current status (True/False/Unknown), with its reason; 0 for the other statuses.",
            ["kind", "name", "type", "status", "reason"],
            registry=self.registry,
        )
        self.last_reconcile = Gauge(
            "amlops_last_reconcile_status",
            "1 for how the last reconcile ended (invalid and held mean the latest revision runs nowhere), 0 for the others.",
            ["status"],
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

    def reconciled(self, status: str) -> None:
        """Record how the last reconcile ended (a ``ReconcileStatus`` value)."""
        for known in ReconcileStatus:
            self.last_reconcile.labels(status=known.value).set(1 if known.value == status else 0)

    def set_resource_conditions(self, conditions: Iterable[ResourceCondition]) -> None:
        """Replace the per-resource condition gauge with ``conditions``."""
        self.resource_condition.clear()
        for c in conditions:
            current = "True" if c.status else "False"
            for status in CONDITION_STATUSES:
                self.resource_condition.labels(kind=c.kind, name=c.name, type=c.condition, status=status,
                                               reason=c.reason if status == current else "").set(1 if status == current else 0)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
