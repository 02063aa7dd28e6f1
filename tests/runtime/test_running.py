"""``amlops run`` as a real process: leadership, signals, webhooks, invalid commits, watch mode."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import Controller, GitRepo, _amlops_run_argv, doc, eventually, http
from .test_webhooks import github

SECRET = "hook-secret-abc"
API_TOKEN = "api-token-xyz"

Start = Callable[..., Controller]


def repo_args(repo: GitRepo, tmp_path: Path, *extra: str) -> list[str]:
    """``amlops run`` arguments following ``repo``'s manifests/ with a state dir in ``tmp_path``."""
    return ["--repo", str(repo.root), "--path", "manifests", "--state-dir", str(tmp_path / "st"), *extra]


def small_repo(root: Path) -> GitRepo:
    """A repo whose manifests need no service process: a workspace and a CPU cluster."""
    repo = GitRepo(root)
    repo.write("manifests/workspace.yaml", doc("Workspace", "ws", {"backend": "local"}))
    repo.write(
        "manifests/clusters/cpu.yaml", doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 1})
    )
    repo.write("README.md", "not a manifest\n")
    repo.commit("initial")
    return repo


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return small_repo(tmp_path / "repo")


def test_run_once_applies_and_never_imports_tensorflow(repo: GitRepo, tmp_path: Path) -> None:
    modules = tmp_path / "modules.txt"
    argv = [*_amlops_run_argv(), *repo_args(repo, tmp_path, "--once", "--listen", "127.0.0.1:0")]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "AMLOPS_DUMP_MODULES": str(modules)},
    )
    assert done.returncode == 0, done.stderr
    assert "status=applied" in done.stderr
    loaded = set(modules.read_text().split())
    assert "controller.runtime.running" in loaded
    assert not any(m == "tensorflow" or m.startswith(("tensorflow.", "controller.scoring")) for m in loaded)


def test_run_once_exits_1_on_an_invalid_commit(repo: GitRepo, tmp_path: Path) -> None:
    repo.write("manifests/clusters/cpu.yaml", "kind: AksCluster\nmetadata: [unclosed\n")
    repo.commit("broken")
    argv = [*_amlops_run_argv(), *repo_args(repo, tmp_path, "--once", "--listen", "127.0.0.1:0", "--log-format", "json")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "manifests/clusters/cpu.yaml:" in done.stderr and '"msg": "sync.finished"' in done.stderr


def test_a_second_controller_stands_by_and_takes_over_when_the_first_is_killed(
    repo: GitRepo, tmp_path: Path, controllers: Start
) -> None:
    args = repo_args(repo, tmp_path, "--interval", "1")
    first = controllers(args, tmp_path / "first.log")
    first.wait_ready()
    second = controllers(args, tmp_path / "second.log")
    eventually(lambda: second.get("/readyz") == (503, "standby\n"), 30, "second controller standing by")
    assert second.get("/healthz")[0] == 200
    assert second.status()["role"] == "standby"

    first.proc.kill()  # kill -9: the kernel drops the flock
    first.proc.wait(10)
    second.wait_ready()
    assert second.status()["role"] == "leader"
    assert "leader.standby" in second.log() and "leader.elected" in second.log()


def test_sigterm_finishes_and_exits_zero(repo: GitRepo, tmp_path: Path, controllers: Start) -> None:
    c = controllers(
        repo_args(repo, tmp_path),
        tmp_path / "c.log",
    )
    c.wait_ready()
    assert c.stop(signal.SIGTERM) == 0
    assert "controller.stopped" in c.log()


def test_an_invalid_commit_applies_nothing_and_shows_file_and_line_until_fixed(
    repo: GitRepo, tmp_path: Path, controllers: Start
) -> None:
    good = repo.head()
    c = controllers(
        repo_args(repo, tmp_path, "--interval", "0.5"),
        tmp_path / "c.log",
    )
    c.wait_ready()
    eventually(lambda: c.status()["lastAppliedRevision"] == good, 30, "first revision applied")

    repo.write(
        "manifests/clusters/cpu.yaml",
        doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": -3}),
    )
    bad = repo.commit("negative nodes")
    status = eventually(
        lambda: (s := c.status())["lastReconcile"]["revision"] == bad and s, 30, "bad commit seen"
    )
    assert status["lastReconcile"]["status"] == "invalid"
    assert any(e.startswith("manifests/clusters/cpu.yaml:1") for e in status["lastReconcile"]["errors"])
    assert status["lastAppliedRevision"] == good  # the last good state is still what is served
    assert status["history"][0]["status"] == "invalid"
    assert "manifests/clusters/cpu.yaml:1" in c.get("/")[1]

    repo.git("revert", "--no-edit", "HEAD")
    fixed = repo.head()
    eventually(lambda: c.status()["lastAppliedRevision"] == fixed, 30, "reverted revision applied")


def test_a_signed_webhook_wakes_the_loop_and_a_forged_one_does_not(
    repo: GitRepo, tmp_path: Path, controllers: Start
) -> None:
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "token").write_text(API_TOKEN + "\n")
    c = controllers(
        repo_args(repo, tmp_path, "--interval", "600", "--webhook-secret-file", str(tmp_path / "secret"),
                  "--api-token-file", str(tmp_path / "token"), "--log-format", "json"),
        tmp_path / "c.log",
    )
    c.wait_ready()
    auth = {"Authorization": f"Bearer {API_TOKEN}"}

    def status() -> dict[str, Any]:
        code, body = http("GET", c.base + "/api/status", headers=auth)
        assert code == 200, body
        return dict(json.loads(body))

    first = eventually(lambda: (s := status())["reconciles"] >= 1 and s, 60, "first reconcile")["reconciles"]
    body = b'{"ref": "refs/heads/main"}'
    assert http("POST", c.base + "/hooks/git", body, github(body, secret="forged"))[0] == 401
    other = b'{"ref": "refs/heads/other"}'
    assert http("POST", c.base + "/hooks/git", other, github(other, secret=SECRET))[0] == 202
    # A wake the ignored pushes caused would run a reconcile of its own or merge into the next one:
    # after one more reconcile woken through the API, every trigger since the first must be "api".
    assert http("POST", c.base + "/api/sync", b"", auth)[0] == 202
    eventually(lambda: status()["reconciles"] >= first + 1, 30, "API sync")
    assert _triggers(c)[first:] == ["api"]
    assert status()["reconciles"] == first + 1

    new = repo.commit("empty change")
    assert http("POST", c.base + "/hooks/git", body, github(body, secret=SECRET))[0] == 202
    synced = eventually(lambda: (s := status())["lastReconcile"]["revision"] == new and s, 30, "webhook sync")
    assert synced["reconciles"] == first + 2
    assert _triggers(c)[first:] == ["api", "webhook:github"]
    assert SECRET not in c.log()


def _triggers(c: Controller) -> list[str]:
    """The trigger of each reconcile the controller started, in order (from its JSON log)."""
    events = [json.loads(line) for line in c.log().splitlines() if line.startswith("{")]
    return [str(e["trigger"]) for e in events if e.get("msg") == "sync.started"]


def test_api_sync_needs_the_token_and_sighup_rereads_it(
    repo: GitRepo, tmp_path: Path, controllers: Start
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(API_TOKEN)
    c = controllers(
        repo_args(repo, tmp_path, "--interval", "600", "--api-token-file", str(token_file)),
        tmp_path / "c.log",
    )
    c.wait_ready()
    before = c.wait_reconciles(1)["reconciles"]
    assert http("POST", c.base + "/api/sync", b"")[0] == 401
    assert http("POST", c.base + "/api/sync", b"", {"Authorization": f"Bearer {API_TOKEN}"})[0] == 202
    c.wait_reconciles(before + 1)

    token_file.write_text("rotated-token")
    c.proc.send_signal(signal.SIGHUP)
    eventually(lambda: "settings.reloaded" in c.log(), 30, "reload logged")
    assert http("POST", c.base + "/api/sync", b"", {"Authorization": f"Bearer {API_TOKEN}"})[0] == 401
    assert http("POST", c.base + "/api/sync", b"", {"Authorization": "Bearer rotated-token"})[0] == 202
    assert API_TOKEN not in c.log() and "rotated-token" not in c.log()


def test_a_plain_folder_is_watched_and_edits_are_reconciled(tmp_path: Path, controllers: Start) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "workspace.yaml").write_text(doc("Workspace", "ws", {"backend": "local"}))
    c = controllers(
        ["--repo", str(folder), "--state-dir", str(tmp_path / "st"), "--interval", "600", "--detect-only"],
        tmp_path / "c.log",
    )
    c.wait_ready()
    first = c.wait_reconciles(1)["lastReconcile"]["revision"]
    assert first.startswith("dirty-")
    (folder / "cluster.yaml").write_text(
        doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 1})
    )
    status = eventually(
        lambda: (s := c.status())["lastReconcile"]["revision"] != first and s, 30, "edit picked up"
    )
    assert status["lastReconcile"]["status"] == "detected"
    assert any(ch["id"] == "AksCluster/cpu" for ch in status["lastReconcile"]["changes"])


def test_an_unreachable_source_is_not_ready_counts_errors_and_never_logs_the_token(
    tmp_path: Path, controllers: Start
) -> None:
    token = "glpat-VerySecretValue987"
    c = controllers(
        [
            "--repo",
            "http://127.0.0.1:9/org/repo.git",
            "--branch",
            "main",
            "--state-dir",
            str(tmp_path / "st"),
            "--interval",
            "2",
            "--log-format",
            "json",
        ],
        tmp_path / "c.log",
        env={"AMLOPS_GIT_TOKEN": token},
    )
    status = eventually(
        lambda: (s := c.status())["reconciles"] >= 2 and s, 60, "two failed fetches (backoff)"
    )
    assert status["source"]["reachable"] is False
    assert status["lastReconcile"]["status"] == "failed"
    code, body = c.get("/readyz")
    assert code == 503 and body.startswith("source unreachable")
    fetch_errors = next(
        float(line.split()[-1])
        for line in c.get("/metrics")[1].splitlines()
        if line.startswith("amlops_source_fetch_errors_total ")
    )
    assert fetch_errors >= 2
    assert '"msg": "source.fetch.failed"' in c.log()
    for text in (c.log(), json.dumps(c.status()), c.get("/")[1], c.get("/readyz")[1]):
        assert token not in text


def test_amlops_run_is_reachable_through_the_cli(repo: GitRepo, tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "controller",
        "run",
        "--repo",
        str(repo.root),
        "--path",
        "manifests",
        "--state-dir",
        str(tmp_path / "st"),
        "--once",
        "--detect-only",
        "--listen",
        "127.0.0.1:0",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "status=detected" in done.stderr


def test_a_hanging_remote_is_reported_unreachable_after_the_configured_git_timeout(
    silent_remote: str, tmp_path: Path, controllers: Start
) -> None:
    config = tmp_path / "amlops.yaml"
    config.write_text("gitTimeout: 1\n")
    c = controllers(["--repo", silent_remote, "--branch", "main", "--state-dir", str(tmp_path / "st"),
                     "--interval", "1", "--config", str(config)], tmp_path / "c.log")
    status = eventually(lambda: (s := c.status())["reconciles"] >= 1 and s, 60, "a timed-out fetch")
    assert status["source"]["reachable"] is False and status["lastReconcile"]["status"] == "failed"
    code, body = c.get("/readyz")
    assert code == 503
    assert body.strip() == f"source unreachable: git fetch failed: {silent_remote} did not answer within 1 s (--git-timeout)"

    # The flag wins over the config file; --once exits 1 with the same one line.
    argv = [*_amlops_run_argv(), "--repo", silent_remote, "--branch", "main", "--state-dir", str(tmp_path / "once"),
            "--once", "--listen", "127.0.0.1:0", "--config", str(config), "--git-timeout", "0.5"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "did not answer within 0.5 s (--git-timeout)" in done.stderr


def test_the_status_page_lists_the_same_history_as_amlops_history_and_keeps_it_across_a_restart(
    repo: GitRepo, tmp_path: Path, controllers: Start
) -> None:
    first_revision = repo.head()
    once = subprocess.run([*_amlops_run_argv(), *repo_args(repo, tmp_path, "--once", "--listen", "127.0.0.1:0")],
                          capture_output=True, text=True, timeout=120)
    assert once.returncode == 0, once.stderr
    repo.write("manifests/clusters/cpu.yaml", doc("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": -3}))
    bad = repo.commit("negative nodes")
    c = controllers(repo_args(repo, tmp_path, "--interval", "30"), tmp_path / "c.log")
    c.wait_ready()
    page = eventually(lambda: (h := c.status()["history"]) and h[0]["revision"] == bad and h, 30, "bad commit listed")
    # The reconcile the --once process did is there too: one history, in the state dir's database.
    assert [(h["revision"], h["status"]) for h in page[:2]] == [(bad, "invalid"), (first_revision, "applied")]
    assert page[0]["summary"].startswith("manifests/clusters/cpu.yaml:1") and page[1]["summary"] == "+2 ~0 -/+0 -0"
    listed = subprocess.run([sys.executable, "-m", "controller", "history", "--state-dir", str(tmp_path / "st"),
                             "--output", "json"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert [(e["id"], e["revision"], e["status"]) for e in json.loads(listed.stdout)] == \
        [(h["id"], h["revision"], h["status"]) for h in page]
