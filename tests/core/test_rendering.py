"""Renderers: a fixed plan rendered as text, Markdown and JSON must match the golden files.

Regenerate after an intended change with ``AMLOPS_UPDATE_GOLDEN=1 pytest tests/core/test_rendering.py``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from controller.core.rendering import render_json, render_markdown, render_text
from controller.structs.manifests import Kind
from controller.structs.plans import Action, Change, FieldDiff, Plan
from controller.structs.states import ResourceId

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def fixed_plan() -> Plan:
    svc = ResourceId(Kind.WEBSERVICE, "aks-dnn-mnist")
    return Plan(
        revision="4f2a9c1d0e7b",
        base_revision="9b8e7d6c5a43",
        changes=(
            Change(ResourceId(Kind.WEBSERVICE, "old-service"), Action.DELETE,
                   reason="manifest removed from manifests/services/old-service.yaml",
                   manifest_file="manifests/services/old-service.yaml"),
            Change(ResourceId(Kind.AKS_CLUSTER, "aks-gpu"), Action.UPDATE,
                   (FieldDiff("spec.agentCount", 3, 4),), reason="manifest changed: spec.agentCount",
                   manifest_file="manifests/clusters/aks-gpu.yaml"),
            Change(ResourceId(Kind.MODEL, "tf-dnn-mnist"), Action.UPDATE, (),
                   reason="content of spec.path changed (sha256:1a2b3c4d5e6f… → sha256:6f5e4d3c2b1a…)",
                   manifest_file="manifests/models/tf-dnn-mnist.yaml"),
            Change(ResourceId(Kind.MODEL, "tf-cnn"), Action.CREATE,
                   (FieldDiff("spec.path", None, "tf-cnn"), FieldDiff("spec.tags", None, {"dataset": "mnist"})),
                   reason="not found in actual state", manifest_file="manifests/models/tf-cnn.yaml"),
            Change(svc, Action.REPLACE,
                   (FieldDiff("spec.cluster", "aks-cpu", "aks-gpu", forces_replace=True), FieldDiff("spec.replicas", 2, 3)),
                   reason="spec.cluster cannot change in place (forces replacement)",
                   manifest_file="manifests/services/aks-dnn-mnist.yaml",
                   depends_on=(ResourceId(Kind.AKS_CLUSTER, "aks-gpu"), ResourceId(Kind.MODEL, "tf-dnn-mnist"))),
            Change(ResourceId(Kind.AKS_CLUSTER, "aks-old"), Action.NOOP, reason="retained (deletionPolicy: Retain)",
                   manifest_file="manifests/clusters/aks-old.yaml"),
        ),
        warnings=("1 resource(s) not declared in Git and not managed by amlops are left alone",),
    )


@pytest.mark.parametrize(
    ("name", "render"),
    [
        ("plan.txt", lambda p: render_text(p, color=False)),
        ("plan-color.txt", lambda p: render_text(p, color=True)),
        ("plan.md", render_markdown),
        ("plan.json", render_json),
    ],
)
def test_rendered_plan_matches_golden_file(name: str, render) -> None:  # type: ignore[no-untyped-def]
    text = render(fixed_plan())
    golden = GOLDEN / name
    if os.environ.get("AMLOPS_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_text_has_terraform_symbols_and_summary() -> None:
    text = render_text(fixed_plan(), color=False)
    assert "- destroy Webservice/old-service" in text
    assert "~ update in place AksCluster/aks-gpu" in text
    assert "-/+ replace Webservice/aks-dnn-mnist" in text
    assert "+ create Model/tf-cnn" in text
    assert "~ spec.agentCount: 3 → 4" in text
    assert '~ spec.cluster: "aks-cpu" → "aks-gpu"  # forces replacement' in text
    assert text.rstrip().endswith("Plan: 1 to add, 2 to change, 1 to replace, 1 to destroy.")
    assert "\x1b[" not in text
    coloured = render_text(fixed_plan(), color=True)
    for colour in ("\x1b[32m", "\x1b[33m", "\x1b[35m", "\x1b[31m"):
        assert colour in coloured


def test_json_round_trips_every_change() -> None:
    data = json.loads(render_json(fixed_plan()))
    assert data["summary"] == {"add": 1, "change": 2, "replace": 1, "destroy": 1}
    assert [c["action"] for c in data["changes"]] == ["delete", "update", "update", "create", "replace", "no-op"]


def test_an_empty_plan_says_no_changes() -> None:
    empty = Plan("abc", ())
    assert "No changes." in render_text(empty)
    assert "**No changes.**" in render_markdown(empty)


def canary_plan() -> Plan:
    from controller.core.rendering import describe_rollout
    from controller.structs.manifests import Rollout

    rollout = Rollout.model_validate({
        "strategy": "canary",
        "steps": [{"weight": 10, "pauseSeconds": 60}, {"weight": 50, "minRequests": 500}, {"weight": 100}],
        "analysis": {"maxErrorRate": 0.01, "maxP99Ms": 80, "maxP99Ratio": 1.5, "minRequests": 200},
        "sampleRequest": {"file": "src/sample-request.json", "compareWithLive": True},
    })
    return Plan(
        revision="7d1e2f3a4b5c",
        changes=(
            Change(ResourceId(Kind.MODEL, "tf-dnn-mnist"), Action.UPDATE, (),
                   reason="content of spec.path changed (sha256:1a2b3c4d5e6f… → sha256:6f5e4d3c2b1a…)",
                   manifest_file="manifests/models/tf-dnn-mnist.yaml"),
            Change(ResourceId(Kind.WEBSERVICE, "aks-dnn-mnist"), Action.UPDATE, (),
                   reason="content of model tf-dnn-mnist changed (sha256:1a2b3c4d5e6f… → sha256:6f5e4d3c2b1a…)",
                   manifest_file="manifests/services/aks-dnn-mnist.yaml", rollout=describe_rollout(rollout),
                   depends_on=(ResourceId(Kind.MODEL, "tf-dnn-mnist"),)),
        ),
    )


@pytest.mark.parametrize(
    ("name", "render"),
    [("plan-canary.txt", lambda p: render_text(p, color=False)), ("plan-canary.md", render_markdown),
     ("plan-canary.json", render_json)],
)
def test_a_canary_change_shows_its_steps_and_checks_as_in_the_golden_file(name: str, render) -> None:  # type: ignore[no-untyped-def]
    text = render(canary_plan())
    golden = GOLDEN / name
    if os.environ.get("AMLOPS_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def _field_names(value: object) -> set[str]:
    """Every key of ours in a JSON document (a diff's before/after values are the user's data)."""
    if isinstance(value, dict):
        return {str(k) for k in value} | {n for k, v in value.items() if k not in ("before", "after") for n in _field_names(v)}
    if isinstance(value, list):
        return {n for v in value for n in _field_names(v)}
    return set()


@pytest.mark.parametrize("plan", [fixed_plan, canary_plan])
def test_plan_json_has_the_shape_of_every_json_document_amlops_prints(plan) -> None:  # type: ignore[no-untyped-def]
    # The same shape as /api/status and status --output json: camelCase keys and a format version.
    data = json.loads(render_json(plan()))
    assert data["formatVersion"] == 1
    assert sorted(n for n in _field_names(data) if not re.fullmatch(r"[a-z][a-zA-Z0-9]*", n)) == []
