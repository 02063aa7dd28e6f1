"""Rendering plans for people and programs: terminal text, Markdown for pull requests, JSON.

A plan never prints itself (Terraform's split); these functions are its only presentation, and
golden files in ``tests/golden/`` pin their output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from controller.structs.errors import ManifestError
from controller.structs.manifests import Rollout
from controller.structs.plans import Action, Change, FieldDiff, Plan

# The version of every JSON document amlops prints (plan, status, validate): bumped on a breaking change.
JSON_FORMAT_VERSION: Final = 1

_VERBS: Final = {
    Action.CREATE: "create",
    Action.UPDATE: "update in place",
    Action.REPLACE: "replace",
    Action.DELETE: "destroy",
    Action.NOOP: "no-op",
}

# ANSI colours as Terraform uses them; magenta marks replaces, which destroy before creating.
_COLOURS: Final = {
    Action.CREATE: "\x1b[32m",
    Action.UPDATE: "\x1b[33m",
    Action.REPLACE: "\x1b[35m",
    Action.DELETE: "\x1b[31m",
    Action.NOOP: "\x1b[2m",
}
_BOLD: Final = "\x1b[1m"
_RESET: Final = "\x1b[0m"

_EMOJI: Final = {
    Action.CREATE: "🟢",
    Action.UPDATE: "🟡",
    Action.REPLACE: "🟣",
    Action.DELETE: "🔴",
    Action.NOOP: "⚪",
}


def summary_line(plan: Plan) -> str:
    """``Plan: 1 to add, 2 to change, 0 to replace, 1 to destroy.``"""
    return (
        f"Plan: {plan.count(Action.CREATE)} to add, {plan.count(Action.UPDATE)} to change, "
        f"{plan.count(Action.REPLACE)} to replace, {plan.count(Action.DELETE)} to destroy."
    )


def format_value(value: Any) -> str:
    """A value as a reviewer reads it: JSON, with ``(unset)`` for nothing."""
    if value is None:
        return "(unset)"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else json.dumps(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _diff_line(diff: FieldDiff, action: Action) -> str:
    if action is Action.CREATE or diff.before is None:
        line = f"+ {diff.path}: {format_value(diff.after)}"
    elif diff.after is None:
        line = f"- {diff.path}: {format_value(diff.before)}"
    else:
        line = f"~ {diff.path}: {format_value(diff.before)} → {format_value(diff.after)}"
    if diff.forces_replace:
        line += "  # forces replacement"
    return line


def _diff_colour(diff: FieldDiff, action: Action) -> Action:
    """Added fields are green, removed red, changed yellow, as in Terraform."""
    if action is Action.CREATE or diff.before is None:
        return Action.CREATE
    if diff.after is None:
        return Action.DELETE
    return Action.UPDATE


def _shown(plan: Plan) -> list[Change]:
    """Effective changes, plus no-ops that carry a reason worth reading (suspended, retained)."""
    return [c for c in plan.changes if c.action is not Action.NOOP or c.reason]


def render_text(plan: Plan, color: bool = False) -> str:
    """Terraform-style terminal text; ANSI colours only when ``color``."""

    def paint(action: Action, text: str) -> str:
        return f"{_COLOURS[action]}{text}{_RESET}" if color else text

    def bold(text: str) -> str:
        return f"{_BOLD}{text}{_RESET}" if color else text

    header = f"amlops plan for revision {plan.revision}"
    if plan.base_revision:
        header += f" (base {plan.base_revision})"
    lines = [bold(header), ""]
    shown = _shown(plan)
    if not plan.has_changes:
        lines.append("No changes. Actual state matches the manifests.")
        lines.append("")
    for change in shown:
        where = f"  ({change.manifest_file})" if change.manifest_file else ""
        title = f"{change.action.symbol} {_VERBS[change.action]} {bold(str(change.id))}{where}"
        if change.action is Action.NOOP:
            title = f"  {_VERBS[change.action]} {change.id}{where}"
        lines.append(paint(change.action, title))
        if change.reason:
            lines.append(f"      # {change.reason}")
        if change.rollout:
            lines.append(f"      # rollout: {change.rollout}")
        for diff in change.diffs:
            lines.append("      " + paint(_diff_colour(diff, change.action), _diff_line(diff, change.action)))
        lines.append("")
    for warning in plan.warnings:
        lines.append(f"Note: {warning}")
    if plan.warnings:
        lines.append("")
    if plan.held:
        lines.append(paint(Action.DELETE, f"Held: {plan.held}"))
        lines.append("")
    if plan.has_changes:
        lines.append(bold(summary_line(plan)))
    return "\n".join(lines).rstrip("\n") + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(plan: Plan) -> str:
    """Markdown for a pull-request comment: a summary table, then one ``<details>`` per change."""
    title = f"### amlops plan for `{plan.revision}`"
    if plan.base_revision:
        title += f" (base `{plan.base_revision}`)"
    out = [title, ""]
    if plan.held:
        out += [f"> [!WARNING]\n> **Held:** {_md_cell(plan.held)}", ""]
    shown = _shown(plan)
    if not plan.has_changes:
        out += ["**No changes.** Actual state matches the manifests.", ""]
    else:
        out += [f"**{summary_line(plan)}**", ""]
    if shown:
        out += ["| | Action | Resource | Reason |", "|---|---|---|---|"]
        for change in shown:
            symbol = f"`{change.action.symbol}` " if change.action is not Action.NOOP else ""
            out.append(f"| {_EMOJI[change.action]} | {symbol}{_VERBS[change.action]} | `{change.id}` | {_md_cell(change.reason)} |")
        out.append("")
    for change in shown:
        if not change.diffs and change.action is Action.NOOP:
            continue
        out.append(f"<details><summary><code>{change.action.symbol}</code> {_VERBS[change.action]} <code>{change.id}</code></summary>")
        out.append("")
        if change.manifest_file:
            out.append(f"Manifest: `{change.manifest_file}`")
            out.append("")
        if change.reason:
            out.append(f"Reason: {_md_cell(change.reason)}")
            out.append("")
        if change.rollout:
            out.append(f"Rollout: {_md_cell(change.rollout)}")
            out.append("")
        if change.diffs:
            out += ["| Field | Before | After | |", "|---|---|---|---|"]
            for diff in change.diffs:
                note = "forces replacement" if diff.forces_replace else ""
                out.append(
                    f"| `{diff.path}` | `{_md_cell(format_value(diff.before))}` | `{_md_cell(format_value(diff.after))}` | {note} |"
                )
            out.append("")
        out += ["</details>", ""]
    for warning in plan.warnings:
        out.append(f"_Note: {_md_cell(warning)}_")
    return "\n".join(out).rstrip("\n") + "\n"


def plan_to_json(plan: Plan, *, no_ops: bool = True) -> dict[str, Any]:
    """The plan as plain data (the shape ``render_json`` prints and history stores); ``no_ops=False`` leaves no-ops out."""
    return {
        "revision": plan.revision,
        "baseRevision": plan.base_revision,
        "held": plan.held,
        "warnings": list(plan.warnings),
        "summary": {
            "add": plan.count(Action.CREATE),
            "change": plan.count(Action.UPDATE),
            "replace": plan.count(Action.REPLACE),
            "destroy": plan.count(Action.DELETE),
        },
        "changes": [_change_json(c) for c in plan.changes if no_ops or c.action is not Action.NOOP],
    }


def _change_json(c: Change) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kind": c.id.kind.value,
        "name": c.id.name,
        "action": c.action.value,
        "reason": c.reason,
        "manifestFile": c.manifest_file,
        "dependsOn": [str(d) for d in c.depends_on],
        "diffs": [
            {"path": d.path, "before": d.before, "after": d.after, "forcesReplace": d.forces_replace}
            for d in c.diffs
        ],
    }
    if c.rollout:
        data["rollout"] = c.rollout
    return data


def render_json(plan: Plan) -> str:
    """The plan as indented, key-sorted JSON text (camelCase keys and a ``formatVersion``, as status and validate)."""
    document = {"formatVersion": JSON_FORMAT_VERSION, **plan_to_json(plan)}
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


# --- validation results ---------------------------------------------------------------------------



def manifest_error_to_json(error: ManifestError) -> dict[str, Any]:
    """One manifest error as JSON: where it is (file, line, field), what it names, and the message."""
    return {"file": error.file, "line": error.line or None, "kind": error.kind, "name": error.name,
            "field": error.field, "message": error.message}


def render_validation_json(resources: int, errors: Sequence[ManifestError]) -> str:
    """``amlops validate --output json``: ``valid``, the resource count and every error, located."""
    document = {"formatVersion": JSON_FORMAT_VERSION, "valid": not errors, "resources": resources,
                "errors": [manifest_error_to_json(e) for e in errors]}
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _workflow_escape(text: str, *, property_value: bool = False) -> str:
    """GitHub Actions' escaping for workflow-command data (and, stricter, property values)."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property_value:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def render_validation_github(errors: Sequence[ManifestError]) -> str:
    """Each error as a GitHub Actions ``::error file=…,line=…,title=…::message`` annotation line."""
    lines = []
    for error in errors:
        props = [f"file={_workflow_escape(error.file, property_value=True)}"]
        if error.line:
            props.append(f"line={error.line}")
        subject = " ".join(p for p in (error.kind, error.name) if p)
        title = f"amlops: {subject} {error.field or ''}".strip()
        props.append(f"title={_workflow_escape(title, property_value=True)}")
        message = f"{error.field}: {error.message}" if error.field else error.message
        lines.append(f"::error {','.join(props)}::{_workflow_escape(message)}\n")
    return "".join(lines)


def _percent(value: float) -> str:
    return f"{value * 100:g} %"


def describe_rollout(rollout: Rollout) -> str:
    """How a new version will reach traffic, in one line (``amlops plan`` shows it under the change)."""
    sample = "; the sample request is answered as expected first" if rollout.sampleRequest is not None else ""
    if rollout.strategy == "blueGreen":
        return f"blueGreen: no traffic until the new version is ready{sample}, then all of it at once"
    steps = []
    for step in rollout.steps:
        holds = [f"{step.pauseSeconds:g} s" if step.pauseSeconds else "", f"{step.minRequests} requests" if step.minRequests else ""]
        held = " and ".join(h for h in holds if h)
        steps.append(f"{step.weight} %" + (f" for {held}" if held else ""))
    checks = []
    analysis = rollout.analysis
    if analysis is not None:
        if analysis.maxErrorRate is not None:
            checks.append(f"error rate ≤ {_percent(analysis.maxErrorRate)}")
        if analysis.maxP99Ms is not None:
            checks.append(f"p99 ≤ {analysis.maxP99Ms:g} ms")
        if analysis.maxP99Ratio is not None:
            checks.append(f"p99 ≤ {analysis.maxP99Ratio:g} × live")
        if analysis.minRequests:
            checks.append(f"judged after ≥ {analysis.minRequests} requests")
    judged = f"; each step: {', '.join(checks)}" if checks else ""
    return (f"canary: {' → '.join(steps)}{judged}{sample}; any failed check rolls back at once"
            if steps else "canary")


def describe_rollout_state(summary: Mapping[str, Any]) -> str:
    """Where a rollout stands, from ``RolloutState.summary()`` (status pages, ``amlops rollout status``)."""
    strategy, phase, weight = summary.get("strategy", "?"), summary.get("phase", "?"), summary.get("weight", 0)
    weights = summary.get("weights") or []
    where = phase
    if phase == "stepping" and "step" in summary:
        where = f"step {summary['step']} of {len(weights) or '?'}"
    text = f"{strategy} {where}, {weight} % to the new version"
    if summary.get("message"):
        text += f": {summary['message']}"
    return text
