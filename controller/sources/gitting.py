"""The Git source: fetch a branch of a remote into a bare cache and snapshot each commit.

Like Flux's source-controller, the controller never reconciles a working copy that may be half
updated: every commit is exported into its own folder keyed by its sha (``git archive`` into a
temporary folder, then an atomic rename), and the reconcile reads that folder only.

Credentials never reach argv, ``.git/config``, logs or error messages: an HTTPS token travels
as an ``http.extraHeader`` given through ``GIT_CONFIG_*`` environment variables, an SSH key
through ``GIT_SSH_COMMAND``, and every message that leaves this module is passed through
``redact`` (``controller.structs.redactions``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import shutil
import tarfile
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import git

from controller.structs.logformats import event_logger
from controller.structs.redactions import redact

log = event_logger(__name__)

GIT_TIMEOUT_S: Final = 30.0
"""Default bound on one git command: a remote that accepts the connection and never answers is
reported unreachable after this long instead of holding the reconcile loop (``--git-timeout``)."""
SNAPSHOTS_KEPT: Final = 5
"""Older snapshots are removed, but a few are kept: a backend may still read the files of the last one."""


@dataclass(frozen=True)
class Snapshot:
    """One revision of desired state on disk: ``root`` holds the tree, manifests live under ``root/path``."""

    revision: str
    root: Path
    path: str
    message: str = ""


class SourceUnavailable(Exception):
    """The source could not be read (network, authentication, missing branch). Transient: retry."""


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without any ``user:password@`` part, and the user and password it carried."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or "@" not in parsed.netloc:
        return url, None, None
    userinfo, _, host = parsed.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    clean = urllib.parse.urlunsplit((parsed.scheme, host, parsed.path, parsed.query, parsed.fragment))
    return clean, urllib.parse.unquote(user) or None, urllib.parse.unquote(password) or None


def looks_like_git_repo(path: Path) -> bool:
    """Whether ``path`` is the top of a Git repository (bare or with a working tree)."""
    if (path / ".git").exists():
        return True
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


class GitSource:
    """A branch of a Git remote (URL or local path), fetched into ``cache_dir`` and snapshotted by commit.

    ``branch=None`` follows the remote's default branch (its ``HEAD``). ``fetch()`` is safe to call
    from one thread at a time; the loop calls it once per reconcile.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_dir: Path,
        path: str = ".",
        branch: str | None = None,
        token: str | None = None,
        username: str = "x-access-token",
        ssh_key_file: str | None = None,
        timeout_s: float = GIT_TIMEOUT_S,
    ) -> None:
        clean, url_user, url_password = split_credentials(url)
        local = Path(url).expanduser()
        self.url = str(local.absolute()) if "://" not in url and local.exists() else clean
        self.path = path
        self._branch = branch
        self._token = token or url_password
        self._username = url_user or username
        self._ssh_key_file = ssh_key_file
        self.timeout_s = timeout_s
        key = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self._mirror = cache_dir / "git" / key
        self._snapshots = cache_dir / "snapshots"
        self._repo: git.Repo | None = None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never be logged (for the log redaction filter)."""
        return tuple(s for s in (self._token,) if s)

    @property
    def display_url(self) -> str:
        """The remote's URL with no credentials, safe to show."""
        return self.url

    @property
    def branch(self) -> str | None:
        """The branch followed; ``None`` until the remote's default branch is known."""
        return self._branch

    def set_token(self, token: str | None) -> None:
        """Use a new token from the next fetch on (SIGHUP re-reads the token file)."""
        self._token = token

    def set_timeout(self, timeout_s: float) -> None:
        """Bound each git command by ``timeout_s`` from the next fetch on (SIGHUP re-reads it)."""
        self.timeout_s = timeout_s

    def _environment(self) -> dict[str, str]:
        env = {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "true",
            "SSH_ASKPASS": "true",
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        if self._token and self.url.startswith(("https://", "http://")):
            basic = base64.b64encode(f"{self._username}:{self._token}".encode()).decode()
            env.update(
                GIT_CONFIG_COUNT="1",
                GIT_CONFIG_KEY_0="http.extraHeader",
                GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}",
            )
        if self._ssh_key_file:
            key = shlex.quote(str(Path(self._ssh_key_file).expanduser().absolute()))
            known_hosts = shlex.quote(str(self._mirror.parent / "known_hosts"))
            env["GIT_SSH_COMMAND"] = (
                f"ssh -i {key} -o IdentitiesOnly=yes -o BatchMode=yes "
                f"-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={known_hosts}"
            )
        return env

    def _git(self, repo: git.Repo, *args: str) -> str:
        """Run one git command in the mirror with the credential environment; errors come out redacted."""
        started = time.monotonic()
        try:
            with repo.git.custom_environment(**self._environment()):
                out: str = repo.git.execute(["git", *args], kill_after_timeout=self.timeout_s)
                return out
        except git.GitCommandError as exc:
            if time.monotonic() - started >= self.timeout_s:
                raise SourceUnavailable(f"git {args[0]} failed: {self.display_url} did not answer within "
                                        f"{self.timeout_s:g} s (--git-timeout)") from None
            stderr = str(exc.stderr or "").strip().replace("stderr: ", "")
            raise SourceUnavailable(redact(f"git {args[0]} failed: {stderr or exc}", self.secrets)) from None
        except OSError as exc:
            raise SourceUnavailable(redact(f"git {args[0]} failed: {exc}", self.secrets)) from None

    def _open(self) -> git.Repo:
        if self._repo is not None:
            return self._repo
        if not (self._mirror / "HEAD").exists():
            self._mirror.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".init-", dir=self._mirror.parent))
            repo = git.Repo.init(staging, bare=True)
            # The URL carries no credentials (they travel in the environment), so the config may keep it.
            repo.git.remote("add", "origin", self.url)
            repo.close()
            os.replace(staging, self._mirror)
        self._repo = git.Repo(self._mirror)
        return self._repo

    def _default_branch(self, repo: git.Repo) -> str:
        out = self._git(repo, "ls-remote", "--symref", "origin", "HEAD")
        for line in out.splitlines():
            if line.startswith("ref: refs/heads/") and line.endswith("\tHEAD"):
                return line[len("ref: refs/heads/") : -len("\tHEAD")]
        raise SourceUnavailable(f"cannot tell the default branch of {self.display_url}; pass --branch")

    def fetch(self) -> Snapshot:
        """Fetch the branch, export its head commit (once per sha) and return where it lies."""
        repo = self._open()
        if self._branch is None:
            self._branch = self._default_branch(repo)
        branch = self._branch
        started = time.monotonic()
        self._git(
            repo,
            "fetch",
            "--prune",
            "--no-tags",
            "origin",
            f"+refs/heads/{branch}:refs/remotes/origin/{branch}",
        )
        try:
            sha = repo.git.rev_parse("--verify", f"refs/remotes/origin/{branch}^{{commit}}")
        except git.GitCommandError:
            raise SourceUnavailable(f"branch {branch!r} not found in {self.display_url}") from None
        message = repo.commit(sha).summary
        root = self._export(repo, sha)
        log.debug("source.fetched", revision=sha, seconds=round(time.monotonic() - started, 3))
        return Snapshot(revision=sha, root=root, path=self.path, message=str(message))

    def _export(self, repo: git.Repo, sha: str) -> Path:
        """The tree of ``sha`` in its own folder, created atomically the first time it is asked for."""
        target = self._snapshots / sha
        if target.is_dir():
            os.utime(target)
            return target
        self._snapshots.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=self._snapshots))
        try:
            with tempfile.TemporaryFile(dir=self._snapshots) as tar:
                repo.archive(tar, treeish=sha, format="tar")
                tar.seek(0)
                with tarfile.open(fileobj=tar) as archive:
                    # The "tar" filter refuses members that would land outside the folder.
                    archive.extractall(staging, filter="tar")
            os.replace(staging, target)
        except Exception:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._prune_snapshots(keep=target)
        return target

    def _prune_snapshots(self, keep: Path) -> None:
        entries = [
            p for p in self._snapshots.iterdir() if p.is_dir() and not p.name.startswith(".") and p != keep
        ]
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[SNAPSHOTS_KEPT - 1 :]:
            shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        """Release the mirror's handles (git's cat-file processes)."""
        if self._repo is not None:
            self._repo.close()
            self._repo = None
