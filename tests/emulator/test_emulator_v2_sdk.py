"""The real azure-ai-ml 1.35 + azure-identity (unpatched) against a real emulator subprocess, with real replicas."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import v2_scripts as scripts
from emulators import V2_ARGS, RunningEmulator, start_emulator

pytestmark = pytest.mark.azureml


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    running = start_emulator(tmp_path_factory.mktemp("emulator-v2") / "state", *V2_ARGS)
    yield running
    running.stop()


def _result(done: object) -> dict[str, object]:
    stdout = getattr(done, "stdout", "")
    # the SDK prints progress dots without a newline, so the marker may sit mid-line
    lines = [line[line.index("RESULT ") + 7:] for line in stdout.splitlines() if "RESULT " in line]
    assert lines, f"no result; stdout:\n{stdout[-3000:]}\nstderr:\n{getattr(done, 'stderr', '')[-6000:]}"
    return dict(json.loads(lines[-1]))


def _workdir(tmp_path: Path, emulator: RunningEmulator) -> Path:
    """A user's folder: score.py (two variants), a broken score.py, a numpy model folder, a conda file."""
    work = tmp_path / "work"
    for folder in ("src", "src2", "broken", "model"):
        (work / folder).mkdir(parents=True)
    (work / "src" / "score.py").write_text(scripts.SCORE)
    (work / "src2" / "score.py").write_text(scripts.SCORE + "\n# the green variant\n")
    (work / "broken" / "score.py").write_text(scripts.BROKEN_SCORE)
    (work / "env.yml").write_text(scripts.CONDA)
    (work / "config.json").write_text((emulator.state_dir / "config.json").read_text())
    np.save(work / "model" / "w.npy", np.array([[1.0], [2.0]]))
    return work


def _delete_endpoint(v2: RunningEmulator, name: str) -> None:
    """Delete an endpoint with a plain ARM call and wait until its replicas are gone."""
    status, _ = v2.arm("DELETE", f"{v2.workspace_id()}/onlineEndpoints/{name}?api-version=2023-04-01-preview")
    assert status in (200, 202, 204)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, _ = v2.arm("GET", f"{v2.workspace_id()}/onlineEndpoints/{name}?api-version=2023-04-01-preview")
        if status == 404:
            return
        time.sleep(0.2)
    raise AssertionError(f"endpoint {name} was not deleted within 60 s")


def test_plain_azure_ai_ml_code_deploys_splits_rekeys_and_deletes(v2: RunningEmulator, tmp_path: Path) -> None:
    v2.reset_counts()
    out = _result(v2.sdk(scripts.WALK_THROUGH, _workdir(tmp_path, v2), timeout=600))

    assert out["compute"] == ["kubernetes", "amlops", "Succeeded"]
    assert out["computes"] == ["k8s"]
    assert out["model"] == ["tiny", "1"] and out["environment"] == ["score-env", "1"]
    assert out["endpoint_state"] == "Succeeded"
    assert out["blue"] == ["Succeeded", 2]
    assert out["traffic"] == {"blue": 100}
    assert str(out["scoring_uri"]).endswith("/api/v1/endpoint/tiny-ep/score")
    assert out["prediction"] == [200, "blue", "[[3.0],[2.0]]"]  # [1,1]·[1,2] = 3, [2,0]·[1,2] = 2
    assert out["no_key"] == 401 and out["secondary_key"] == 200
    # green at 0 %: reachable by header only, while every unpinned request still goes to blue
    assert out["green"] == "Succeeded"
    assert out["green_smoke"] == [200, "green", "[[3.0]]"]
    assert out["while_zero"] == {"blue": 10}
    # 50/50 measured over 200 requests, none failed
    assert out["split_statuses"] == [200] and out["split_bodies"] == ["[[3.0]]"]
    split = dict(out["split"])  # type: ignore[call-overload]
    assert sum(split.values()) == 200 and abs(split["blue"] - 100) <= 6 and abs(split["green"] - 100) <= 6
    assert out["bad_input"] == [500, 500, 500]
    # the metrics route counts what the router answered, per deployment
    metrics, errors = dict(out["metrics"]), dict(out["metrics_5xx"])  # type: ignore[call-overload]
    assert metrics["RequestsPerMinute"]["blue"]["total"] == split["blue"]
    assert metrics["RequestsPerMinute"]["green"]["total"] == split["green"] + 3
    assert metrics["RequestLatency_P99"]["green"]["average"] > 0
    assert errors["RequestsPerMinute"] == {"green": {"timeStamp": errors["RequestsPerMinute"]["green"]["timeStamp"],
                                                     "total": 3.0, "average": 3.0}}
    # keys: regenerating the primary retires the old one at once
    assert out["key_changed"] is True
    assert out["old_key_after_regen"] == 401 and out["new_key_after_regen"] == 200
    assert "==> replica 0 <==" in str(out["logs"]) and '"event":"ready"' in str(out["logs"])
    assert out["deployments"] == ["blue", "green"]
    assert out["after_blue_delete"] == ["green"] and out["after_blue_delete_score"] == [200, "green"]
    assert out["endpoints_after_delete"] == [] and out["after_delete_status"] == 404
    assert out["computes_after_detach"] == []
    assert v2.local_services() == []  # deleting the endpoint stopped every replica

    counts = v2.counts()
    assert counts["PUT arm {WS}/onlineEndpoints/{endpoint}/deployments/{name}"] == 2
    assert counts["PUT arm {WS}/onlineEndpoints/{name}"] == 4  # create + three traffic changes
    assert counts["POST arm {WS}/onlineEndpoints/{name}/regenerateKeys"] == 1
    assert counts["POST arm {WS}/datastores/{name}/listSecrets"] >= 1
    assert counts["PUT blob /{container}/{blob+}"] >= 3  # model file, two code folders, metadata


def test_a_deployment_whose_init_fails_ends_failed_and_never_gets_traffic(v2: RunningEmulator, tmp_path: Path) -> None:
    out = _result(v2.sdk(scripts.FAILING_INIT, _workdir(tmp_path, v2), timeout=600))

    assert "did not become ready" in str(out["bad_create"])
    assert out["bad_state"] == "Failed"
    assert "model file is corrupt" in str(out["bad_logs"])
    status, message = out["traffic_to_bad"]  # type: ignore[misc]
    assert status == 400 and "provisioning state Failed" in message
    assert out["traffic"] == {"good": 100, "bad": 0}  # the SDK fills in 0 for deployments without traffic
    assert out["answers"] == {json.dumps([200, "good", "[[3.0]]"]): 20}
    assert out["bad_by_header"] == 404
    assert v2.local_services() == ["v2-init-ep-good"]  # the failed deployment keeps nothing running
    _delete_endpoint(v2, "init-ep")


def test_a_deployment_asking_more_gpus_than_the_cluster_has_free_fails(v2: RunningEmulator, tmp_path: Path) -> None:
    out = _result(v2.sdk(scripts.GPU_OVERSUBSCRIBED, _workdir(tmp_path, v2), timeout=300))

    assert "Insufficient nvidia.com/gpu" in str(out["create"])
    assert "3 instances × 1 GPU = 3 GPUs" in str(out["create"]) and "2 free" in str(out["create"])
    assert out["state"] == "Failed"
    assert v2.local_services() == []
    _delete_endpoint(v2, "gpu-ep")


def test_the_sdk_survives_throttling_and_server_errors_on_v2_routes(v2: RunningEmulator, tmp_path: Path) -> None:
    v2.reset_counts()
    v2.set_faults([
        {"route": "PUT arm {WS}/onlineEndpoints/{name}", "status": 429, "count": 1, "retryAfter": 1},
        {"route": "GET arm */mfeOperationsStatus/{op}", "status": 500, "count": 1},
        {"route": "GET arm {WS}/onlineEndpoints", "status": 503, "count": 1},
    ])
    try:
        out = _result(v2.sdk(scripts.SURVIVES_FAULTS, _workdir(tmp_path, v2), timeout=300))
    finally:
        v2.set_faults([])

    assert out["state"] == "Succeeded" and out["listed"] == ["fault-ep"]  # listed after one 503
    assert out["token_type"] == "EndpointAuthToken"
    assert out["no_deployment"] == 503 and out["wrong_token"] == 401
    counts = v2.counts()
    assert counts["PUT arm {WS}/onlineEndpoints/{name}"] == 2  # the throttled attempt and its retry
    assert counts["GET arm {WS}/onlineEndpoints"] == 2
    assert counts["GET arm /subscriptions/{sub}/providers/Microsoft.MachineLearningServices/locations/{loc}/"
                  "mfeOperationsStatus/{op}"] >= 2


def test_assets_version_as_the_sdk_expects_and_large_files_upload_in_blocks(v2: RunningEmulator, tmp_path: Path) -> None:
    work = _workdir(tmp_path, v2)
    (work / "bigmodel").mkdir()
    big = np.random.default_rng(7).integers(0, 255, size=65 * 2**20 + 5, dtype=np.uint8).tobytes()
    (work / "bigmodel" / "weights.bin").write_bytes(big)  # over 64 MiB: Put Block + Put Block List
    v2.reset_counts()
    out = _result(v2.sdk(scripts.ASSETS, work, timeout=300))

    # same body: the latest version is kept; a changed body: 409 on the latest, then the next version
    assert out["environment_versions"] == ["1", "1", "2"] and out["environment_latest"] == "img:2"
    # a model's content uploads once (HEAD sees upload_status=completed), but each registration is a version
    assert out["model_versions"] == ["1", "2"] and out["model_paths_equal"] is True
    assert out["default_datastore"] == "workspaceblobstore"
    status, version = v2.arm("GET", f"{v2.workspace_id()}/models/big/versions/1?api-version=2023-08-01-preview")
    assert status == 200 and version["properties"]["flavors"] == {}  # the SDK's _from_rest_object needs an object
    assert out["second_upload"] == "BlobAlreadyExists" and out["blob_content"] == "first"
    counts = v2.counts()
    assert counts["PUT arm {WS}/environments/{name}/versions/{version}"] == 4  # 1, 1 again, 1 → 409, 2
    stored = [p for p in (v2.state_dir / "blobs").rglob("weights.bin")]
    assert len(stored) == 1 and stored[0].read_bytes() == big
