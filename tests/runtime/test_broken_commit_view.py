"""A commit whose manifests are invalid, as every reader of status sees it: the page in a real browser,
``/api/status``, ``amlops status --output json``, and the metrics Prometheus scrapes (checked by promtool).

What runs keeps running, so resources stay Ready; but none of them runs the latest revision, and each
reader must say so (``inSync: false``, a ``Synced`` condition with the error, a level gauge to alert on).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from .conftest import Controller, GitRepo, doc, eventually
from .test_running import repo_args, small_repo

CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")
# Maps whose keys are user or backend data, not field names of ours.
FREE_FORM = {"labels", "annotations", "tags", "details", "phases", "durations"}


def _camel_case_keys(value: Any, path: str = "") -> list[str]:
    bad = []
    if isinstance(value, dict):
        for key, item in value.items():
            if not CAMEL.match(str(key)):
                bad.append(f"{path}.{key}")
            if key not in FREE_FORM:
                bad += _camel_case_keys(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            bad += _camel_case_keys(item, f"{path}[{index}]")
    return bad


def _times(value: Any, key: str = "") -> list[Any]:
    """Every value of a ``…At`` key."""
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _times(v, k)]
    if isinstance(value, list):
        return [t for v in value for t in _times(v)]
    return [value] if key.endswith("At") and value is not None else []


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Controller, GitRepo, Path]]:
    tmp_path = tmp_path_factory.mktemp("broken")
    repo = small_repo(tmp_path / "repo")
    controller = Controller(repo_args(repo, tmp_path, "--interval", "1"), tmp_path / "c.log")
    try:
        controller.wait_ready()
        eventually(lambda: (controller.status().get("lastReconcile") or {}).get("status") == "applied", 60, "applied")
        repo.write("manifests/clusters/cpu.yaml", doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 0}))
        repo.commit("scale the cluster to nothing")
        eventually(lambda: (controller.status().get("lastReconcile") or {}).get("status") == "invalid", 60, "invalid")
        eventually(lambda: all(r.get("inSync") is False for r in controller.status()["resources"]), 30, "marked")
        yield controller, repo, tmp_path
    finally:
        controller.kill()


def test_api_status_marks_every_resource_out_of_sync_and_names_the_error(broken: tuple[Controller, GitRepo, Path]) -> None:
    controller, _repo, _tmp = broken
    status = controller.status()
    assert status["formatVersion"] == 1
    cluster = next(r for r in status["resources"] if r["kind"] == "AksCluster")
    assert cluster["inSync"] is False and cluster["status"] == "Ready, out of sync"
    synced = next(c for c in cluster["conditions"] if c["type"] == "Synced")
    assert synced["status"] is False and synced["reason"] == "ValidationFailed"
    assert "spec.agentCount" in synced["message"] and "still running" in synced["message"]
    assert _camel_case_keys(status) == []
    times = _times(status)
    assert times and all(datetime.fromisoformat(str(t)).tzinfo is not None for t in times), times


def test_cli_status_json_has_the_same_shape_and_marking(broken: tuple[Controller, GitRepo, Path]) -> None:
    _controller, _repo, tmp_path = broken
    result = subprocess.run([sys.executable, "-m", "controller", "status", "--output", "json",
                             "--state-dir", str(tmp_path / "st")], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["formatVersion"] == 1 and document["lastStatus"] == "invalid"
    cluster = next(r for r in document["resources"] if r["kind"] == "AksCluster")
    assert cluster["inSync"] is False
    assert any(c["type"] == "Synced" and c["reason"] == "ValidationFailed" for c in cluster["conditions"])
    assert _camel_case_keys(document) == []
    text = subprocess.run([sys.executable, "-m", "controller", "status", "--state-dir", str(tmp_path / "st")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60).stdout
    assert re.search(r"AksCluster/cpu\s+Ready, out of sync", text), text


def test_metrics_carry_level_signals_without_created_series(broken: tuple[Controller, GitRepo, Path]) -> None:
    controller, _repo, _tmp = broken
    code, metrics = controller.get("/metrics")
    assert code == 200
    assert 'amlops_last_reconcile_status{status="invalid"} 1.0' in metrics
    assert 'amlops_last_reconcile_status{status="applied"} 0.0' in metrics
    assert ('amlops_resource_condition{kind="AksCluster",name="cpu",reason="ValidationFailed",status="False",type="Synced"} 1.0'
            in metrics)
    assert ('amlops_resource_condition{kind="AksCluster",name="cpu",reason="",status="True",type="Synced"} 0.0' in metrics)
    assert re.search(r'amlops_resource_condition\{kind="AksCluster",name="cpu",reason="\w+",status="True",type="Ready"\} 1.0',
                     metrics), metrics
    assert "_created" not in metrics


def test_promtool_accepts_the_controller_metrics(broken: tuple[Controller, GitRepo, Path]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make setup installs Debian's prometheus package when root)")
    _code, metrics = broken[0].get("/metrics")
    result = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_status_page_in_a_headless_browser_shows_the_broken_commit(broken: tuple[Controller, GitRepo, Path]) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make setup installs Debian's chromium when root)")
    controller, _repo, tmp_path = broken
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom", controller.base + "/"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    row = next(r for r in re.findall(r"<tr>.*?</tr>", dom, re.DOTALL) if "<td>AksCluster</td>" in r)
    assert '<td class="stale">Ready, out of sync</td>' in row
    # The reason is on the page itself, not only in a tooltip.
    assert re.search(r'<div class="msg">Synced: revision \w+ was not applied \(invalid\); still running \w+: '
                     r"manifests/clusters/cpu.yaml:\d+: AksCluster cpu: spec.agentCount: must be ≥ 1 \(got 0\)</div>", row), row
    assert 'class="s-invalid">invalid</b>' in dom
