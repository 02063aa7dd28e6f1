"""Notifications end to end: a real ``amlops run`` following a real Git repo reports each revision to
loopback receivers that check every provider's documented request shape, headers and signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import Controller, GitRepo, _amlops_run_argv, doc, eventually
from .receivers import Received, closed_port, receiver, silent_port

GH_TOKEN = "ghp-token-0123456789"
GL_TOKEN = "glpat-token-abcdef"
ADO_PAT = "ado-pat-9876543210"
SLACK_PATH = "/slack/services/T000/B000/slack-secret-part"
HOOK_SECRET = "hook-hmac-secret-42"

Start = Callable[..., Controller]


def small_repo(root: Path) -> GitRepo:
    repo = GitRepo(root)
    repo.write("manifests/workspace.yaml", doc("Workspace", "ws", {"backend": "local"}))
    repo.write("manifests/cluster.yaml", doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 1}))
    repo.commit("initial")
    return repo


def config(base: str, dead: str, hung: str, secrets: Path) -> str:
    (secrets / "gitlab-token").write_text(GL_TOKEN + "\n")
    receivers: list[dict[str, Any]] = [
        {"name": "github", "type": "github", "baseUrl": f"{base}/github", "repository": "acme/ml-prod",
         "token": {"fromEnv": "T_GH_TOKEN"}, "context": "amlops/prod"},
        {"name": "gitlab", "type": "gitlab", "baseUrl": f"{base}/gitlab/api/v4", "project": "acme/ml-prod",
         "token": {"fromFile": str(secrets / "gitlab-token")}},
        {"name": "ado", "type": "azureDevOps", "baseUrl": f"{base}/ado", "organization": "acme", "project": "ml",
         "repository": "ml-prod", "token": {"fromEnv": "T_ADO_PAT"}},
        {"name": "slack", "type": "slack", "url": {"fromEnv": "T_SLACK_URL"}},
        {"name": "slack-errors", "type": "slack", "url": {"fromEnv": "T_SLACK_ERRORS_URL"}, "severity": "error"},
        {"name": "teams", "type": "teams", "url": {"fromEnv": "T_TEAMS_URL"}},
        {"name": "hook", "type": "webhook", "url": f"{base}/hook", "secret": {"fromEnv": "T_HOOK_SECRET"},
         "events": ["applied", "invalid", "failed"]},
        {"name": "dead", "type": "webhook", "url": f"{dead}/hook", "secret": {"fromEnv": "T_HOOK_SECRET"},
         "retry": {"attempts": 2, "backoffSeconds": 0.1}},
        {"name": "hung", "type": "webhook", "url": f"{hung}/hook", "secret": {"fromEnv": "T_HOOK_SECRET"},
         "timeoutSeconds": 60, "retry": {"attempts": 1}},
    ]
    return json.dumps({"notifications": {"receivers": receivers}}, indent=2)


def env_for(base: str) -> dict[str, str]:
    return {
        "T_GH_TOKEN": GH_TOKEN,
        "T_ADO_PAT": ADO_PAT,
        "T_SLACK_URL": f"{base}{SLACK_PATH}",
        "T_SLACK_ERRORS_URL": f"{base}/slack-errors/hook",
        "T_TEAMS_URL": f"{base}/teams/webhook",
        "T_HOOK_SECRET": HOOK_SECRET,
    }


def states(requests: list[Received], sha: str, key: str = "state") -> list[str]:
    return [r.json()[key] for r in requests if sha in r.path]


def notification(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in status["notifications"] if n["name"] == name)


def test_each_revision_is_reported_to_every_provider_in_its_documented_shape_and_a_dead_receiver_blocks_nothing(
    tmp_path: Path, controllers: Start
) -> None:
    repo = small_repo(tmp_path / "repo")
    first = repo.head()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    with receiver() as rx, silent_port() as hung:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(config(rx.url, closed_port(), hung.url, secrets))
        c = controllers(
            ["--repo", str(repo.root), "--path", "manifests", "--state-dir", str(tmp_path / "st"),
             "--interval", "1", "--config", str(cfg)],
            tmp_path / "controller.log", env=env_for(rx.url),
        )
        c.wait_ready(timeout=120)
        eventually(lambda: states(rx.under("/github/"), first) == ["pending", "success"], 60, "GitHub pending, success")

        # GitHub: POST /repos/{owner}/{repo}/statuses/{sha}, Bearer token, the API's media type and version.
        gh = rx.under("/github/")
        assert [r.path for r in gh] == [f"/github/repos/acme/ml-prod/statuses/{first}"] * 2
        assert gh[0].header("Authorization") == f"Bearer {GH_TOKEN}"
        assert gh[0].header("Accept") == "application/vnd.github+json"
        assert gh[0].header("X-GitHub-Api-Version") == "2022-11-28"
        assert gh[0].header("Content-Type") == "application/json"
        assert (gh[0].header("User-Agent") or "").startswith("amlops/")
        body = gh[1].json()
        assert set(body) == {"state", "target_url", "description", "context"}
        assert body["context"] == "amlops/prod" and body["target_url"] == c.base + "/"
        assert body["description"].startswith("applied") and len(body["description"]) <= 140

        # GitLab: POST /projects/{url-encoded id}/statuses/{sha}, PRIVATE-TOKEN; running, then success.
        eventually(lambda: states(rx.under("/gitlab/"), first) == ["running", "success"], 30, "GitLab statuses")
        gl = rx.under("/gitlab/")
        assert gl[0].path == f"/gitlab/api/v4/projects/acme%2Fml-prod/statuses/{first}"
        assert gl[0].header("PRIVATE-TOKEN") == GL_TOKEN and gl[0].header("Authorization") is None
        assert set(gl[1].json()) == {"state", "name", "target_url", "description"} and gl[1].json()["name"] == "amlops"

        # Azure DevOps: the commit statuses route with api-version 7.1, Basic auth with the PAT as password.
        eventually(lambda: states(rx.under("/ado/"), first) == ["pending", "succeeded"], 30, "Azure DevOps statuses")
        ado = rx.under("/ado/")
        assert ado[0].path == f"/ado/acme/ml/_apis/git/repositories/ml-prod/commits/{first}/statuses?api-version=7.1"
        assert ado[0].header("Authorization") == "Basic " + base64.b64encode(f":{ADO_PAT}".encode()).decode()
        assert ado[1].json()["context"] == {"name": "amlops", "genre": "amlops"}
        assert ado[1].json()["targetUrl"] == c.base + "/"

        # Slack: text plus blocks; Teams: an Adaptive Card inside a message.
        eventually(lambda: rx.under(SLACK_PATH), 30, "a Slack message")
        slack = rx.under(SLACK_PATH)[0].json()
        assert first[:12] in slack["text"] and "applied" in slack["text"]
        assert [b["type"] for b in slack["blocks"]] == ["section", "context"]
        assert slack["blocks"][0]["text"]["type"] == "mrkdwn"
        eventually(lambda: rx.under("/teams/"), 30, "a Teams message")
        teams = rx.under("/teams/")[0].json()
        assert teams["type"] == "message"
        card = teams["attachments"][0]
        assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
        assert card["content"]["type"] == "AdaptiveCard" and card["content"]["version"] == "1.4"
        assert card["content"]["actions"][0] == {"type": "Action.OpenUrl", "title": "Status page", "url": c.base + "/"}

        # The generic webhook: only the events it asked for, signed over timestamp + raw body.
        eventually(lambda: rx.under("/hook"), 30, "webhook delivery")
        hook = rx.under("/hook")[0]
        stamp = hook.header("X-Amlops-Timestamp") or ""
        expected = hmac.new(HOOK_SECRET.encode(), stamp.encode() + b"." + hook.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(hook.header("X-Amlops-Signature") or "", f"sha256={expected}")
        assert abs(time.time() - int(stamp)) < 300
        event = hook.json()
        assert event["event"] == "applied" == hook.header("X-Amlops-Event")
        assert event["revision"] == first and event["deliveryId"] == hook.header("X-Amlops-Delivery")
        assert event["time"].endswith("Z") and event["statusUrl"] == c.base + "/"
        assert rx.under("/slack-errors/") == []  # severity error: nothing to say about a success

        # An invalid commit: failure everywhere, with the file and line in the description.
        repo.write("manifests/cluster.yaml", doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 0}))
        broken = repo.commit("agentCount 0")
        eventually(lambda: states(rx.under("/github/"), broken) == ["pending", "failure"], 60, "GitHub failure")
        assert rx.under("/github/")[-1].json()["description"].startswith("invalid: manifests/cluster.yaml:")
        eventually(lambda: states(rx.under("/gitlab/"), broken) == ["running", "failed"], 30, "GitLab failed")
        eventually(lambda: states(rx.under("/ado/"), broken) == ["pending", "failed"], 30, "Azure DevOps failed")
        eventually(lambda: len(rx.under("/slack-errors/")) == 1, 30, "the error-only Slack receiver")
        assert "invalid" in rx.under("/slack-errors/")[0].json()["text"]

        # The dead receiver is a condition, not a stuck loop: a fix is applied while the hung one still hangs.
        repo.write("manifests/cluster.yaml", doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 2}))
        fixed = repo.commit("agentCount 2")
        eventually(lambda: c.status()["lastAppliedRevision"] == fixed, 60, "the fix applied")
        eventually(lambda: states(rx.under("/github/"), fixed) == ["pending", "success"], 30, "GitHub success of the fix")
        status = c.status()
        dead = notification(status, "dead")["conditions"][0]
        assert dead["type"] == "Ready" and dead["status"] is False and dead["reason"] == "DeliveryFailed"
        assert "after 2 attempt(s)" in dead["message"]
        hung_state = notification(status, "hung")
        assert hung_state["delivered"] == 0 and hung_state["queued"] >= 1  # still waiting on its first request
        assert notification(status, "github")["conditions"][0]["status"] is True
        before = status["reconciles"]
        eventually(lambda: c.status()["reconciles"] > before + 1, 30, "more reconciles")
        metrics = c.get("/metrics")[1]
        assert 'amlops_notification_receiver_ready{receiver="dead",type="webhook"} 0.0' in metrics
        assert 'amlops_notification_receiver_ready{receiver="github",type="github"} 1.0' in metrics
        assert 'amlops_notifications_total{outcome="failed",receiver="dead"}' in metrics
        assert "DeliveryFailed" in c.get("/")[1]

        # Re-reconciling an unchanged revision says nothing new; chat rooms heard outcomes only.
        assert len(states(rx.under("/github/"), fixed)) == 2
        assert [first[:12] in r.json()["text"] for r in rx.under(SLACK_PATH)].count(True) == 1

        # A commit that would delete all the controller owns is held: the commit stays pending, chat hears why.
        repo.write("manifests/cluster.yaml", doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 2,
                                                                     "deletionPolicy": "Delete"}))
        deletable = repo.commit("the cluster may be deleted")
        eventually(lambda: c.status()["lastAppliedRevision"] == deletable, 60, "the deletion policy applied")
        (repo.root / "manifests/cluster.yaml").unlink()
        emptied = repo.commit("remove the cluster")
        eventually(lambda: states(rx.under("/github/"), emptied) == ["pending", "pending"], 60, "GitHub pending, then held")
        assert "would delete 1 of 1" in rx.under("/github/")[-1].json()["description"]
        eventually(lambda: any(emptied[:12] in r.json()["text"] and "held" in r.json()["text"]
                               for r in rx.under(SLACK_PATH)), 30, "Slack told it is held")
        hung.close()  # its connection is reset: the hung delivery ends, and the controller stops at once
        eventually(lambda: notification(c.status(), "hung")["failed"] >= 1, 30, "the hung delivery given up")
        assert c.stop() == 0
        log = c.log()
        for secret in (GH_TOKEN, GL_TOKEN, ADO_PAT, HOOK_SECRET, "slack-secret-part"):
            assert secret not in log
        assert "notification.failed" in log


def test_a_token_written_inline_is_refused_with_file_line_and_field(tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "interval: 5\n"
        "notifications:\n"
        "  receivers:\n"
        "    - name: github\n"
        "      type: github\n"
        "      repository: acme/ml-prod\n"
        "      token: ghp-inline-secret\n"
    )
    done = subprocess.run(
        [*_amlops_run_argv(), "--repo", str(repo.root), "--path", "manifests", "--state-dir", str(tmp_path / "st"),
         "--config", str(cfg), "--once", "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 64  # EX_USAGE: a bad --config is a usage error (2 means "changes")
    assert (f"{cfg}:7: notifications.receivers[0].token: must be a reference, {{fromEnv: NAME}} or {{fromFile: PATH}}, "
            "never the value itself") in done.stderr
    assert "ghp-inline-secret" not in done.stderr


def test_a_missing_token_variable_is_refused_by_name(tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps({"notifications": {"receivers": [
        {"name": "gl", "type": "gitlab", "project": "1", "token": {"fromEnv": "T_NOT_SET_ANYWHERE"}}]}}))
    done = subprocess.run(
        [*_amlops_run_argv(), "--repo", str(repo.root), "--path", "manifests", "--state-dir", str(tmp_path / "st"),
         "--config", str(cfg), "--once", "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 64
    assert "receiver gl: token: environment variable T_NOT_SET_ANYWHERE is not set" in done.stderr


# --- one receiver's delivery, in process: real HTTP on loopback, the real worker threads ------------

def _notifier(receiver_spec: dict[str, Any], credentials: dict[str, str]) -> tuple[Any, list[list[dict[str, Any]]]]:
    from prometheus_client import CollectorRegistry

    from controller.runtime.notifying import Notifier
    from controller.structs.notifications import Credentials, Notifications

    seen: list[list[dict[str, Any]]] = []
    notifier = Notifier("amlops", "https://example.com/repo.git", "manifests", CollectorRegistry(), seen.append)
    settings = Notifications.model_validate({"receivers": [receiver_spec]})
    notifier.configure(settings, {receiver_spec["name"]: Credentials(**credentials)}, "http://status.example/")
    return notifier, seen


def _sha(n: int) -> str:
    return hashlib.sha1(str(n).encode()).hexdigest()


def _github(url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "gh", "type": "github", "baseUrl": url, "repository": "acme/ml", "token": {"fromEnv": "X"}, **extra}


def test_transient_answers_are_retried_with_backoff_until_delivered() -> None:
    answers = iter([(503, {}, b"busy"), (429, {"Retry-After": "0"}, b"slow down"), (201, {}, b"{}")])
    with receiver(lambda r: next(answers)) as rx:
        notifier, seen = _notifier(_github(rx.url, retry={"attempts": 5, "backoffSeconds": 0.05}), {"token": GH_TOKEN})
        notifier.started(_sha(1))
        eventually(lambda: seen and seen[-1][0]["delivered"] == 1, 20, "delivered")
        notifier.close(5)
    assert len(rx.requests) == 3
    assert {r.path for r in rx.requests} == {f"/repos/acme/ml/statuses/{_sha(1)}"}
    health = seen[-1][0]
    assert health["retries"] == 2 and health["failed"] == 0
    assert health["conditions"][0] == {"type": "Ready", "status": True, "reason": "Delivered",
                                       "message": f"pending of {_sha(1)[:12]}: HTTP 201"}


def test_a_rejected_token_is_not_retried_and_never_shown() -> None:
    with receiver(lambda r: (401, {}, f"bad credentials {r.header('Authorization')}".encode())) as rx:
        notifier, seen = _notifier(_github(rx.url, retry={"attempts": 5, "backoffSeconds": 0.05}), {"token": GH_TOKEN})
        notifier.started(_sha(2))
        eventually(lambda: seen and seen[-1][0]["failed"] == 1, 20, "failed")
        notifier.close(5)
    assert len(rx.requests) == 1
    condition = seen[-1][0]["conditions"][0]
    assert condition["status"] is False and condition["reason"] == "DeliveryFailed"
    assert "HTTP 401: bad credentials Bearer ***" in condition["message"] and GH_TOKEN not in condition["message"]


def test_a_redirect_is_not_followed_so_credentials_stay_with_the_receiver() -> None:
    with receiver() as elsewhere, receiver(lambda r: (302, {"Location": elsewhere.url + "/x"}, b"")) as rx:
        notifier, seen = _notifier(_github(rx.url, retry={"attempts": 1}), {"token": GH_TOKEN})
        notifier.started(_sha(3))
        eventually(lambda: seen and seen[-1][0]["failed"] == 1, 20, "failed")
        notifier.close(5)
    assert len(rx.requests) == 1 and elsewhere.requests == []
    assert "HTTP 302" in seen[-1][0]["conditions"][0]["message"]


def test_a_rate_limited_receiver_queues_the_rest() -> None:
    with receiver() as rx:
        notifier, seen = _notifier(_github(rx.url, rateLimit={"perMinute": 1}), {"token": GH_TOKEN})
        for n in range(3):
            notifier.started(_sha(10 + n))
        eventually(lambda: seen and seen[-1][0]["delivered"] == 1, 20, "the first delivered")
        time.sleep(0.5)  # the next token is a minute away: nothing else may go out meanwhile
        notifier.publish()
        assert len(rx.requests) == 1 and seen[-1][0]["queued"] == 2
        notifier.close(0.2)


def test_a_rollout_rolled_back_is_reported_as_rolled_back_and_other_failures_as_failed() -> None:
    from datetime import UTC, datetime

    from controller.structs.manifests import Kind
    from controller.structs.plans import Action
    from controller.structs.results import ChangeOutcome, ChangeStatus, ReconcileOutcome, ReconcileStatus
    from controller.structs.states import ResourceId

    def failed(revision: str, *, rolled_back: bool) -> ReconcileOutcome:
        now = datetime.now(UTC)
        change = ChangeOutcome(ResourceId(Kind.WEBSERVICE, "svc"), Action.UPDATE, ChangeStatus.FAILED, 1, 0.1,
                               "analysis failed at step 1 (10 %): error rate 40 %", "AnalysisFailed", rolled_back=rolled_back)
        return ReconcileOutcome(revision, ReconcileStatus.FAILED, now, now, changes=(change,))

    with receiver() as rx:
        notifier, _seen = _notifier(_github(rx.url), {"token": GH_TOKEN})
        hook_notifier, _hook_seen = _notifier({"name": "hook", "type": "webhook", "url": f"{rx.url}/hook",
                                               "secret": {"fromEnv": "X"}}, {"secret": HOOK_SECRET})
        for n in (notifier, hook_notifier):
            n.reconciled(failed(_sha(20), rolled_back=True), "rolled back: analysis failed")
            n.reconciled(failed(_sha(21), rolled_back=False), "failed: 1 change")
        eventually(lambda: len(rx.under("/hook")) == 2 and len(rx.under("/repos/")) == 2, 20, "four deliveries")
        notifier.close(5)
        hook_notifier.close(5)
    assert [r.json()["event"] for r in rx.under("/hook")] == ["rolled-back", "failed"]
    assert [r.header("X-Amlops-Event") for r in rx.under("/hook")] == ["rolled-back", "failed"]
    # A commit whose rollout was rolled back is not in place: GitHub marks it failed, with the reason.
    statuses = {r.path.rsplit("/", 1)[1]: r.json() for r in rx.under("/repos/")}
    assert statuses[_sha(20)]["state"] == "failure" and "rolled back" in statuses[_sha(20)]["description"]
    assert statuses[_sha(21)]["state"] == "failure"


def test_severity_and_event_filters_choose_what_a_receiver_hears() -> None:
    from controller.structs.notifications import Receiver

    def receiver_with(**extra: Any) -> Receiver:
        return Receiver.model_validate({"name": "r", "type": "slack", "url": {"fromEnv": "X"}, **extra})

    outcomes = receiver_with()
    assert all(outcomes.wants(e) for e in ("applied", "no-changes", "held", "invalid", "failed", "rolled-back"))
    assert not outcomes.wants("pending")  # a chat room hears outcomes, not "reconciling…"
    assert receiver_with(events=["pending"]).wants("pending")
    warnings = receiver_with(severity="warning")
    assert [e for e in ("pending", "applied", "held", "rolled-back", "invalid") if warnings.wants(e)] == [
        "held", "rolled-back", "invalid"]
    # A revision left with a stalled or conflicting resource is not in place: an error, like failed.
    assert receiver_with(severity="error").wants("degraded")
    chosen = receiver_with(events=["applied", "failed"], severity="info")
    assert [e for e in ("pending", "applied", "failed", "invalid") if chosen.wants(e)] == ["applied", "failed"]


def test_the_documented_config_parses_with_every_provider() -> None:
    from controller.runtime.notifying import parse_notifications

    example = Path(__file__).resolve().parents[2] / "docs/examples/notifications.yaml"
    settings = parse_notifications(str(example))
    assert [r.type for r in settings.receivers] == ["github", "gitlab", "azureDevOps", "slack", "teams", "webhook"]


def test_sighup_rereads_the_receivers_and_their_tokens(tmp_path: Path, controllers: Start) -> None:
    import signal

    repo = small_repo(tmp_path / "repo")
    token_file = tmp_path / "token"
    token_file.write_text("first-token-1111")
    cfg = tmp_path / "config.yaml"
    cfg.write_text("interval: 1\n")
    with receiver() as rx:
        c = controllers(["--repo", str(repo.root), "--path", "manifests", "--state-dir", str(tmp_path / "st"),
                         "--config", str(cfg)], tmp_path / "controller.log")
        c.wait_ready(timeout=120)
        assert c.status()["notifications"] == []
        spec = {"name": "gh", "type": "github", "baseUrl": rx.url, "repository": "acme/ml",
                "token": {"fromFile": str(token_file)}}
        cfg.write_text(json.dumps({"interval": 1, "notifications": {"receivers": [spec]}}))
        c.proc.send_signal(signal.SIGHUP)
        eventually(lambda: len(c.status()["notifications"]) == 1, 30, "the receiver configured")
        repo.write("manifests/cluster.yaml", doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 2}))
        second = repo.commit("two nodes")
        eventually(lambda: states(rx.under("/repos/"), second) == ["pending", "success"], 60, "statuses of the new commit")
        assert rx.under("/repos/")[0].header("Authorization") == "Bearer first-token-1111"

        token_file.write_text("second-token-2222")
        c.proc.send_signal(signal.SIGHUP)
        eventually(lambda: c.log().count("settings.reloaded") >= 2, 30, "second reload")
        repo.write("manifests/cluster.yaml", doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 3}))
        third = repo.commit("three nodes")
        eventually(lambda: states(rx.under("/repos/"), third) == ["pending", "success"], 60, "statuses after the new token")
        assert rx.under("/repos/")[-1].header("Authorization") == "Bearer second-token-2222"
        assert c.stop() == 0
    assert "first-token-1111" not in c.log() and "second-token-2222" not in c.log()
