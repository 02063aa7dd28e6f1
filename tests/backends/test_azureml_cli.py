"""``amlops status``, ``keys`` and ``logs`` follow the manifests to Azure ML, against a real emulator subprocess.

The repo's Workspace names ``backend: azureml`` (credentials by reference, as in
``test_azureml_reconcile``). Every command is ``python -m controller …`` in its own process with the
emulator's env.sh and a temp HOME (HTTPS_PROXY and REQUESTS_CA_BUNDLE act process-wide), run from
the project folder so that ``--path manifests`` reads the repo. The module applies the repo once;
the tests then read and change only keys, so they do not depend on the order they run in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# tests/ is on sys.path (pytest's rootdir insertion): the reconcile tests' repo and emulator harness.
from backends.test_azureml_reconcile import Repo, _doc, emulators

pytestmark = pytest.mark.azureml

SERVICE = "svc-tiny"
TOKEN_SERVICE = "svc-token"


@dataclass
class Project:
    """A folder holding ``manifests/`` (the azureml repo), the CLI's state dir beside it, and the emulator."""

    root: Path
    state_dir: Path
    emulator: Any

    def amlops(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """``python -m controller ARGS --state-dir …`` with the emulator's environment, from the project folder."""
        argv = [*args, "--state-dir", str(self.state_dir)]
        script = (f"import runpy, sys; sys.argv = ['amlops', *{argv!r}]; "
                  "runpy.run_module('controller', run_name='__main__', alter_sys=True)")
        return self.emulator.sdk(script, self.root, timeout=timeout, extra_env={"PYTHONPATH": str(emulators.REPO)})

    def ok(self, *args: str) -> str:
        done = self.amlops(*args)
        assert done.returncode == 0, f"amlops {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}"
        return done.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    emulator = emulators.start_emulator(tmp_path_factory.mktemp("azureml-cli") / "state")
    try:
        root = tmp_path_factory.mktemp("azureml-cli-project")
        repo = Repo(root / "manifests", json.loads((emulator.state_dir / "config.json").read_text()))
        repo.write(f"services/{TOKEN_SERVICE}.yaml", _doc("Webservice", TOKEN_SERVICE, {
            "cluster": "aks-gpu", "models": ["tiny"], "environment": "myenv", "sourceDirectory": "../src",
            "entryScript": "score.py", "replicas": 1, "resources": {"cpu": 0.5, "memoryGb": 1, "gpu": 1},
            "auth": "token", "maxQueueWaitMs": 10000}))
        project = Project(root, tmp_path_factory.mktemp("azureml-cli-state"), emulator)
        applied = project.amlops("apply", "manifests", "--yes", "--no-color", timeout=240)
        assert applied.returncode == 0, f"stdout:\n{applied.stdout[-3000:]}\nstderr:\n{applied.stderr[-6000:]}"
        yield project
    finally:
        emulator.stop()


def _score(uri: str, key: str) -> int:
    """The HTTP status of a scoring request with ``Authorization: Bearer <key>`` (the walk-through's client)."""
    request = urllib.request.Request(uri, data=json.dumps({"data": [[1, 1]]}).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _service_row(project: Project, name: str = SERVICE) -> dict[str, Any]:
    status = json.loads(project.ok("status", "--path", "manifests", "--output", "json"))
    rows = [r for r in status["resources"] if r["kind"] == "Webservice" and r["name"] == name]
    assert len(rows) == 1, status
    return dict(rows[0])


def test_status_reads_the_service_from_the_workspace_the_manifests_name(project: Project) -> None:
    row = _service_row(project)
    assert row["backend"] == "azureml" and row["managed"] is True
    assert row["scoringUri"].endswith(f"/{SERVICE}/score"), row
    assert row["state"] == "Healthy"
    assert ["Ready", True, "Healthy"] in [[c["type"], c["status"], c["reason"]] for c in row["conditions"]]
    # Merged with what the recorder kept of the apply, as for the local backend.
    assert ["Ready", True] in [[c["type"], c["status"]] for c in row["recordedConditions"]], row
    assert row["modelVersions"] and row["modelVersions"][0].startswith("tiny:")


def test_status_without_manifests_shows_only_the_local_backend(project: Project, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "controller", "status", "--output", "json",
                           "--state-dir", str(project.state_dir)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(emulators.REPO)})
    assert done.returncode == 0, done.stderr
    assert all(r["name"] != SERVICE for r in json.loads(done.stdout)["resources"])


def test_the_primary_key_from_azure_ml_is_accepted_by_the_scoring_uri_and_a_wrong_one_is_not(project: Project) -> None:
    uri = _service_row(project)["scoringUri"]
    key = project.ok("keys", SERVICE, "--path", "manifests", "--primary").strip()
    assert key and "\n" not in key
    assert _score(uri, key) == 200
    assert _score(uri, key[:-2] + ("xx" if not key.endswith("xx") else "yy")) == 401

    both = json.loads(project.ok("keys", SERVICE, "--path", "manifests", "--output", "json"))
    assert both["primaryKey"] == key and both["secondaryKey"] not in ("", key)


def test_regenerating_the_primary_key_replaces_it_and_the_old_one_stops_working(project: Project) -> None:
    uri = _service_row(project)["scoringUri"]
    before = json.loads(project.ok("keys", SERVICE, "--path", "manifests", "--output", "json"))
    done = project.amlops("keys", SERVICE, "--path", "manifests", "--regenerate", "primary", "--primary")
    assert done.returncode == 0, done.stderr[-4000:]
    after = done.stdout.strip()
    assert f"regenerated the primary key of {SERVICE}" in done.stderr
    assert after and after != before["primaryKey"]
    assert before["primaryKey"] not in done.stderr  # keys go to stdout only
    assert _score(uri, after) == 200
    assert _score(uri, before["primaryKey"]) == 401
    assert _score(uri, before["secondaryKey"]) == 200  # the other key keeps working
    assert json.loads(project.ok("keys", SERVICE, "--path", "manifests", "--output", "json"))["primaryKey"] == after


def test_a_token_service_answers_with_a_fresh_token_from_azure_ml_and_refuses_others(project: Project) -> None:
    uri = _service_row(project, TOKEN_SERVICE)["scoringUri"]
    token = json.loads(project.ok("token", TOKEN_SERVICE, "--path", "manifests", "--output", "json"))
    assert token["tokenType"] == "Bearer" and token["refreshAfter"] < token["expiryOn"]
    assert _score(uri, token["accessToken"]) == 200
    assert _score(uri, token["accessToken"][:-2] + "xx") == 401
    # The key service's keys do not open the token service, and the token service has no keys.
    assert _score(uri, project.ok("keys", SERVICE, "--path", "manifests", "--primary").strip()) == 401
    keys = project.amlops("keys", TOKEN_SERVICE, "--path", "manifests")
    assert keys.returncode == 1 and "does not use key authentication" in keys.stderr
    plain = project.ok("token", TOKEN_SERVICE, "--path", "manifests")
    assert plain.count("\n") == 1 and _score(uri, plain.strip()) == 200  # the token alone on stdout


def test_logs_come_from_the_service_in_azure_ml(project: Project) -> None:
    text = project.ok("logs", SERVICE, "--path", "manifests", "--tail", "50")
    assert text.strip(), "expected the replica's log"

    follow = project.amlops("logs", SERVICE, "--path", "manifests", "--follow")
    assert follow.returncode == 1 and "--follow works on the local backend only" in follow.stderr
