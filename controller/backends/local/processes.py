"""Processes as the local backend and its supervisor see them: alive (not a reused pid), killed as
a group, their memory, their logs, their status files, and the listening socket they share."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from pathlib import Path
from typing import BinaryIO

import psutil

from controller.structs.replicas import ReplicaStatus


def open_log(path: Path) -> BinaryIO:
    """``path`` opened for appending, readable by its owner only (logs may hold request data)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # a log made before files were private
    return os.fdopen(fd, "ab")


def process_alive(pid: int | None, started: float | None) -> bool:
    """Whether ``pid`` still runs and is the process that started at ``started`` (not a reused pid)."""
    if pid is None or started is None:
        return False
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) < 0.05 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (a replica and its workers), or ``pid`` alone if it leads none."""
    try:
        os.killpg(pid, signal.SIGKILL)  # the group outlives its leader while a worker is left in it
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # a replica started before replicas had their own group


def resident_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes (0 once it is gone).

    The local backend runs one scoring process per replica (no ``--workers``), so the replica's
    own resident set is its memory; children are not summed, because finding them means scanning
    every process on the machine, each second, for every service.
    """
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def start_time(pid: int) -> float:
    """The start time psutil reports for ``pid`` (what ``process_alive`` compares against)."""
    return psutil.Process(pid).create_time()


def read_status(path: str) -> ReplicaStatus:
    """A replica's status file, or ``initializing`` until it has written one."""
    try:
        return ReplicaStatus.from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError):
        return ReplicaStatus()


def receive_listener(path: str, timeout_s: float = 5.0) -> int:
    """The shared listening socket, fetched from a replica's fd socket (SCM_RIGHTS); a new fd we own.

    The serving end is the scoring host's ``controller.scoring.sockets.FdServer``; only the
    supervisor asks for the socket, so the client end lives here alone.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout_s)
        client.connect(path)
        _msg, fds, _flags, _addr = socket.recv_fds(client, 64, 1)
    if not fds:
        raise OSError(f"{path} sent no file descriptor")
    return fds[0]


def bind_listener(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A new listening socket on ``host:port`` (SO_REUSEADDR, so a just-closed port can be reused)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock
