"""Content digests of the files manifests point at (model files, source folders), cached by stat, and the
walks over those files (what is in a folder, whether a path stays in the repository)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final


def walk_files(start: Path) -> Iterator[Path]:
    """Every file under ``start``, hidden folders left out, in a stable order; links are not followed."""
    for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            yield Path(dirpath) / name


def inside(root: Path, path: Path) -> bool:
    """Whether ``path``, links resolved, lies within ``root`` (a manifest may not reach out of its repository)."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


class ContentHasher:
    """sha256 of files and folder trees, cached by (path, size, mtime) so unchanged files are read once."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[int, int, str]] = {}

    def file(self, path: Path, st: os.stat_result | None = None) -> str:
        """Hex digest of one file's bytes (``st``: its ``os.stat``, when the caller has it already)."""
        if st is None:
            st = os.stat(path)
        key = str(path)
        cached = self._files.get(key)
        if cached is not None and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
            return cached[2]
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        result = digest.hexdigest()
        self._files[key] = (st.st_size, st.st_mtime_ns, result)
        return result

    def tree(self, path: Path) -> str:
        """``sha256:`` digest of a file, or of a folder's files (names and contents, hidden entries skipped).

        One ``stat`` per file: a controller hashes the watched tree on every pass.
        """
        digest = hashlib.sha256()
        try:
            st: os.stat_result | None = os.stat(path)
        except FileNotFoundError:
            st = None  # hashes as an empty folder, as before it existed
        if st is not None and stat.S_ISREG(st.st_mode):
            digest.update(self.file(path, st).encode())
            return "sha256:" + digest.hexdigest()
        prefix = len(str(path)) + 1
        for file in sorted(walk_files(path)):
            if file.name.startswith("."):
                continue
            try:
                file_st = os.stat(file)
            except FileNotFoundError:  # a dangling link, or removed since the walk
                continue
            if not stat.S_ISREG(file_st.st_mode):
                continue
            digest.update(str(file)[prefix:].replace(os.sep, "/").encode() + b"\0")
            digest.update(self.file(file, file_st).encode() + b"\0")
        return "sha256:" + digest.hexdigest()


HASHER: Final = ContentHasher()
