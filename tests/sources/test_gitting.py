"""The Git source against real repositories in temp folders (and a loopback HTTP server for tokens)."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from controller.sources.gitting import GitSource, SourceUnavailable, split_credentials
from controller.structs.redactions import redact

TOKEN = "ghp_SuperSecretToken1234567890"
AUTHOR = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@e",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@e",
}


def git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=root, env={**os.environ, **AUTHOR}, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def commit(root: Path, files: dict[str, str], message: str = "change") -> str:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD")


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    root = tmp_path / "remote"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    commit(root, {"manifests/a.yaml": "kind: Workspace\n", "README": "hi\n"}, "first")
    return root


def source(remote: Path, tmp_path: Path, **kw: object) -> GitSource:
    return GitSource(str(remote), cache_dir=tmp_path / "cache", **kw)  # type: ignore[arg-type]


def test_fetching_a_local_repo_snapshots_its_head_commit(remote: Path, tmp_path: Path) -> None:
    src = source(remote, tmp_path, path="manifests")
    snap = src.fetch()
    assert snap.revision == git(remote, "rev-parse", "HEAD")
    assert snap.path == "manifests" and snap.message == "first"
    assert (snap.root / "manifests/a.yaml").read_text() == "kind: Workspace\n"
    assert not (snap.root / ".git").exists()  # a plain tree, not a working copy
    assert src.branch == "main"  # the remote's default branch, when none is given


def test_a_new_commit_is_a_new_revision_and_the_old_snapshot_stays_intact(
    remote: Path, tmp_path: Path
) -> None:
    src = source(remote, tmp_path)
    first = src.fetch()
    assert src.fetch() == first  # nothing new: same revision, same folder
    sha = commit(remote, {"manifests/a.yaml": "kind: AksCluster\n"})
    second = src.fetch()
    assert second.revision == sha != first.revision
    assert (second.root / "manifests/a.yaml").read_text() == "kind: AksCluster\n"
    assert (first.root / "manifests/a.yaml").read_text() == "kind: Workspace\n"


def test_uncommitted_edits_in_a_local_repo_are_not_reconciled(remote: Path, tmp_path: Path) -> None:
    (remote / "manifests/a.yaml").write_text("half-edited")
    snap = source(remote, tmp_path).fetch()
    assert (snap.root / "manifests/a.yaml").read_text() == "kind: Workspace\n"


def test_only_the_selected_branch_is_followed(remote: Path, tmp_path: Path) -> None:
    git(remote, "checkout", "-q", "-b", "staging")
    staging = commit(remote, {"manifests/a.yaml": "staging\n"})
    git(remote, "checkout", "-q", "main")
    main_head = git(remote, "rev-parse", "HEAD")
    assert source(remote, tmp_path / "m", branch="main").fetch().revision == main_head
    snap = source(remote, tmp_path / "s", branch="staging").fetch()
    assert snap.revision == staging and (snap.root / "manifests/a.yaml").read_text() == "staging\n"


def test_a_missing_branch_is_reported_as_unavailable(remote: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="nope"):
        source(remote, tmp_path, branch="nope").fetch()


def test_a_bare_repo_works_as_a_remote(remote: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(remote), str(bare)], check=True)
    assert source(bare, tmp_path).fetch().revision == git(remote, "rev-parse", "HEAD")


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def https_like_remote() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("H", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/org/repo.git", seen
    server.shutdown()
    server.server_close()


def test_the_token_is_sent_as_a_header_and_never_appears_in_errors_or_logs(
    https_like_remote: tuple[str, list[str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, seen = https_like_remote
    caplog.set_level(logging.DEBUG)
    src = GitSource(url, cache_dir=tmp_path / "cache", branch="main", token=TOKEN)
    with pytest.raises(SourceUnavailable) as failure:
        src.fetch()
    expected = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    assert expected in seen
    assert TOKEN not in str(failure.value) and TOKEN not in repr(failure.value)
    assert TOKEN not in caplog.text
    config = (tmp_path / "cache").rglob("config")
    assert all(TOKEN not in p.read_text() for p in config)


def test_credentials_in_the_url_move_out_of_it(
    https_like_remote: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, seen = https_like_remote
    with_creds = url.replace("http://", f"http://bot:{TOKEN}@")
    src = GitSource(with_creds, cache_dir=tmp_path / "cache", branch="main")
    assert TOKEN not in src.display_url and "bot" not in src.display_url
    with pytest.raises(SourceUnavailable) as failure:
        src.fetch()
    assert TOKEN not in str(failure.value)
    assert "Basic " + base64.b64encode(f"bot:{TOKEN}".encode()).decode() in seen


def test_redaction_covers_quoted_and_base64_forms() -> None:
    text = f"a {TOKEN} b {base64.b64encode(TOKEN.encode()).decode()} c"
    assert TOKEN not in redact(text, [TOKEN]) and "***" in redact(text, [TOKEN])
    assert split_credentials("https://u:p%40ss@host/r.git") == ("https://host/r.git", "u", "p@ss")
    assert split_credentials("git@github.com:org/repo.git") == ("git@github.com:org/repo.git", None, None)


def test_a_remote_that_never_answers_is_reported_unreachable_after_the_timeout(
    silent_remote: str, tmp_path: Path
) -> None:
    src = GitSource(silent_remote, cache_dir=tmp_path / "cache", branch="main", timeout_s=1.5)
    with pytest.raises(SourceUnavailable) as failure:
        src.fetch()
    assert str(failure.value) == f"git fetch failed: {silent_remote} did not answer within 1.5 s (--git-timeout)"
    # Without a branch the first command is ls-remote: bounded the same way.
    src = GitSource(silent_remote, cache_dir=tmp_path / "cache2", timeout_s=1)
    with pytest.raises(SourceUnavailable, match=r"git ls-remote failed: .* did not answer within 1 s"):
        src.fetch()
