"""Whether the state directory takes writes: checked before each reconcile, shown in status and readiness.

History, the local backend's records, Git snapshots and service files all live there. When it is
full nothing can be recorded, so a reconcile is not attempted (services stay supervised: their
supervisors need no disk to restart replicas); the condition names the folder rather than
letting the first victim (the Git fetch, the history) take the blame.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any

PROBE_NAME = ".write-probe"
PROBE_BYTES = b"\0" * 4096
"""One page: a filesystem that cannot take it cannot take a history row either."""


def state_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot take writes now, or None when it can (a small file is written and removed)."""
    probe = path / PROBE_NAME
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, PROBE_BYTES)
        finally:
            os.close(fd)
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        return f"state dir {'full' if full else 'not writable'}: {path}: {exc.strerror or exc}"
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return None


def state_dir_status(path: Path, problem: str | None) -> dict[str, Any]:
    """The ``stateDir`` section of the controller's status."""
    return {"path": str(path), "writable": problem is None,
            "full": problem is not None and problem.startswith("state dir full"), "error": problem}
