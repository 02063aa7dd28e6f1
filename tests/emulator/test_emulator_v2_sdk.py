"""The real azure-ai-ml 1.35 + azure-identity (unpatched) against a real emulator subprocess, with real replicas."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
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
    for folder in ("src", "src2", "src10", "broken", "model"):
        (work / folder).mkdir(parents=True)
    (work / "src" / "score.py").write_text(scripts.SCORE)
    (work / "src2" / "score.py").write_text(scripts.SCORE + "\n# the green variant\n")
    (work / "src10" / "score.py").write_text(scripts.SCORE.replace("(data @ W)", "(data @ W * 10)"))
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
    assert "==> replica 0 <==" in str(out["logs"]) and '"msg":"ready"' in str(out["logs"])
    assert out["deployments"] == ["blue", "green"]
    # the traffic table switches when the endpoint's operation succeeds, not before
    assert out["traffic_switch"] == [200, "100", "InProgress", {"blue": 10, "green": 10}, {"green": 20}]
    assert out["after_blue_delete"] == ["green"] and out["after_blue_delete_score"] == [200, "green"]
    assert out["endpoints_after_delete"] == [] and out["after_delete_status"] == 404
    assert out["computes_after_detach"] == []
    assert v2.local_services() == []  # deleting the endpoint stopped every replica
    cluster = v2.workspace_id().split("/providers/")[0] + "/providers/Microsoft.ContainerService/managedClusters/aks1"
    assert v2.arm("GET", cluster + "?api-version=2024-05-01")[0] == 200  # detaching keeps the AKS cluster

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
    assert "deleted before it finished" in str(out["small"]) and out["deployments"] == ["big"]
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
    assert "quota exceeded in this region" in str(out["doomed"]) and out["doomed_state"] == "Failed"
    counts = v2.counts()
    assert counts["PUT arm {WS}/onlineEndpoints/{name}"] == 3  # fault-ep throttled + its retry, doomed-ep
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


def test_v1_and_v2_objects_live_side_by_side_and_v2_survives_a_restart(tmp_path: Path) -> None:
    first = start_emulator(tmp_path / "state", *V2_ARGS)
    second: RunningEmulator | None = None
    try:
        work = _workdir(tmp_path, first)
        v1 = _result(first.sdk(scripts.V1_SERVICE, work, timeout=300))
        assert v1["state"] == "Healthy"
        out = _result(first.sdk(scripts.V2_BESIDE_V1, work, {"V1_KEY": str(v1["key"]), "V1_URI": str(v1["uri"])}, 300))
        # one workspace holds the v1 AKS compute and service beside the v2 Kubernetes compute and endpoint
        # (azure-ai-ml lists a v1 AKS compute as "*** unsupported compute type ***", as it does on Azure)
        assert [c[0] for c in out["computes"]] == ["aks-v1", "k8s"] and out["computes"][1][1] == "kubernetes"  # type: ignore[index]
        # the v1-registered model is a v2 model version too (the deployment below serves it); v2 numbers on
        assert out["v1_model_in_v2"] == ["tiny", "1"] and out["v2_model_version"] == "2"
        assert out["model_containers"] == ["tiny"]
        assert out["set_key"] == 202 and out["listed_key_is_v1"] is True
        assert out["v2"] == [200, "blue", "[[3.0],[2.0]]"] and out["v1"] == "[[3.0],[2.0]]"  # same key, same answer
        assert first.local_services() == ["svc-v1", "v2-beside-ep-blue"]
        # azureml-core still reads its own objects with the v2 ones beside them
        listed = _result(first.sdk(scripts.V1_LISTS, work, timeout=300))
        assert listed["models"] == ["tiny:1"] and listed["services"] == ["svc-v1"]
        assert "v1env" in listed["environments"]  # type: ignore[operator]
        assert [c[0] for c in listed["computes"]] == ["aks-v1", "k8s"]  # type: ignore[union-attr]
        first.stop(keep_services=True)

        # a restarted emulator re-adopts the replicas and routes the same URI with the same key again
        second = start_emulator(tmp_path / "state", *V2_ARGS)
        uri = str(out["uri"]).replace(f":{first.port}/", f":{second.port}/")
        answer = requests.post(uri, json={"data": [[1, 1]]}, timeout=30, proxies={"http": ""},
                               headers={"Authorization": f"Bearer {v1['key']}"})
        assert (answer.status_code, answer.text, answer.headers["azureml-model-deployment"]) == (200, "[[3.0]]", "blue")
    finally:
        (second or first).stop()


def test_updating_a_deployment_in_place_keeps_answering(v2: RunningEmulator, tmp_path: Path) -> None:
    out = _result(v2.sdk(scripts.UPDATE_IN_PLACE, _workdir(tmp_path, v2), timeout=300))

    assert out["updated"] == ["Succeeded", 2]
    seen = dict(out["seen"])  # type: ignore[call-overload]
    assert set(seen) == {"200 [[3.0]]", "200 [[30.0]]"}  # every request answered, by the old code or the new
    assert out["last"] == ["200 [[30.0]]"]  # once the update has succeeded, only the new code answers


def test_a_managed_endpoint_with_entra_tokens_accepts_only_tokens_for_azure_ml(v2: RunningEmulator, tmp_path: Path) -> None:
    out = _result(v2.sdk(scripts.MANAGED, _workdir(tmp_path, v2), timeout=300))

    assert out["kind"] == ["ManagedOnlineEndpoint", "aad_token"]
    assert out["entra"] == [200, "blue", "[[3.0]]"]
    assert out["arm_token"] == 401  # a token for ARM is not a token for the endpoint
