"""The controller prints a ready-to-paste curl for each deployed service, never the key itself."""

from __future__ import annotations

from pathlib import Path

from controller.runtime.running import service_banner
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
