"""Replicas sharing one listening socket: fd hand-over, rolling replacement, pre-forked workers."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from scoring_hosts import Host, StartHost, wait_until

pytestmark = pytest.mark.timeout(90)


def fetch_listening_fd(path: Path) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(str(path))
        _msg, fds, _flags, _addr = socket.recv_fds(client, 64, 1)
    assert len(fds) == 1
    return fds[0]


def pid_of(host: Host) -> int:
    status, _headers, body = host.score({"data": [1]})
    assert status == 200
    return int(json.loads(body)["pid"])


def test_a_replica_started_on_the_shared_socket_takes_over_without_losing_a_request(
    start_host: StartHost, echo_dir: Path, tmp_path: Path
) -> None:
    fd_socket = tmp_path / "listen.sock"
    old = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir), "--fd-socket", str(fd_socket))
    fd = fetch_listening_fd(fd_socket)
    assert socket.socket(fileno=os.dup(fd)).getsockname()[1] == old.port
    new = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir), "--listen-fd", str(fd),
                     "--fd-socket", str(fd_socket), "--defer-accept", "--log-format", "json", pass_fds=(fd,),
                     env={"TEST_INIT_DELAY": "0.3"})
    os.close(fd)
    assert new.port == old.port
    new.port = old.port

    pids: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                pids.append(pid_of(old))
            except Exception as exc:  # every failure is recorded, none may happen
                failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(pids) > 50)
    assert old.stop() == 0
    served_before = len(pids)
    wait_until(lambda: len(pids) > served_before + 50)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    assert failures == []
    assert pids[-1] == new.process.pid
    assert old.process.pid in pids
    # The new replica now hands out the socket itself.
    fd_again = fetch_listening_fd(fd_socket)
    os.close(fd_again)


def test_defer_accept_leaves_connections_to_ready_replicas(
    start_host: StartHost, echo_dir: Path, tmp_path: Path
) -> None:
    fd_socket = tmp_path / "listen.sock"
    ready = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir), "--fd-socket", str(fd_socket))
    fd = fetch_listening_fd(fd_socket)
    slow = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir), "--listen-fd", str(fd),
                      "--defer-accept", pass_fds=(fd,), env={"TEST_INIT_DELAY": "3"}, wait=False)
    os.close(fd)
    slow.wait_state("initializing")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert pid_of(ready) == ready.process.pid


def test_pre_forked_workers_share_the_socket(start_host: StartHost, echo_dir: Path) -> None:
    host = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir), "--workers", "2")
    pids: set[int] = set()

    def client() -> None:
        for _ in range(40):
            pids.add(pid_of(host))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert host.process.pid not in pids, "the parent only supervises"
    assert len(pids) == 2
    assert host.stop() == 0
