"""The HTTP endpoints over loopback, with a recording wake-up in place of the loop."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from controller.runtime.metrics import ControllerMetrics
from controller.runtime.serving import Endpoints, HttpServer, parse_listen
from controller.runtime.statuses import StatusBoard

from .conftest import http
from .test_webhooks import SECRET, github, push

API_TOKEN = "api-token-123"


class Served:
    def __init__(self) -> None:
        self.woken: list[str] = []
        self.status = StatusBoard(
            "amlops", {"url": "/repo", "branch": "main", "path": "."}, detect_only=False
        )
        self.metrics = ControllerMetrics()
        endpoints = Endpoints(
            self.status, self.metrics, self.woken.append, lambda: SECRET, lambda: API_TOKEN, lambda: "main"
        )
        self.server = HttpServer("127.0.0.1:0", endpoints)
        self.base = "http://" + self.server.address


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    s.server.start()
    yield s
    s.server.close()


def test_healthz_answers_while_readyz_waits_for_the_first_reconcile(served: Served) -> None:
    assert http("GET", served.base + "/healthz") == (200, "ok\n")
    assert http("GET", served.base + "/readyz")[0] == 503
    served.status.update(role="leader", lastReconcile={"status": "applied"})
    served.status.update_source(reachable=True)
    assert http("GET", served.base + "/readyz") == (200, "ready\n")


def test_readyz_on_a_standby_says_standby(served: Served) -> None:
    served.status.update(role="standby")
    assert http("GET", served.base + "/readyz") == (503, "standby\n")


def test_readyz_fails_while_the_source_is_unreachable(served: Served) -> None:
    served.status.update(role="leader", lastReconcile={"status": "failed"})
    served.status.update_source(reachable=False, lastFetchError="git fetch failed: no route")
    code, body = http("GET", served.base + "/readyz")
    assert code == 503 and "no route" in body


def test_a_signed_github_push_triggers_a_sync(served: Served) -> None:
    body = push("main")
    code, text = http("POST", served.base + "/hooks/git", body, github(body))
    assert code == 202 and json.loads(text)["synced"] is True
    assert served.woken == ["webhook:github"]


def test_a_badly_signed_push_is_401_and_syncs_nothing(served: Served) -> None:
    body = push("main")
    code, _ = http("POST", served.base + "/hooks/git", body, github(body, secret="forged"))
    assert code == 401
    assert served.woken == []
    assert (
        'amlops_webhook_requests_total{code="401",provider="github"} 1.0'
        in http("GET", served.base + "/metrics")[1]
    )


def test_a_gitlab_push_with_its_token_triggers_a_sync(served: Served) -> None:
    headers = {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Push Hook"}
    assert http("POST", served.base + "/hooks/git", push("main"), headers)[0] == 202
    assert served.woken == ["webhook:gitlab"]


def test_a_push_to_another_branch_is_202_and_ignored(served: Served) -> None:
    body = push("feature")
    code, text = http("POST", served.base + "/hooks/git", body, github(body))
    assert code == 202 and json.loads(text)["synced"] is False
    assert served.woken == []


def test_api_sync_needs_the_bearer_token(served: Served) -> None:
    assert http("POST", served.base + "/api/sync", b"")[0] == 401
    assert http("POST", served.base + "/api/sync", b"", {"Authorization": "Bearer wrong"})[0] == 401
    assert served.woken == []
    assert http("POST", served.base + "/api/sync", b"", {"Authorization": f"Bearer {API_TOKEN}"})[0] == 202
    assert served.woken == ["api"]


def test_status_json_and_page_show_resources_and_errors(served: Served) -> None:
    served.status.update(
        lastReconcile={"status": "invalid", "revision": "abc", "errors": ["services/svc.yaml:7: <b>bad</b>"]},
        resources=[
            {
                "kind": "Webservice",
                "name": "svc",
                "conditions": [{"type": "Ready", "status": True, "reason": "Available", "message": ""}],
            }
        ],
    )
    doc = json.loads(http("GET", served.base + "/api/status")[1])
    assert doc["lastReconcile"]["errors"] == ["services/svc.yaml:7: <b>bad</b>"]
    code, page = http("GET", served.base + "/")
    assert code == 200
    assert "services/svc.yaml:7: &lt;b&gt;bad&lt;/b&gt;" in page  # escaped, never raw HTML from a repo
    assert "Ready: Available" in page and 'http-equiv="refresh"' in page


def test_metrics_come_from_the_controllers_own_registry(served: Served) -> None:
    served.metrics.applied("abc123", 1.0)
    served.metrics.fetch_errors.inc()
    text = http("GET", served.base + "/metrics")[1]
    assert 'amlops_last_applied_revision_info{revision="abc123"} 1.0' in text
    assert "amlops_source_fetch_errors_total 1.0" in text
    assert "python_gc_objects_collected_total" not in text  # not the global default registry


def test_unknown_paths_are_404(served: Served) -> None:
    assert http("GET", served.base + "/nope")[0] == 404
    assert http("POST", served.base + "/nope", b"")[0] == 404


def test_listen_addresses_parse() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9") == ("::1", 9)
    with pytest.raises(ValueError):
        parse_listen("8080")


def test_a_rollout_under_way_shows_on_the_page_and_in_api_status(served: Served) -> None:
    from controller.core.reporting import resource_details
    from controller.structs.manifests import Kind
    from controller.structs.states import ActualResource, ResourceId

    summary = {"strategy": "canary", "phase": "stepping", "step": 2, "weight": 50, "weights": [10, 50, 100],
               "message": "step 2 (50 %): checks pass over 40 requests; pausing 3/30 s", "passed": []}
    live = ActualResource(ResourceId(Kind.WEBSERVICE, "svc"), {}, details={"scoringUri": "http://x", "rollout": summary})
    served.status.update(resources=[{"kind": "Webservice", "name": "svc", "conditions": [],
                                     "details": resource_details(live)}])
    doc = json.loads(http("GET", served.base + "/api/status")[1])
    assert doc["resources"][0]["details"]["rollout"]["weight"] == 50
    page = http("GET", served.base + "/")[1]
    assert "rollout: canary step 2 of 3, 50 % to the new version: step 2 (50 %): checks pass" in page
