"""The emulator's state: JSON records in one SQLite database, plus uploaded blobs as files.

Records are keyed by (kind, key); a key is usually ``{workspace scope}/{name}``. A restart keeps
everything (workspaces, computes, environments, models, services, operations); replicas are
re-adopted by the local backend, which keeps its own state beside this one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Store:
    """Thread-safe JSON records. One connection, serialised by a lock (traffic is light)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several writes into one atomic change."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        """The record, or None."""
        with self._lock:
            row = self._conn.execute("SELECT data FROM records WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def put(self, kind: str, key: str, data: dict[str, Any]) -> None:
        """Insert or replace a record."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO records VALUES (?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM records)) "
                "ON CONFLICT(kind, key) DO UPDATE SET data = excluded.data",
                (kind, key, json.dumps(data)),
            )

    def delete(self, kind: str, key: str) -> bool:
        """Remove a record; whether it existed."""
        with self._lock:
            cur = self._conn.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))
        return cur.rowcount > 0

    def list(self, kind: str, prefix: str = "") -> list[dict[str, Any]]:
        """Records of ``kind`` whose key starts with ``prefix``, in creation order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT data FROM records WHERE kind = ? AND substr(key, 1, ?) = ? ORDER BY seq",
                (kind, len(prefix), prefix),
            ).fetchall()
        return [dict(json.loads(r[0])) for r in rows]

    def next_value(self, name: str) -> int:
        """A persistent counter (model versions, environment versions)."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO counters VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1", (name,)
            )
            row = self._conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()
