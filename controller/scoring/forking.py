"""``--workers N``: a parent that pre-forks N scoring processes sharing one listening socket.

The parent runs no Python web code: it forks before anything heavy is imported (TensorFlow must
not be imported before a fork), collects each child's state over a pipe, writes the combined
status file (``ready`` once every child is), forwards SIGTERM, and exits non-zero as soon as a
child fails or dies unexpectedly, so the supervisor restarts the whole replica.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson

from controller.scoring.options import ScoringOptions
from controller.scoring.reporting import log_event
from controller.scoring.serving import serve_process

STOP_LIMIT_S = 15.0


def _pipe_reporter(fd: int) -> Callable[..., None]:
    def report(state: str, error: str | None = None, **fields: Any) -> None:
        os.write(fd, orjson.dumps({"state": state, "error": error, **fields}) + b"\n")

    return report


def serve_forked(options: ScoringOptions, listener: socket.socket,
                 write_status: Callable[..., None], start_fd_server: Callable[[], Callable[[], None]]) -> int:
    """Fork ``options.workers`` children on ``listener`` and supervise them; returns the exit status."""
    pipes: dict[int, int] = {}
    for _ in range(options.workers):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            for other in pipes.values():
                os.close(other)
            code = 1
            try:
                code = serve_process(options, listener, _pipe_reporter(write_fd), lambda: None)
            finally:
                os._exit(code)
        os.close(write_fd)
        pipes[pid] = read_fd
    stop_fd_server = start_fd_server()
    stopping = False

    def on_term(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    states = dict.fromkeys(pipes, "initializing")
    buffers = dict.fromkeys(pipes, b"")
    gpus: Any = None
    device: dict[str, Any] = {}  # the workers' DeviceReport fields (one model, one device: the last says it)
    code = 0
    stop_deadline: float | None = None
    write_status("initializing")
    while pipes:
        if stopping and stop_deadline is None:
            log_event("draining", workers=len(pipes))
            stop_fd_server()
            listener.close()
            for pid in pipes:
                _signal(pid, signal.SIGTERM)
            stop_deadline = time.monotonic() + STOP_LIMIT_S
        if stop_deadline is not None and time.monotonic() > stop_deadline:
            for pid in pipes:
                _signal(pid, signal.SIGKILL)
        try:
            readable, _w, _x = select.select(list(pipes.values()), [], [], 0.1)
        except InterruptedError:
            readable = []
        for pid, fd in list(pipes.items()):
            if fd in readable:
                chunk = os.read(fd, 65536)
                buffers[pid] += chunk
                *lines, buffers[pid] = buffers[pid].split(b"\n")
                for line in lines:
                    message = orjson.loads(line)
                    states[pid] = message["state"]
                    gpus = message.get("tensorflowGpus", gpus)
                    device.update({k: message[k] for k in ("device", "deviceSource", "deviceName") if k in message})
                    if message["state"] == "failed" and not stopping:
                        write_status("failed", error=message.get("error"))
                        stopping, code = True, 1
                if states and all(state == "ready" for state in states.values()) and not stopping:
                    write_status("ready", tensorflowGpus=gpus, **device)
            done_pid, status = os.waitpid(pid, os.WNOHANG)
            if done_pid:
                os.close(pipes.pop(pid))
                states.pop(pid, None)
                if not stopping:
                    log_event("worker_died", worker_pid=pid, status=status)
                    write_status("failed", error=f"worker {pid} exited with status {status}")
                    stopping, code = True, 1
    return code


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
