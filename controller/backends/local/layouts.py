"""Where the local backend keeps things in its state folder: the database, per-service folders,
replica logs, sockets and split files. The backend, its handlers and the supervisor all read it."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path


def database_path(state_dir: Path) -> Path:
    """Where the state database lives in a state directory."""
    return state_dir / "state.db"


def service_dir(state_dir: Path, service: str) -> Path:
    """Per-service folder: logs, status files, keys, copied sources."""
    return state_dir / "services" / service


def socket_dir(state_dir: Path) -> Path:
    """A folder for unix sockets whose paths stay under the 107-byte limit, however deep state_dir is."""
    preferred = state_dir / "run"
    if len(str(preferred)) <= 60:
        return preferred
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"amlops-{digest}"


CANDIDATE_SUFFIX = ".candidate"
"""A service's candidate version (a canary) runs as a service of its own under this suffixed name,
which no manifest can declare (service names hold no dots)."""


def candidate_of(service: str) -> str:
    """The name the candidate version of ``service`` runs under."""
    return service + CANDIDATE_SUFFIX


def split_path(state_dir: Path, service: str) -> Path:
    """The split file ``service``'s replicas poll (``controller.structs.rollouts.Split``)."""
    return service_dir(state_dir, service) / "split.json"


def log_path(state_dir: Path, service: str, slot: int) -> Path:
    """The log file of replica ``slot`` of ``service`` (restarts of the slot append to it)."""
    return service_dir(state_dir, service) / "logs" / f"replica-{slot}.log"
