"""What passes between the local backend and the scoring-host replicas it starts: one process boundary.

Both sides read these definitions, so neither can drift from the other:

* the launch arguments: ``ServiceLaunch`` (what every replica of a service is told, written by the
  backend into the service's row) and ``ReplicaLaunch`` (what the supervisor adds per replica),
  both spelled with ``Flag``, which the scoring host's parser (``controller.scoring.options``) uses;
* the key file: ``keys_document`` / ``token_key_document`` write it, ``AUTH_FIELDS`` says which
  fields the scoring host accepts for each ``--auth`` mode;
* the status file: ``status_document`` and ``load_fields`` are what a replica writes,
  ``ReplicaStatus.from_json`` what the supervisor and the backend read;
* the split file a canary's live replicas follow is ``controller.structs.rollouts.Split``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

SCORING_MODULE: Final = "controller.scoring"
"""What a replica runs: ``python -m controller.scoring``."""


class Flag(StrEnum):
    """The scoring host's command-line flags that the local backend and its supervisor pass."""

    MODEL_DIR = "--model-dir"
    SERVICE_NAME = "--service-name"
    AUTH = "--auth"
    SCORING_TIMEOUT_MS = "--scoring-timeout-ms"
    MAX_CONCURRENT = "--max-concurrent"
    MAX_QUEUE_WAIT_MS = "--max-queue-wait-ms"
    TENSORFLOW_COMPAT = "--tensorflow-compat"
    LOG_FORMAT = "--log-format"
    METRICS_DIR = "--metrics-dir"
    VERSION_LABEL = "--version-label"
    KEYS_FILE = "--keys-file"
    ENTRY_SCRIPT = "--entry-script"
    SOURCE_DIR = "--source-dir"
    LISTEN_FD = "--listen-fd"
    FD_SOCKET = "--fd-socket"
    DEFER_ACCEPT = "--defer-accept"
    STATUS_FILE = "--status-file"
    REPLICA = "--replica"
    SPLIT_FILE = "--split-file"


@dataclass(frozen=True)
class ServiceLaunch:
    """The command line every replica of one service version runs (per-replica flags aside)."""

    python: str
    model_dir: str
    service_name: str
    auth: str
    scoring_timeout_ms: int
    max_concurrent: int
    max_queue_wait_ms: int
    tensorflow_compat: str
    metrics_dir: str
    version_label: str
    keys_file: str | None = None
    entry_script: str | None = None
    source_dir: str | None = None

    def argv(self) -> list[str]:
        """The command line. Its text is part of the service's launch hash: a change rolls the replicas."""
        argv = [self.python, "-m", SCORING_MODULE, Flag.MODEL_DIR, self.model_dir,
                Flag.SERVICE_NAME, self.service_name, Flag.AUTH, self.auth,
                Flag.SCORING_TIMEOUT_MS, str(self.scoring_timeout_ms),
                Flag.MAX_CONCURRENT, str(self.max_concurrent),
                Flag.MAX_QUEUE_WAIT_MS, str(self.max_queue_wait_ms),
                Flag.TENSORFLOW_COMPAT, self.tensorflow_compat, Flag.LOG_FORMAT, "json",
                # One /metrics for all replicas, each series labelled with its replica and what it serves.
                Flag.METRICS_DIR, self.metrics_dir, Flag.VERSION_LABEL, self.version_label]
        if self.keys_file is not None:
            argv += [Flag.KEYS_FILE, self.keys_file]
        if self.entry_script is not None:
            argv += [Flag.ENTRY_SCRIPT, self.entry_script]
            if self.source_dir is not None:
                argv += [Flag.SOURCE_DIR, self.source_dir]
        return [str(a) for a in argv]


@dataclass(frozen=True)
class ReplicaLaunch:
    """What the supervisor adds for one replica: the shared socket, its status file, its slot, the split."""

    listen_fd: int
    fd_socket: str
    status_file: str
    replica: int
    split_file: str | None = None

    def argv(self) -> list[str]:
        """The per-replica flags (the replica accepts nothing until its ``init()`` has finished)."""
        argv = [Flag.LISTEN_FD, str(self.listen_fd), Flag.FD_SOCKET, self.fd_socket,
                Flag.DEFER_ACCEPT, Flag.STATUS_FILE, self.status_file, Flag.REPLICA, str(self.replica)]
        if self.split_file is not None:
            argv += [Flag.SPLIT_FILE, self.split_file]
        return [str(a) for a in argv]


# -- the key file ----------------------------------------------------------------------------------

PRIMARY_KEY: Final = "primaryKey"
SECONDARY_KEY: Final = "secondaryKey"
TOKEN_SIGNING_KEY: Final = "tokenSigningKey"
AUTH_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {"key": (PRIMARY_KEY, SECONDARY_KEY), "token": (TOKEN_SIGNING_KEY,)}
"""The key file's fields a scoring request may carry, for each ``--auth`` mode."""


def keys_document(primary: str, secondary: str) -> dict[str, str]:
    """The key file of a service with ``auth: key``."""
    return {PRIMARY_KEY: primary, SECONDARY_KEY: secondary}


def token_key_document(key: str) -> dict[str, str]:
    """The key file of a service with ``auth: token``: the key its tokens are signed with."""
    return {TOKEN_SIGNING_KEY: key}


# -- the status file -------------------------------------------------------------------------------


class ReplicaState(StrEnum):
    """Where a replica is, as its status file says."""

    INITIALIZING = "initializing"
    READY = "ready"
    FAILED = "failed"


IN_FLIGHT: Final = "inFlight"
CAPACITY: Final = "capacity"
TRAFFIC: Final = "traffic"


def status_document(pid: int, state: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A replica's status file: its pid, state and error, plus what it reports (``load_fields``, devices…)."""
    return {"pid": pid, "state": state, "error": None, **fields}


def load_fields(in_flight: int, capacity: int, traffic: Mapping[str, Any] | None) -> dict[str, Any]:
    """The load a serving replica reports: requests in flight, its capacity, and its request counters."""
    fields: dict[str, Any] = {IN_FLIGHT: in_flight, CAPACITY: capacity}
    if traffic is not None:
        fields[TRAFFIC] = traffic
    return fields


def _count(value: object) -> int | None:
    """A non-negative integer, else None (a status file is read while replicas write it)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


@dataclass(frozen=True)
class ReplicaStatus:
    """A replica's status file as the supervisor and the backend read it (``initializing`` until written)."""

    state: str = ReplicaState.INITIALIZING
    error: str | None = None
    in_flight: int | None = None
    capacity: int | None = None
    traffic: Any = None

    @classmethod
    def from_json(cls, data: object) -> ReplicaStatus:
        """What ``status_document`` wrote; anything else reads as ``initializing``."""
        if not isinstance(data, dict):
            return cls()
        error = data.get("error")
        return cls(str(data.get("state", ReplicaState.INITIALIZING)), None if error is None else str(error),
                   _count(data.get(IN_FLIGHT)), _count(data.get(CAPACITY)), data.get(TRAFFIC))
