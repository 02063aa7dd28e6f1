"""Revisions of a local Git work tree: which commit a folder is at, and a commit's tree on disk.

``amlops plan``, ``apply`` and ``delete`` read a folder the user has checked out; ``plan --base
--head`` reads two commits of it without touching the user's working tree.
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from controller.structs.errors import RevisionUnavailable
from controller.structs.states import source_id

if TYPE_CHECKING:
    import git  # imported when used: a CLI run that reads no Git history never loads GitPython


def local_source(folder: Path) -> str:
    """The inventory name of the manifests in a local ``folder``: from the Git work tree that holds it, if any.

    ``amlops apply repo`` from the repo's parent, ``amlops apply .`` inside it and a controller
    following the folder all name one source (``/x/repo//manifests``), so none of them takes the
    others' resources for another source's. Outside any work tree the folder itself is the source.
    """
    target = folder.absolute()
    top = next((p for p in (target, *target.parents) if (p / ".git").exists()), None)
    if top is None:
        return source_id(str(target), None, ".")
    return source_id(str(top), None, target.relative_to(top).as_posix() or ".")


def revision_of(root: Path) -> str:
    """The commit checked out at ``root`` (``+dirty`` when the tree has edits), or ``working-tree``."""
    try:
        import git

        repo = git.Repo(root, search_parent_directories=True)
        sha = repo.head.commit.hexsha[:12]
        return sha + ("+dirty" if repo.is_dirty(untracked_files=True) else "")
    except Exception:  # not a repo, no commits, git missing: the folder is all there is
        return "working-tree"


@contextmanager
def checkout(repo_dir: Path, ref: str) -> Iterator[tuple[Path, str]]:
    """``ref``'s tree extracted into a temp folder, and its short commit id (the user's working tree is never touched).

    Raises ``RevisionUnavailable`` with a one-line message for a folder that is no repository, an
    unknown ref or a failing git command.
    """
    import git

    try:
        repo = git.Repo(repo_dir, search_parent_directories=True)
        commit = repo.commit(ref)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise RevisionUnavailable(f"{repo_dir} is not a Git repository (--repo names one)") from None
    except (git.BadName, git.BadObject) as exc:
        # An unknown ref is a user's typo or a branch not fetched yet.
        raise RevisionUnavailable(f"{exc} in {repo_dir} (is the branch fetched? git fetch origin <branch>)") from None
    except git.GitCommandError as exc:
        raise RevisionUnavailable(_command_failed(exc)) from None
    except (git.GitError, ValueError) as exc:
        raise RevisionUnavailable(" ".join(str(exc).split())) from None
    with tempfile.TemporaryDirectory(prefix="amlops-plan-") as tmp:
        archive = Path(tmp) / "tree.tar"
        try:
            with archive.open("wb") as handle:
                repo.archive(handle, treeish=commit.hexsha, format="tar")
        except git.GitCommandError as exc:
            raise RevisionUnavailable(_command_failed(exc)) from None
        except git.GitError as exc:
            raise RevisionUnavailable(" ".join(str(exc).split())) from None
        target = Path(tmp) / "tree"
        target.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        yield target, commit.hexsha[:12]


def _command_failed(exc: git.GitCommandError) -> str:
    detail = " ".join(str(exc.stderr or exc).replace("stderr:", "").split()).strip("'\" ")
    return f"git {exc.command[1] if len(exc.command) > 1 else ''} failed: {detail}"
