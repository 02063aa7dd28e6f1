"""The local backend's state: one SQLite database (WAL) in the state directory.

Every change is one ``BEGIN IMMEDIATE`` transaction, so a crash leaves either the old or the new
record, never half of one. The controller, the CLI and each service's supervisor open the same
database from their own processes; WAL lets readers proceed while one of them writes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.databases import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, name TEXT NOT NULL,
    spec TEXT NOT NULL, tags TEXT NOT NULL, conditions TEXT NOT NULL, details TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS model_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL,
    tags TEXT NOT NULL, created_at REAL NOT NULL, path TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY, cluster TEXT NOT NULL, port INTEGER NOT NULL,
    generation INTEGER NOT NULL, launch_hash TEXT NOT NULL, launch TEXT NOT NULL,
    replicas INTEGER NOT NULL, gpus_per_replica INTEGER NOT NULL, gpu_pool TEXT NOT NULL,
    supervisor_pid INTEGER, supervisor_started REAL,
    failures INTEGER NOT NULL DEFAULT 0, failure_generation INTEGER NOT NULL DEFAULT 0, last_error TEXT
);
CREATE TABLE IF NOT EXISTS rollouts (
    service TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL, request TEXT
);
CREATE TABLE IF NOT EXISTS replicas (
    service TEXT NOT NULL, pid INTEGER NOT NULL, started REAL NOT NULL,
    slot INTEGER NOT NULL, generation INTEGER NOT NULL, gpus TEXT NOT NULL,
    status_file TEXT NOT NULL, fd_socket TEXT NOT NULL,
    PRIMARY KEY (service, pid)
);
"""


@dataclass(frozen=True)
class ServiceRow:
    """What the supervisor of one service needs, and what read() reports about it."""

    name: str
    cluster: str
    port: int
    generation: int
    launch_hash: str
    launch: dict[str, Any]
    replicas: int
    gpus_per_replica: int
    gpu_pool: tuple[str, ...]
    supervisor_pid: int | None
    supervisor_started: float | None
    failures: int
    failure_generation: int
    last_error: str | None


@dataclass(frozen=True)
class ReplicaRow:
    """One replica process as its supervisor recorded it."""

    service: str
    pid: int
    started: float
    slot: int
    generation: int
    gpus: tuple[str, ...]
    status_file: str
    fd_socket: str


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version."""

    name: str
    version: int
    sha256: str
    tags: dict[str, str]
    created_at: float
    path: str


class LocalStore(Database):
    """Transactional access to the state database. Opens a connection per transaction (thread-safe)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)

    # -- resources ---------------------------------------------------------------------------

    @staticmethod
    def put_resource(
        conn: sqlite3.Connection, kind: str, name: str, spec: dict[str, Any], tags: dict[str, str],
        conditions: list[dict[str, Any]], details: dict[str, Any],
    ) -> None:
        """Record the last applied spec of a resource, with its tags, conditions and details."""
        conn.execute(
            "INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, name, json.dumps(spec), json.dumps(tags), json.dumps(conditions), json.dumps(details), time.time()),
        )

    @staticmethod
    def get_resource(conn: sqlite3.Connection, kind: str, name: str) -> dict[str, Any] | None:
        """The recorded resource as a dict of decoded columns, or None."""
        row = conn.execute(
            "SELECT spec, tags, conditions, details FROM resources WHERE kind = ? AND name = ?", (kind, name)
        ).fetchone()
        if row is None:
            return None
        return {"spec": json.loads(row[0]), "tags": json.loads(row[1]), "conditions": json.loads(row[2]), "details": json.loads(row[3])}

    @staticmethod
    def all_resources(conn: sqlite3.Connection) -> list[tuple[str, str, dict[str, Any]]]:
        """Every recorded resource as ``(kind, name, columns)``."""
        rows = conn.execute("SELECT kind, name, spec, tags, conditions, details FROM resources").fetchall()
        return [
            (k, n, {"spec": json.loads(s), "tags": json.loads(t), "conditions": json.loads(c), "details": json.loads(d)})
            for k, n, s, t, c, d in rows
        ]

    @staticmethod
    def delete_resource(conn: sqlite3.Connection, kind: str, name: str) -> None:
        """Forget a resource."""
        conn.execute("DELETE FROM resources WHERE kind = ? AND name = ?", (kind, name))

    # -- services and replicas -----------------------------------------------------------------

    @staticmethod
    def get_service(conn: sqlite3.Connection, name: str) -> ServiceRow | None:
        """The service row named ``name``."""
        row = conn.execute(
            "SELECT name, cluster, port, generation, launch_hash, launch, replicas, gpus_per_replica, gpu_pool, "
            "supervisor_pid, supervisor_started, failures, failure_generation, last_error FROM services WHERE name = ?",
            (name,),
        ).fetchone()
        return None if row is None else _service(row)

    @staticmethod
    def all_services(conn: sqlite3.Connection) -> list[ServiceRow]:
        """Every service row."""
        rows = conn.execute(
            "SELECT name, cluster, port, generation, launch_hash, launch, replicas, gpus_per_replica, gpu_pool, "
            "supervisor_pid, supervisor_started, failures, failure_generation, last_error FROM services"
        ).fetchall()
        return [_service(r) for r in rows]

    @staticmethod
    def put_service(conn: sqlite3.Connection, row: ServiceRow) -> None:
        """Insert or replace a service row."""
        conn.execute(
            "INSERT OR REPLACE INTO services VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.name, row.cluster, row.port, row.generation, row.launch_hash, json.dumps(row.launch), row.replicas,
             row.gpus_per_replica, json.dumps(list(row.gpu_pool)), row.supervisor_pid, row.supervisor_started,
             row.failures, row.failure_generation, row.last_error),
        )

    @staticmethod
    def set_supervisor(conn: sqlite3.Connection, name: str, pid: int | None, started: float | None) -> None:
        """Record which process supervises ``name``."""
        conn.execute("UPDATE services SET supervisor_pid = ?, supervisor_started = ? WHERE name = ?", (pid, started, name))

    @staticmethod
    def set_replicas(conn: sqlite3.Connection, name: str, count: int, expected: int, generation: int) -> bool:
        """Compare-and-set a service's replica count (the autoscaler's write); False if the row moved on."""
        changed = conn.execute(
            "UPDATE services SET replicas = ? WHERE name = ? AND replicas = ? AND generation = ?",
            (count, name, expected, generation),
        ).rowcount
        return bool(changed)

    @staticmethod
    def set_gpu_pool(conn: sqlite3.Connection, name: str, pool: tuple[str, ...]) -> None:
        """Replace a service's GPU pool (another service took its unused surge spare)."""
        conn.execute("UPDATE services SET gpu_pool = ? WHERE name = ?", (json.dumps(list(pool)), name))

    @staticmethod
    def set_failures(conn: sqlite3.Connection, name: str, generation: int, failures: int, error: str | None) -> None:
        """Record how many times in a row a replica of ``generation`` failed to start, and why."""
        conn.execute(
            "UPDATE services SET failures = ?, failure_generation = ?, last_error = ? WHERE name = ?",
            (failures, generation, error, name),
        )

    @staticmethod
    def delete_service(conn: sqlite3.Connection, name: str) -> None:
        """Forget a service and its replicas."""
        conn.execute("DELETE FROM services WHERE name = ?", (name,))
        conn.execute("DELETE FROM replicas WHERE service = ?", (name,))

    @staticmethod
    def replicas(conn: sqlite3.Connection, service: str | None = None) -> list[ReplicaRow]:
        """Recorded replicas of ``service`` (or of all services)."""
        query = "SELECT service, pid, started, slot, generation, gpus, status_file, fd_socket FROM replicas"
        rows = conn.execute(query + " WHERE service = ?", (service,)) if service else conn.execute(query)
        return [ReplicaRow(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6], r[7]) for r in rows.fetchall()]

    @staticmethod
    def put_replica(conn: sqlite3.Connection, row: ReplicaRow) -> None:
        """Record a replica process."""
        conn.execute(
            "INSERT OR REPLACE INTO replicas VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row.service, row.pid, row.started, row.slot, row.generation, json.dumps(list(row.gpus)),
             row.status_file, row.fd_socket),
        )

    @staticmethod
    def delete_replica(conn: sqlite3.Connection, service: str, pid: int) -> None:
        """Forget a replica process."""
        conn.execute("DELETE FROM replicas WHERE service = ? AND pid = ?", (service, pid))

    # -- rollouts in progress ------------------------------------------------------------------

    @staticmethod
    def get_rollout(conn: sqlite3.Connection, service: str) -> dict[str, Any] | None:
        """The stored state of ``service``'s rollout in progress (with a person's ``request``), or None."""
        row = conn.execute("SELECT state, request FROM rollouts WHERE service = ?", (service,)).fetchone()
        return None if row is None else {**json.loads(row[0]), "request": row[1]}

    @staticmethod
    def all_rollouts(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
        """Every rollout in progress, by service."""
        rows = conn.execute("SELECT service, state, request FROM rollouts").fetchall()
        return {r[0]: {**json.loads(r[1]), "request": r[2]} for r in rows}

    @staticmethod
    def put_rollout(conn: sqlite3.Connection, service: str, state: dict[str, Any] | None) -> None:
        """Store (or, with None, forget) the state of ``service``'s rollout; a pending request is kept."""
        if state is None:
            conn.execute("DELETE FROM rollouts WHERE service = ?", (service,))
            return
        state = {k: v for k, v in state.items() if k != "request"}
        conn.execute(
            "INSERT INTO rollouts (service, state, updated_at) VALUES (?, ?, ?) ON CONFLICT (service) DO UPDATE"
            " SET state = excluded.state, updated_at = excluded.updated_at",
            (service, json.dumps(state), time.time()),
        )

    @staticmethod
    def request_rollout(conn: sqlite3.Connection, service: str, action: str) -> bool:
        """Record a person's ``abort`` or ``promote`` for the rollout in progress; False if there is none."""
        return bool(conn.execute("UPDATE rollouts SET request = ? WHERE service = ?", (action, service)).rowcount)

    # -- model registry -----------------------------------------------------------------------

    @staticmethod
    def model_versions(conn: sqlite3.Connection, name: str | None = None) -> list[ModelVersion]:
        """Registered versions of ``name`` (or of every model), oldest first."""
        query = "SELECT name, version, sha256, tags, created_at, path FROM model_versions"
        rows = (conn.execute(query + " WHERE name = ? ORDER BY version", (name,)) if name
                else conn.execute(query + " ORDER BY name, version"))
        return [ModelVersion(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows.fetchall()]

    @staticmethod
    def put_model_version(conn: sqlite3.Connection, mv: ModelVersion) -> None:
        """Record a model version."""
        conn.execute(
            "INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?)",
            (mv.name, mv.version, mv.sha256, json.dumps(mv.tags), mv.created_at, mv.path),
        )

    @staticmethod
    def update_model_tags(conn: sqlite3.Connection, name: str, version: int, tags: dict[str, str]) -> None:
        """Change the tags of a version (tags are metadata; they never make a new version)."""
        conn.execute("UPDATE model_versions SET tags = ? WHERE name = ? AND version = ?", (json.dumps(tags), name, version))

    @staticmethod
    def delete_model(conn: sqlite3.Connection, name: str) -> None:
        """Forget every version of a model."""
        conn.execute("DELETE FROM model_versions WHERE name = ?", (name,))


def _service(r: tuple[Any, ...]) -> ServiceRow:
    return ServiceRow(
        name=r[0], cluster=r[1], port=r[2], generation=r[3], launch_hash=r[4], launch=json.loads(r[5]),
        replicas=r[6], gpus_per_replica=r[7], gpu_pool=tuple(json.loads(r[8])), supervisor_pid=r[9],
        supervisor_started=r[10], failures=r[11], failure_generation=r[12], last_error=r[13],
    )
