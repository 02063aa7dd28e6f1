"""SQLite files shared by several processes: one short connection per transaction, WAL journaling.

The controller, the CLI, supervisors and a standby controller all open the same state files, so
no connection is kept open across calls and every write takes the lock up front (``BEGIN
IMMEDIATE``): a read-modify-write sequence never interleaves with another process's.

On a full filesystem a WAL connection cannot even open (it creates the ``-wal`` and ``-shm``
files, which the last connection to close removed), so reads fall back to the database file
alone, read-only: every commit is in it once the last connection has checkpointed on close, and
no commit can happen until space is freed. Writes then raise ``StateDirFull``, naming the folder.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from controller.structs.errors import StateDirFull


def filesystem_full(folder: Path) -> bool:
    """Whether the filesystem holding ``folder`` has no block left for this user."""
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def state_dir_full(folder: Path, what: Path, error: object) -> StateDirFull:
    """The error every process reports when ``what`` under ``folder`` cannot be written for lack of space."""
    return StateDirFull(f"state dir full: {folder}: cannot write {what.name} (No space left on device; {error})")


class Database:
    """One SQLite file with a schema, opened per transaction."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only: SQLite gives the -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for private in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if private.exists():
                os.chmod(private, 0o600)
        try:
            with self.connect() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(schema)
        except sqlite3.OperationalError as exc:
            if not filesystem_full(path.parent):
                raise
            if path.stat().st_size == 0:  # a new database cannot be made on a full disk
                raise state_dir_full(path.parent, path, exc) from None
            # An existing database already has its schema: open it for reading until space returns.

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh autocommit connection that waits up to 30 s for another process's lock."""
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError:
            conn.close()
            if not filesystem_full(self.path.parent):
                raise
            # See the module docstring: the database file alone, read-only, until space returns.
            conn = sqlite3.connect(f"file:{quote(str(self.path))}?mode=ro&immutable=1", uri=True,
                                   isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front; rolled back if the block raises."""
        try:
            with self.connect() as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if filesystem_full(self.path.parent):
                raise state_dir_full(self.path.parent, self.path, exc) from exc
            raise

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state."""
        with self.connect() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("ROLLBACK")
