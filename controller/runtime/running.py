"""``amlops run``: the long-lived controller process.

One loop, level-triggered like controller-runtime: whatever woke it (the interval, a webhook, a
folder edit, ``POST /api/sync``), it fetches the source and runs the whole reconcile pipeline,
which reads desired and actual state afresh. Requeue: after success, the next interval; after a
failure, exponential backoff with jitter, capped at the interval. Events are never trusted for
content; they only shorten the wait.

Process lifetime: the HTTP endpoints come up first (so a standby can say so), then the leader
lock is taken (or waited for), then the loop runs until SIGTERM/SIGINT, which let the reconcile in
flight finish and be recorded before exiting 0. SIGHUP re-reads the config file and secret files.

Beside the loop: ``sourcing`` opens the source followed, ``reloading`` resolves the settings SIGHUP
re-reads, ``waking`` holds the wake-up reasons and signal flags, ``banners`` the printed ``curl``.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from controller.core.connecting import BackendPool
from controller.core.reconciling import PlanMemo, ReconcileOptions, reconcile
from controller.core.recording import Recorder
from controller.core.reporting import change_entries, history_rows, outcome_summary, published_resources
from controller.runtime.banners import SAMPLE_REQUEST, service_banner
from controller.runtime.flags import add_run_arguments
from controller.runtime.locking import LeaderLock
from controller.runtime.logs import RedactingFilter, configure_logging
from controller.runtime.metrics import ControllerMetrics, ResourceCondition
from controller.runtime.notifying import Notifier
from controller.runtime.reloading import load_reloadable
from controller.runtime.serving import Endpoints, HttpServer
from controller.runtime.sourcing import open_source
from controller.runtime.statedirs import state_dir_problem, state_dir_status
from controller.runtime.statuses import StatusBoard
from controller.runtime.waking import Signals, Wakeup
from controller.settings import Settings, resolve_settings
from controller.sources.gitting import SourceUnavailable
from controller.sources.revisions import local_source
from controller.structs.logformats import event_logger
from controller.structs.manifests import Kind
from controller.structs.plans import Action
from controller.structs.redactions import redact
from controller.structs.results import ChangeStatus, ReconcileOutcome, ReconcileStatus
from controller.structs.states import ActualResource, ResourceId, source_id

log = event_logger("amlops.run")

LOCK_POLL_S: Final = 1.0
HISTORY_SHOWN: Final = 20  # reconciles on the status page (amlops history reads the same database)
BACKOFF_BASE_S: Final = 1.0
DUMP_MODULES_ENV: Final = "AMLOPS_DUMP_MODULES"
"""When set to a path, the process writes its sorted ``sys.modules`` there at exit (tests use it)."""

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 64  # EX_USAGE, as the other commands; never 2, which means "changes"
EXIT_HELD: Final = 3


def backoff_delay(failures: int, interval: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait after ``failures`` consecutive failures: doubling from 1 s, jittered, capped at ``interval``."""
    if failures <= 0:
        return interval
    ceiling: float = min(interval, BACKOFF_BASE_S * 2.0 ** min(failures - 1, 30))
    return max(0.05, ceiling * (0.5 + rng() / 2))


class Controller:
    """The controller process: HTTP endpoints, leader lock, source and the reconcile loop."""

    def __init__(self, args: argparse.Namespace, settings: Settings, redactor: RedactingFilter) -> None:
        self.args = args
        self.redactor = redactor
        self.name = settings.controller_name
        self.state_dir = settings.state_dir
        self.log_format = settings.log_format
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.settings = load_reloadable(args)
        self.metrics = ControllerMetrics()
        self.wakeup = Wakeup()
        self.lock = LeaderLock(self.state_dir)
        self.followed = open_source(args.repo, args.path, branch=args.branch, watch=args.watch,
                                    ssh_key_file=args.ssh_key_file, cache_dir=self.state_dir / "cache",
                                    settings=self.settings)
        self.source = self.followed.source
        self.redactor.set_secrets(self.settings.secrets + list(self.source.secrets))
        self.status = StatusBoard(
            self.name,
            {
                "url": self.source.display_url,
                "branch": args.branch,
                "path": args.path,
                "kind": self.followed.kind,
            },
            detect_only=args.detect_only,
        )
        # The name of what this controller follows: its inventory is what this source applied.
        self.source_id = (local_source(Path(self.source.display_url) / args.path) if self.followed.kind == "folder"
                          else source_id(self.source.display_url, args.branch, args.path))
        self.recorder = Recorder(self.state_dir)
        # Credentials a backend resolves (e.g. a service principal's secret) join the redacted set.
        self.backends = BackendPool(self.state_dir, self.name, on_secrets=self.redactor.add_secrets)
        self.signals = Signals()
        self.stop_requested = self.signals.stop
        self.options = ReconcileOptions(
            controller_name=self.name,
            source=self.source_id,
            detect_only=args.detect_only,
            allow_mass_delete=args.allow_mass_delete,
            parallelism=max(1, args.parallelism),
            # Git commits and folder content hashes name their content: unchanged passes skip validation.
            reuse_desired=True,
            plan_memo=PlanMemo(),
            stop=self.stop_requested,
        )
        self._refused = False  # a standby that found the leader following another source
        self._failures = 0
        self.server = HttpServer(
            args.listen,
            Endpoints(
                status=self.status,
                metrics=self.metrics,
                wake=self.wake,
                webhook_secret=lambda: self.settings.webhook_secret,
                api_token=lambda: self.settings.api_token,
                branch=lambda: self.source.branch,
            ),
        )
        # Reports of each revision's outcome: queued here, delivered on the receivers' own threads.
        self.notifier = Notifier(self.name, self.source.display_url, args.path, self.metrics.registry,
                                 lambda health: self.status.update(notifications=health))
        self.notifier.configure(self.settings.notifications, self.settings.notification_credentials, self._status_url())

    def _status_url(self) -> str:
        host, _, port = self.server.address.rpartition(":")
        host = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
        return f"http://{host}:{port}/"

    def reload(self) -> None:
        """Re-read the config file and secret files; keep the old settings if they are unreadable."""
        self.signals.reload_requested = False
        try:
            fresh = load_reloadable(self.args)
        except SystemExit as exc:
            log.error("settings.reload.failed", error=str(exc))
            return
        self.settings = fresh
        self.notifier.configure(fresh.notifications, fresh.notification_credentials, self._status_url())
        self.followed.reconfigure(fresh)
        self.redactor.set_secrets(fresh.secrets + list(self.source.secrets))
        log.info("settings.reloaded", interval=fresh.interval)
        self.wake("reload")

    def wake(self, reason: str) -> None:
        """Run a reconcile as soon as the one in flight (if any) is done."""
        self.wakeup.wake(reason)

    # -- lifetime ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve, lead (or stand by), loop until told to stop; the exit status of the process."""
        self.server.start()
        log.info("http.listening", address=self.server.address)
        try:
            if not self.lock.try_acquire(self.source_id):
                if self._other_source():
                    return EXIT_USAGE
                self.status.update(role="standby")
                log.info("leader.standby", lock=str(self.lock.path), holder=self.lock.holder())
                if not self._wait_for_lock():
                    return EXIT_USAGE if self._refused else EXIT_OK
            self._close_interrupted()
            self.status.update(role="leader", lastAppliedRevision=self.recorder.last_good_revision())
            self._publish_resources()
            self._publish_history()
            self.metrics.leader.set(1)
            log.info("leader.elected", pid=os.getpid(), state_dir=str(self.state_dir))
            self.followed.watch(lambda: self.wake("watch"))
            return self._loop()
        finally:
            self.status.update(role="stopping")
            self.notifier.close()
            self.source.close()
            self.backends.close()
            self.server.close()
            self.lock.release()
            log.info("controller.stopped", pid=os.getpid())

    def _close_interrupted(self) -> None:
        """A pass the previous leader left ``applying`` was cut short (kill -9, power loss): say so in history."""
        try:
            closed = self.recorder.close_interrupted()
        except Exception as exc:  # the history database is advisory here; never stop the loop for it
            log.warning("history.unwritable", error=str(exc))
            return
        if closed:
            log.warning("reconcile.interrupted", passes=closed)

    def _other_source(self) -> bool:
        """Whether the leader follows another source: then this one must not stand by to take over.

        A standby is a spare for the same source. Taking over with another source would apply a
        second repo's inventory over the first's history and state dir; refuse it, clearly.
        """
        leader = self.lock.holder_source()
        if not leader or leader == self.source_id:
            return False
        message = (f"amlops run: the controller leading {self.state_dir} (pid {self.lock.holder() or '?'}) follows "
                   f"{leader}; this one follows {self.source_id}. A standby must follow the same source: give this "
                   "controller its own --state-dir (and --controller-name if both share a backend)")
        log.error("leader.other_source", leader_source=leader, source=self.source_id)
        print(message, file=sys.stderr, flush=True)
        return True

    def _wait_for_lock(self) -> bool:
        while not self.stop_requested.is_set():
            if self.lock.try_acquire(self.source_id):
                return True
            if self._other_source():
                self._refused = True
                return False
            if self.signals.reload_requested:
                self.reload()
            self.stop_requested.wait(LOCK_POLL_S)
        return False

    def _loop(self) -> int:
        reasons = ["start"]
        while True:
            outcome = self.reconcile_once(reasons)
            if self.args.once:
                return self._exit_status(outcome)
            if self.stop_requested.is_set():
                return EXIT_OK
            ok = outcome is not None and outcome.status is not ReconcileStatus.FAILED
            self._failures = 0 if ok else self._failures + 1
            delay = backoff_delay(self._failures, self.settings.interval)
            if outcome is not None and outcome.requeue_after is not None:
                delay = min(delay, outcome.requeue_after)  # a rollout under way is looked at again soon
            self.status.update(nextReconcileAt=time.time() + delay)
            reasons = self._sleep(delay)
            if self.stop_requested.is_set():
                return EXIT_OK

    def _sleep(self, delay: float) -> list[str]:
        """Wait ``delay`` seconds or until woken; poll the stop flag so signals are seen promptly."""
        deadline = time.monotonic() + delay
        while not self.stop_requested.is_set():
            if self.signals.reload_requested:
                self.reload()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ["interval"]
            if self.wakeup.wait(min(remaining, 0.25)):
                return self.wakeup.take()
        return ["stop"]

    @staticmethod
    def _exit_status(outcome: ReconcileOutcome | None) -> int:
        if outcome is None:
            return EXIT_FAILED
        if outcome.status is ReconcileStatus.HELD:
            return EXIT_HELD
        return EXIT_OK if outcome.ok else EXIT_FAILED

    # -- one pass ---------------------------------------------------------------------------

    def reconcile_once(self, reasons: list[str]) -> ReconcileOutcome | None:
        """Fetch the source and run the reconcile pipeline once; record everything in the status."""
        started = time.time()
        log.info("sync.started", trigger=",".join(sorted(set(reasons))) or "interval")
        # State dir: nothing can be recorded without it; say so instead of failing at the first write.
        problem = state_dir_problem(self.state_dir)
        self.status.update(stateDir=state_dir_status(self.state_dir, problem))
        self.metrics.state_dir_writable.set(0 if problem else 1)
        if problem is not None:
            self._state_dir_failed(problem, started)
            return None
        # Fetch: a snapshot of one revision, never a tree that is still moving.
        try:
            snapshot = self.source.fetch()
        except SourceUnavailable as exc:
            self._fetch_failed(str(exc), started)
            return None
        except Exception as exc:  # a full disk or a git failure while exporting: retry, never exit
            log.exception("source.fetch.crashed")
            self._fetch_failed(redact(f"{type(exc).__name__}: {exc}", self._secrets()), started)
            return None
        self.status.update_source(
            reachable=True,
            lastFetchError=None,
            lastFetchedRevision=snapshot.revision,
            branch=self.source.branch,
        )
        self.status.update(lastAttemptedRevision=snapshot.revision)
        self.notifier.started(snapshot.revision)
        # Reconcile: load+validate, read actual, plan, apply, prune, health, record (core's pipeline).
        began = datetime.now(UTC)
        try:
            outcome = reconcile(
                snapshot.root,
                snapshot.path,
                snapshot.revision,
                self.backends.backend_for,
                self.recorder,
                self.options,
            )
        except Exception as exc:
            # reconcile() turns every expected failure into an outcome; this is a bug, and the loop
            # must outlive it (retry with backoff) rather than leave the services unwatched.
            log.exception("sync.crashed", revision=snapshot.revision)
            message = f"internal error: {type(exc).__name__}: {exc}"
            outcome = ReconcileOutcome(
                snapshot.revision, ReconcileStatus.FAILED, began, datetime.now(UTC), errors=(message,)
            )
            try:  # in the one history too, so amlops history and the status page both show it
                self.recorder.record(outcome)
            except Exception as record_exc:
                log.warning("history.unwritable", error=str(record_exc))
        self._record(outcome, started)
        self.notifier.reconciled(outcome, outcome_summary(outcome))
        return outcome

    def _secrets(self) -> tuple[str, ...]:
        return tuple(self.settings.secrets) + tuple(self.source.secrets)

    def _state_dir_failed(self, message: str, started: float) -> None:
        log.warning("state_dir.unwritable", error=message)
        self._pass_failed(message, started)

    def _fetch_failed(self, message: str, started: float) -> None:
        self.metrics.fetch_errors.inc()
        log.warning("source.fetch.failed", error=message)
        self.status.update_source(reachable=False, lastFetchError=message)
        self._pass_failed(message, started)

    def _pass_failed(self, message: str, started: float) -> None:
        self.metrics.reconciles.labels(status="failed").inc()
        self.metrics.reconciled(ReconcileStatus.FAILED.value)
        now = time.time()
        last = {
            "revision": None,
            "status": "failed",
            "startedAt": started,
            "finishedAt": now,
            "durationSeconds": round(now - started, 3),
            "errors": [message],
            "changes": [],
        }
        self.status.update(lastReconcile=last, reconciles=(self.status.get("reconciles") or 0) + 1)

    def _publish_history(self) -> None:
        """The status page's history: the latest recorded reconciles, as ``amlops history`` lists them."""
        try:
            self.status.update(history=history_rows(self.recorder.history(HISTORY_SHOWN)))
        except Exception as exc:  # the history database is advisory here; never stop the loop for it
            log.warning("history.unreadable", error=str(exc))

    def _record(self, outcome: ReconcileOutcome, started: float) -> None:
        now = time.time()
        duration = now - started
        status = outcome.status.value
        self.metrics.reconcile_seconds.labels(status=status).observe(duration)
        self.metrics.reconciles.labels(status=status).inc()
        self.metrics.reconciled(status)
        for change in outcome.changes:
            self.metrics.changes.labels(action=change.action.value, outcome=change.status.value).inc()
        if outcome.status in (ReconcileStatus.APPLIED, ReconcileStatus.NO_CHANGES):
            self.metrics.applied(outcome.revision, now)
            self.status.update(lastAppliedRevision=outcome.revision)
        last = {
            "revision": outcome.revision,
            "status": status,
            "startedAt": started,
            "finishedAt": now,
            "durationSeconds": round(duration, 3),
            "phases": {k: round(v, 3) for k, v in outcome.durations.items()},
            "errors": list(outcome.errors),
            "changes": change_entries(outcome),
            "held": outcome.plan.held if outcome.plan is not None else None,
            "warnings": list(outcome.plan.warnings) if outcome.plan is not None else [],
        }
        self.status.update(lastReconcile=last, reconciles=(self.status.get("reconciles") or 0) + 1)
        self._publish_history()
        fields: dict[str, Any] = {
            "revision": outcome.revision,
            "status": status,
            "seconds": round(duration, 3),
        }
        failed = [c for c in outcome.changes if c.status is ChangeStatus.FAILED]
        if failed:
            fields["failed"] = ",".join(str(c.id) for c in failed)
        if outcome.errors:
            fields["error"] = outcome.errors[0]
            fields["errors"] = len(outcome.errors)
        level = logging.INFO if outcome.ok else logging.WARNING
        log.log(level, "sync.finished", **fields)
        # A pass that changed nothing already read the live state; after changes, read it again.
        unchanged = outcome.actual is not None and not outcome.changes
        observed = dict(outcome.actual.resources) if unchanged and outcome.actual is not None else self._observe()
        self._publish_resources(observed)
        self._announce_services(outcome, observed)

    def _observe(self) -> dict[ResourceId, ActualResource]:
        """Live state from every backend in use (one list read each), for the status page and banners."""
        observed: dict[ResourceId, ActualResource] = {}
        for backend in self.backends.backends():
            try:
                observed.update(backend.read().resources)
            except Exception as exc:  # status is a courtesy: never let it stop the loop
                log.warning("status.observe.failed", error=type(exc).__name__)
        return observed

    def _announce_services(self, outcome: ReconcileOutcome, observed: dict[ResourceId, ActualResource]) -> None:
        """After a service was (re)deployed, print how to call it: people want a command to paste.

        The key itself is never printed; the command fetches it with ``amlops keys``.
        """
        sample = Path(SAMPLE_REQUEST)
        for change in outcome.changes:
            resource = observed.get(change.id)
            if (change.id.kind is Kind.WEBSERVICE and change.status is ChangeStatus.SUCCEEDED
                    and change.action is not Action.DELETE and resource is not None
                    and resource.details.get("scoringUri")):
                banner = service_banner(resource, self.state_dir, self.name, sample if sample.is_file() else None)
                if self.log_format == "json":  # stdout carries JSON lines only in JSON mode
                    log.info("service.ready", service=change.id.name, scoringUri=resource.details["scoringUri"],
                             howToCall=banner)
                else:
                    print(banner, flush=True)

    def _publish_resources(self, observed: dict[ResourceId, ActualResource] | None = None) -> None:
        """Per-resource status for the page, the API and the gauges: the recorder's conditions,
        overlaid with what the backend sees live (a dead replica, a missing GPU, a substitution)."""
        try:
            statuses = self.recorder.resource_status()
        except Exception as exc:  # the history database is advisory here; never stop the loop for it
            log.warning("status.resources.unreadable", error=str(exc))
            return
        observed = observed if observed is not None else self._observe()
        resources = published_resources(statuses, observed, self.status.get("lastReconcile") or {})
        self.status.update(resources=resources)
        conditions = [ResourceCondition(r["kind"], c["type"], bool(c["status"]), r["name"], str(c.get("reason") or ""))
                      for r in resources for c in r["conditions"]]
        self.metrics.set_resources(conditions)
        self.metrics.set_resource_conditions(conditions)


def _dump_modules_at_exit() -> None:
    target = os.environ.get(DUMP_MODULES_ENV)
    if not target:
        return

    def dump() -> None:
        Path(target).write_text("\n".join(sorted(sys.modules)) + "\n")

    atexit.register(dump)


def main_run(args: argparse.Namespace) -> int:
    """Entry point of ``amlops run`` (see ``add_run_arguments`` for the flags read from ``args``)."""
    try:
        settings = resolve_settings(args.state_dir, args.controller_name, args.log_format)
    except ValueError as exc:
        print(f"amlops run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    redactor = configure_logging(settings.log_format, getattr(logging, str(args.log_level).upper()))
    _dump_modules_at_exit()
    try:
        controller = Controller(args, settings, redactor)
    except SystemExit as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        log.error("controller.start.failed", error=str(exc))
        return EXIT_USAGE
    controller.signals.install()
    return controller.run()


__all__ = ["add_run_arguments", "backoff_delay", "main_run"]
