"""The controller prints a ready-to-paste curl for each deployed service, never the key itself."""

from __future__ import annotations

from pathlib import Path

from controller.runtime.banners import service_banner
from controller.structs.manifests import Kind
from controller.structs.states import ActualResource, ResourceId


def _service(auth: str) -> ActualResource:
    return ActualResource(
        ResourceId(Kind.WEBSERVICE, "aks-dnn-mnist"),
        {"auth": auth},
        details={"scoringUri": "http://127.0.0.1:5001/api/v1/service/aks-dnn-mnist/score", "primaryKey": "s3cret"},
    )


def test_banner_fetches_the_key_at_paste_time(tmp_path: Path) -> None:
    banner = service_banner(_service("key"), tmp_path / "state dir", "amlops", Path("manifests/src/sample-request.json"))
    assert "Service aks-dnn-mnist is ready: http://127.0.0.1:5001/api/v1/service/aks-dnn-mnist/score" in banner
    assert f"keys aks-dnn-mnist --state-dir '{tmp_path}/state dir' --primary)" in banner
    assert "-d @manifests/src/sample-request.json" in banner
    assert "s3cret" not in banner


def test_banner_without_auth_has_no_header(tmp_path: Path) -> None:
    banner = service_banner(_service("none"), tmp_path, "prod")
    assert "Authorization" not in banner
    assert "[...784 floats]" in banner


def test_the_status_page_shows_live_details_and_colours_conditions_by_meaning() -> None:
    from controller.runtime.serving import render_page

    page = render_page({
        "controller": "amlops", "role": "leader", "source": {"url": "/repo", "branch": None, "path": "manifests"},
        "lastReconcile": {"status": "applied", "revision": "abc"},
        "resources": [{
            "kind": "Webservice", "name": "aks-dnn-mnist", "status": "Ready",
            "conditions": [
                {"type": "Ready", "status": True, "reason": "Running", "message": ""},
                {"type": "GpuUnavailable", "status": True, "reason": "NoPhysicalGpu", "message": "runs on CPU"},
                {"type": "Stalled", "status": True, "reason": "Unschedulable", "message": "0/3 nodes"},
            ],
            "details": {"scoringUri": "http://127.0.0.1:1/score", "replicas": "3/3", "modelVersions": ["m:1"]},
        }],
    })
    assert '<span class="c ok" title="">Ready: Running</span>' in page
    assert '<span class="c warn" title="runs on CPU">GpuUnavailable: NoPhysicalGpu</span>' in page
    assert '<span class="c bad" title="0/3 nodes">Stalled: Unschedulable</span>' in page
    assert "<code>http://127.0.0.1:1/score</code><br>replicas 3/3<br>m:1" in page
    assert "branch" not in page  # a watched folder has no branch
