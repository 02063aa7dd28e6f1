"""``amlops status``, ``history``, ``keys``, ``token``, ``rollout`` and ``logs``: what runs, and how to reach it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.cli.contexts import EXIT_ERROR, EXIT_OK, open_pool, settings_of, targets_of
from controller.core.connecting import log_file, service_access, traffic_splitting
from controller.core.recording import Recorder
from controller.core.rendering import JSON_FORMAT_VERSION, describe_rollout_state
from controller.core.reporting import plan_counts, status_report
from controller.core.rolling_out import describe, intervene
from controller.structs.errors import BackendError
from controller.structs.manifests import Kind


def cmd_status(args: argparse.Namespace) -> int:
    """Every resource with its state and conditions; services with URI, replicas and model versions.

    Reads every backend the manifests' workspaces name (``--path``); exit 1 if one could not be read.
    """
    settings = settings_of(args)
    pool = open_pool(settings)
    try:
        report = status_report(targets_of(args, pool, "status").backends, Recorder(settings.state_dir),
                               settings.controller_name)
    except BackendError as exc:
        print(f"amlops status: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        pool.close()
    source, rows, errors = report.source, report.rows, report.errors
    for error in errors:
        print(f"amlops status: {error}", file=sys.stderr)
    code = EXIT_ERROR if errors else EXIT_OK
    if args.output == "json":
        payload = {"formatVersion": JSON_FORMAT_VERSION, "lastAppliedRevision": source.last_applied_revision,
                   "lastAttemptedRevision": source.last_attempted_revision, "lastStatus": source.last_status,
                   "lastErrors": list(source.last_errors), "resources": rows}
        print(json.dumps(payload, indent=2, sort_keys=True, default=str))
        return code
    print(f"last applied revision: {source.last_applied_revision or '-'}   last attempted: "
          f"{source.last_attempted_revision or '-'} ({source.last_status or 'never reconciled'})")
    if not rows:
        print("no resources")
        return code
    for row in rows:
        line = f"{row['kind'] + '/' + row['name']:<40} {row['status']:<28} rev {row['lastAppliedRevision'] or '-'}"
        if not row["managed"]:
            line += "  (not managed)"
        print(line)
        if row["kind"] == Kind.WEBSERVICE.value:
            replicas = row["replicas"]
            ready = "-" if replicas["ready"] is None else replicas["ready"]
            desired = "-" if replicas["desired"] is None else replicas["desired"]
            print(f"    uri: {row['scoringUri']}  replicas: {ready}/{desired} ready  "
                  f"models: {', '.join(row['modelVersions']) or '-'}")
            if "traffic" in row:
                shares = ", ".join(f"{name} {share} %" for name, share in row["traffic"].items())
                print(f"    traffic: {shares or 'none'}")
            for replica in row.get("placement") or []:
                gpus = ", ".join(f"{g['uuid']}" + (f" ({g['name']})" if g.get("name") else "") for g in replica["gpus"])
                print(f"    replica {replica['slot']} (pid {replica['pid']}, generation {replica['generation']}): "
                      f"{gpus or 'no GPU'}")
        if row.get("rollout"):
            print(f"    rollout: {describe_rollout_state(row['rollout'])}")
        observed = {c["type"] for c in row["conditions"]}
        recorded = [c for c in row["recordedConditions"] if c["type"] == "Stalled" and c["type"] not in observed]
        for condition in [*row["conditions"], *recorded]:
            if condition["message"] and (not condition["status"] or condition["type"] not in ("Ready", "Synced")):
                print(f"    {condition['type']}={condition['status']} {condition['reason']}: {condition['message'].splitlines()[0]}")
    return code


def cmd_history(args: argparse.Namespace) -> int:
    """The latest reconciles, newest first."""
    entries = Recorder(settings_of(args).state_dir).history(args.limit)
    if args.output == "json":
        print(json.dumps([e.to_json() for e in entries], indent=2, sort_keys=True))
        return EXIT_OK
    for entry in entries:
        summary = plan_counts(entry.plan["summary"]) if entry.plan else ""
        took = sum(entry.durations.values())
        print(f"#{entry.id:<5} {entry.started}  {entry.revision:<20} {entry.status:<11} {summary:<18} {took:.2f}s")
        for error in entry.errors[:5]:
            print(f"        {error}")
        if len(entry.errors) > 5:
            print(f"        … and {len(entry.errors) - 5} more")
        for change in entry.changes:
            if change.get("message") and change["status"] == "succeeded" and not change.get("rollout"):
                print(f"        {change['kind']}/{change['name']}: {change['message']}")  # e.g. a migration's new URI
            for step in change.get("rollout") or []:  # a passed rollout keeps every step's figures
                print(f"        {change['kind']}/{change['name']} step {step['step']} ({step['weight']} %) "
                      f"{step['seconds']:g} s: {_both(step)}")
    return EXIT_OK


# --- keys / logs ------------------------------------------------------------------------------------


def cmd_keys(args: argparse.Namespace) -> int:
    """Print a service's keys to stdout (on request only; they never go to a log), from the backend that holds it."""
    settings = settings_of(args)
    pool = open_pool(settings)
    try:
        access = service_access(targets_of(args, pool, "keys"), args.service)
        if args.regenerate:
            access.regenerate_key(args.service, args.regenerate)
            print(f"regenerated the {args.regenerate} key of {args.service}", file=sys.stderr)
        primary, secondary = access.get_keys(args.service)
    except BackendError as exc:
        print(f"amlops keys: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        pool.close()
    if args.primary:
        print(primary)
    elif args.output == "json":
        print(json.dumps({"primaryKey": primary, "secondaryKey": secondary}))
    else:
        print(f"primary:   {primary}\nsecondary: {secondary}")
    return EXIT_OK


def _figures(label: str, figures: Mapping[str, Any]) -> str:
    p99 = figures.get("p99Ms")
    return (f"{label} {figures.get('requests', 0)} requests, {figures.get('errors', 0)} errors "
            f"({100 * float(figures.get('errorRate', 0)):.1f} %), p99 {'-' if p99 is None else f'{p99:g} ms'}")


def _both(window: Mapping[str, Any]) -> str:
    """A rollout window's figures for the new version, then for the live one."""
    return f"{_figures('new', window['candidate'])}; {_figures('live', window['live'])}"


def cmd_rollout(args: argparse.Namespace) -> int:
    """Show where a service's rollout stands, or ask the controller to ``promote`` or ``abort`` it."""
    settings = settings_of(args)
    pool = open_pool(settings)
    try:
        backend = traffic_splitting(targets_of(args, pool, "rollout"), args.service)
        if args.action != "status":
            if not intervene(backend, args.service, args.action):
                print(f"amlops rollout: {args.service} has no rollout in progress", file=sys.stderr)
                return EXIT_ERROR
            print(f"{args.action} requested for the rollout of {args.service}: the controller acts on its next pass")
            return EXIT_OK
        data = describe(backend, args.service)
    except BackendError as exc:
        print(f"amlops rollout: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        pool.close()
    if args.output == "json":
        print(json.dumps({"service": args.service, "rollout": data}, indent=2, sort_keys=True))
        return EXIT_OK
    if data is None:
        print(f"{args.service}: no rollout in progress")
        return EXIT_OK
    print(f"{args.service}: {describe_rollout_state(data)}")
    if data.get("weights"):
        print(f"  steps: {' → '.join(f'{w} %' for w in data['weights'])}")
    current = data.get("window")
    if current:
        print(f"  this step, {current['seconds']:g} s: {_both(current)}")
    for step in data.get("passed") or []:
        print(f"  passed step {step['step']} ({step['weight']} %) in {step['seconds']:g} s: "
              f"{_both(step)}")
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    """Print a fresh access token of a service with ``auth: token`` to stdout (never to a log)."""
    settings = settings_of(args)
    pool = open_pool(settings)
    try:
        token = service_access(targets_of(args, pool, "token"), args.service).get_token(args.service)
    except BackendError as exc:
        print(f"amlops token: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        pool.close()
    if args.output == "json":
        print(json.dumps({"accessToken": token.access_token, "tokenType": token.token_type,
                          "refreshAfter": token.refresh_after, "expiryOn": token.expiry_on}))
    else:
        print(token.access_token)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(token.expiry_on))
        refresh = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(token.refresh_after))
        print(f"expires {when}; fetch a new one after {refresh}", file=sys.stderr)
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    """Print (and with --follow, on the local backend, keep printing) one replica's log."""
    settings = settings_of(args)
    pool = open_pool(settings)
    try:
        try:
            access = service_access(targets_of(args, pool, "logs"), args.service)
            followed = log_file(access, args.service, args.replica) if args.follow else None
            if args.follow and followed is None:
                print(f"amlops logs: --follow works on the local backend only; {args.service} is on another one "
                      "(run again without --follow to see its latest lines)", file=sys.stderr)
                return EXIT_ERROR
            print(access.tail_log(args.service, args.replica, args.tail))
        except BackendError as exc:
            print(f"amlops logs: {exc}", file=sys.stderr)
            return EXIT_ERROR
        return EXIT_OK if followed is None else _follow(followed)
    finally:
        pool.close()


def _follow(path: Path) -> int:
    """Print what is appended to ``path`` until interrupted (a rotated or truncated log is read from its start)."""
    position = path.stat().st_size if path.exists() else 0
    try:
        while True:
            if path.exists():
                size = path.stat().st_size
                if size < position:  # the log was rotated or truncated
                    position = 0
                if size > position:
                    with path.open("rb") as handle:
                        handle.seek(position)
                        sys.stdout.write(handle.read().decode(errors="replace"))
                        sys.stdout.flush()
                        position = handle.tell()
            time.sleep(0.5)
    except KeyboardInterrupt:
        return EXIT_OK
