"""Moving a service from an Azure ML v1 web service to a v2 online endpoint by changing one field.

A real emulator, the real azureml-core (v1 phase) and azure-ai-ml + azure-identity (v2 phase), real
scoring replicas on both sides. Two looping clients call the service throughout with the v1 key;
they follow the published scoring URI once the v2 endpoint answers, and must see no failure.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.azureml

_spec = importlib.util.spec_from_file_location("test_azureml_v2_shared", Path(__file__).parent / "test_azureml_v2.py")
assert _spec is not None and _spec.loader is not None
v2 = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("test_azureml_v2_shared", v2)
_spec.loader.exec_module(v2)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    running = v2.start(tmp_path_factory.mktemp("azureml-migration"))
    yield running
    running.stop()


def test_switching_a_service_from_v1_to_v2_keeps_it_answering_with_the_same_key(
        emulator: Any, tmp_path: Path) -> None:
    config = json.loads((emulator.state_dir / "config.json").read_text())
    repo = v2.Repo(tmp_path / "repo", config, api="v1")
    reconcile = v2.Reconciler(emulator, tmp_path)
    first = v2._applied(reconcile(repo, serviceInfo="svc-tiny"))
    old = first["serviceInfo"]["v1"]

    # The manifests move to v2: the workspace's api, and the cluster attached (v2 cannot create AKS).
    repo.workspace("v2")
    repo.cluster(attach=True)
    repo.service(annotations={"amlops.dev/keep-v1": "true"})
    planned = reconcile(repo, planOnly=True)
    assert any(c["id"] == "Webservice/svc-tiny" for c in planned["plan"]), json.dumps(planned)[:4000]
    (migration,) = [c for c in planned["plan"] if c["id"] == "Webservice/svc-tiny"]
    assert migration["reason"].startswith("migrate: v1 AKS web service → v2 online endpoint"), migration
    carried = {d[0]: d[2] for d in migration["diffs"]}
    assert carried["spec.api"] == "v2"
    assert carried["v2.request_settings.request_timeout_ms"] == 60000
    assert carried["v2.liveness_probe.initial_delay"] == 310 and carried["v2.liveness_probe.failure_threshold"] == 3

    with v2.Clients(old["uri"], old["key"]) as clients:
        moved = v2._applied(reconcile(repo, serviceInfo="svc-tiny", readBack=True))
        new = moved["serviceInfo"]["v2"]
        assert new["key"] == old["key"] and new["uri"] != old["uri"]
        assert moved["serviceInfo"]["v1"]["uri"] == old["uri"]  # kept while the annotation asks
        assert moved["actual"]["Webservice/svc-tiny"]["details"]["scoringUri"] == new["uri"]  # published
        clients.uri = new["uri"]  # the clients follow the published URI, same key
        # Published where people look: `amlops status` (the same details /api/status serves) and the history.
        status = json.loads(amlops(emulator, repo, tmp_path, "status", "--output", "json"))
        assert v2._scoring_uri(status) == new["uri"], status
        history = json.loads(amlops(emulator, repo, tmp_path, "history", "--output", "json", "--limit", "1"))
        (noted,) = [c for c in history[0]["changes"] if c["name"] == "svc-tiny"]
        assert noted["status"] == "succeeded" and new["uri"] in noted["message"] and old["uri"] in noted["message"]
        assert "keeps running while amlops.dev/keep-v1 asks" in noted["message"], noted
        text = amlops(emulator, repo, tmp_path, "history", "--limit", "1")
        assert f"Webservice/svc-tiny: migrated to Azure ML v2: scoring URI {new['uri']}" in text, text
        # The annotation removed: the v1 service goes, v2 keeps answering.
        repo.service()
        gone = v2._applied(reconcile(repo, serviceInfo="svc-tiny"))
    assert "v1" not in gone["serviceInfo"] and "v2" in gone["serviceInfo"], gone["serviceInfo"]
    for name, results in clients.results.items():
        assert results and all(r[0] == 200 for r in results), (name, [r for r in results if r[0] != 200][:5])
        assert {r[1] for r in results} == {"[[3.0]]"}, (name, {r[1] for r in results})


def amlops(emulator: Any, repo: Any, workdir: Path, *args: str) -> str:
    """``amlops ARGS`` in the emulator's environment, on the reconciler's state dir and the repo's manifests."""
    argv = [*args, "--state-dir", str(workdir / "amlops-state")]
    if args[0] != "history":
        argv += ["--path", str(repo.root)]
    script = (f"import runpy, sys; sys.argv = ['amlops', *{argv!r}]; "
              "runpy.run_module('controller', run_name='__main__', alter_sys=True)")
    done = emulator.sdk(script, workdir, timeout=240, extra_env={"PYTHONPATH": str(v2.emulators.REPO)})
    assert done.returncode == 0, f"amlops {args}: {done.returncode}\n{done.stderr[-3000:]}"
    return str(done.stdout)


def test_a_migration_whose_v2_answer_differs_leaves_v1_serving_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "emu").mkdir()
    emulator = v2.start(tmp_path / "emu")
    try:
        config = json.loads((emulator.state_dir / "config.json").read_text())
        repo = v2.Repo(tmp_path / "repo", config, api="v1")
        reconcile = v2.Reconciler(emulator, tmp_path)
        old = v2._applied(reconcile(repo, serviceInfo="svc-tiny"))["serviceInfo"]["v1"]
        repo.workspace("v2")
        repo.cluster(attach=True)
        # The v2 code answers differently from the v1 service: the check against v1 must refuse it.
        repo.write("src/score.py", v2.SCORE.replace("@ W).tolist()", "@ W * 10).tolist()"))
        out = reconcile(repo, serviceInfo="svc-tiny")
        assert out["status"] == "failed", out
        (change,) = [c for c in out["changes"] if c["id"] == "Webservice/svc-tiny"]
        assert "the v1 service keeps serving" in change["error"] and "SampleMismatch" not in change["error"]
        assert "not the v1 service's answer" in change["error"], change["error"]
        info = out["serviceInfo"]
        assert info["v1"] == old and "v2" not in info, info  # the v2 endpoint was deleted again
        import requests

        resp = requests.post(old["uri"], data=json.dumps({"data": [[1, 1]]}), timeout=30,
                             headers={"Content-Type": "application/json", "Authorization": "Bearer " + old["key"]})
        assert resp.status_code == 200 and resp.json() == [[3.0]]
    finally:
        emulator.stop()
