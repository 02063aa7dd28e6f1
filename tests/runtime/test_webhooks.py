"""Webhook verification and push parsing, as pure functions."""

from __future__ import annotations

import hashlib
import hmac
import json

from controller.runtime.webhooks import bearer_token_valid, judge

SECRET = "s3cret-webhook"


def github(body: bytes, secret: str = SECRET, event: str = "push") -> dict[str, str]:
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": sig, "X-GitHub-Event": event, "Content-Type": "application/json"}


def push(branch: str) -> bytes:
    return json.dumps({"ref": f"refs/heads/{branch}", "after": "0" * 40}).encode()


def test_a_signed_github_push_to_the_followed_branch_wakes_the_loop() -> None:
    verdict = judge(github(push("main")), push("main"), SECRET, "main")
    assert (verdict.status, verdict.wake, verdict.provider) == (202, True, "github")


def test_a_github_push_signed_with_another_secret_is_refused() -> None:
    verdict = judge(github(push("main"), secret="wrong"), push("main"), SECRET, "main")
    assert (verdict.status, verdict.wake) == (401, False)


def test_a_body_changed_after_signing_is_refused() -> None:
    headers = github(push("main"))
    assert judge(headers, push("main") + b" ", SECRET, "main").status == 401


def test_a_request_without_any_signature_is_refused() -> None:
    assert judge({"X-GitHub-Event": "push"}, push("main"), SECRET, "main").status == 401
    assert judge({}, push("main"), SECRET, "main").status == 401


def test_no_configured_secret_refuses_everything() -> None:
    assert judge(github(push("main")), push("main"), None, "main").status == 401


def test_a_push_to_another_branch_is_accepted_but_ignored() -> None:
    verdict = judge(github(push("feature")), push("feature"), SECRET, "main")
    assert (verdict.status, verdict.wake) == (202, False)
    assert "feature" in verdict.reason


def test_a_github_ping_is_answered_without_a_sync() -> None:
    verdict = judge(github(b"{}", event="ping"), b"{}", SECRET, "main")
    assert (verdict.status, verdict.wake) == (200, False)


def test_a_gitlab_push_hook_with_the_token_wakes_the_loop() -> None:
    headers = {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Push Hook"}
    assert judge(headers, push("main"), SECRET, "main").wake


def test_a_gitlab_push_hook_with_a_wrong_token_is_refused() -> None:
    headers = {"X-Gitlab-Token": "nope", "X-Gitlab-Event": "Push Hook"}
    assert judge(headers, push("main"), SECRET, "main").status == 401


def test_a_gitlab_tag_push_is_ignored() -> None:
    headers = {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Tag Push Hook"}
    verdict = judge(headers, b'{"ref": "refs/tags/v1"}', SECRET, "main")
    assert (verdict.status, verdict.wake) == (202, False)


def test_a_source_without_a_known_branch_accepts_a_push_to_any_branch() -> None:
    assert judge(github(push("dev")), push("dev"), SECRET, None).wake


def test_bearer_tokens_must_match_exactly() -> None:
    assert bearer_token_valid("tok", "Bearer tok")
    assert not bearer_token_valid("tok", "Bearer tok2")
    assert not bearer_token_valid("tok", "tok")
    assert not bearer_token_valid(None, "Bearer ")
