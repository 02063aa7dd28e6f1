"""Traffic splitting on the local backend: the split file, per-version counters, one-off requests.

The live replicas keep the service's one port; the candidate version runs as a service of its own
(``candidate_of``) on a private port, and the live replicas hand it ``weight`` percent of the
scoring requests (``controller.scoring.forwarding``), as the split file tells them. Each version's
figures are its replicas' own counters, which every replica writes into its status file.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from controller.backends.local.layouts import split_path
from controller.backends.local.processes import process_alive, read_status
from controller.backends.local.stores import ReplicaRow
from controller.structs.rollouts import Counters, Split


def write_split(state_dir: Path, service: str, weight: int, port: int) -> None:
    """Point ``service``'s replicas at the candidate on ``port`` with ``weight``; weight 0 removes the file.

    Written to a temporary file and renamed, so a replica never reads half a split.
    """
    path = split_path(state_dir, service)
    if weight <= 0:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(Split(weight, port).to_json()))
    os.replace(tmp, path)


def read_split(state_dir: Path, service: str) -> Split | None:
    """The split ``service``'s replicas follow now, if any."""
    try:
        return Split.from_json(json.loads(split_path(state_dir, service).read_text()))
    except (OSError, ValueError):
        return None


def replica_counters(replicas: Iterable[ReplicaRow]) -> dict[str, Counters]:
    """Each live replica's own request counters, keyed by pid and start time (a reused pid is another replica)."""
    counters = {}
    for rep in replicas:
        if process_alive(rep.pid, rep.started):
            counters[f"{rep.pid}@{rep.started:.3f}"] = Counters.from_json(read_status(rep.status_file).traffic)
    return counters


def post_once(port: int, path: str, body: bytes, authorization: str | None, timeout_s: float) -> tuple[int, bytes]:
    """POST ``body`` to ``127.0.0.1:port`` and return the status and body (an HTTP error is an answer too)."""
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())
    except OSError as exc:
        return 0, f"no answer: {exc}".encode()
