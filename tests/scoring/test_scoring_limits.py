"""What a hostile or broken client can hold in a scoring host: heads, time, body bytes, memory.

Real scoring processes and raw loopback sockets; health checks must keep answering throughout.
"""

from __future__ import annotations

import socket
import threading
from contextlib import ExitStack, closing, suppress
from pathlib import Path

import psutil
import pytest
from scoring_hosts import Host, StartHost, metric_value, wait_until, write_script

pytestmark = pytest.mark.timeout(120)

# run() answers the body's length; a body starting with "sleep" holds its slot for a moment.
SIZE_SCRIPT = """
import time

def init():
    pass

def run(raw_data):
    if raw_data.startswith("sleep"):
        time.sleep(3)
    return len(raw_data)
"""


@pytest.fixture
def size_dir(tmp_path: Path) -> Path:
    write_script(tmp_path / "size", SIZE_SCRIPT)
    return tmp_path / "size"


def connect(host: Host) -> socket.socket:
    return socket.create_connection(("127.0.0.1", host.port), timeout=10)


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or a reset)."""
    chunks = []
    with suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def healthy(host: Host) -> bool:
    """``/`` and ``/-/ready`` both answer 200 on fresh connections."""
    return host.request("GET", "/", timeout=5)[0] == 200 and host.request("GET", "/-/ready", timeout=5)[0] == 200


def test_a_head_over_the_limits_is_431_or_414_and_the_host_serves_on(start_host: StartHost, size_dir: Path) -> None:
    host = start_host("--entry-script", "score.py", "--source-dir", str(size_dir), "--max-header-bytes", "8192")
    for head, status in ((b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 20000 + b"\r\n\r\n", b"431"),
                         (b"GET /" + b"b" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
                         # Many small headers add up the same way.
                         (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"c" * 100) for i in range(100)) + b"\r\n",
                          b"431")):
        with closing(connect(host)) as sock:
            sock.sendall(head)
            assert read_response(sock).startswith(b"HTTP/1.1 " + status)
    assert host.score("abc")[:3:2] == (200, b"3")
    assert healthy(host)


def test_a_huge_header_is_cut_off_early_without_stalling_health_checks(start_host: StartHost, size_dir: Path) -> None:
    host = start_host("--entry-script", "score.py", "--source-dir", str(size_dir))
    sent = 0
    health: list[bool] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            health.append(healthy(host))

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with closing(connect(host)) as sock:
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
            chunk = b"z" * (1024 * 1024)
            with suppress(BrokenPipeError, ConnectionResetError):
                while sent < 128 * 1024 * 1024:
                    sock.sendall(chunk)
                    sent += len(chunk)
            answer = read_response(sock)
    finally:
        stop.set()
        prober.join(30)
    # The default limit is 64 KiB; socket buffers hold a few MiB more before the close is seen.
    assert sent < 32 * 1024 * 1024, sent
    assert answer.startswith(b"HTTP/1.1 431") or answer == b""
    assert health and all(health)
    assert psutil.Process(host.process.pid).memory_info().rss < 200 * 1024 * 1024


def test_slowloris_connections_are_closed_after_the_header_timeout(start_host: StartHost, size_dir: Path) -> None:
    host = start_host("--entry-script", "score.py", "--source-dir", str(size_dir), "--header-timeout-ms", "1000")
    with ExitStack() as stack:
        slow = [stack.enter_context(closing(connect(host))) for _ in range(50)]
        silent = [stack.enter_context(closing(connect(host))) for _ in range(10)]  # never send a byte
        for sock in slow:
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n")
        stop = threading.Event()

        def dribble() -> None:
            # A header byte now and then: it must not extend the time the head is given.
            while not stop.wait(0.2):
                for sock in slow:
                    with suppress(OSError):
                        sock.sendall(b"X")

        dribbler = threading.Thread(target=dribble)
        dribbler.start()
        try:
            assert healthy(host)
            for sock in slow + silent:
                sock.settimeout(30)
            answers = [read_response(sock) for sock in slow + silent]
        finally:
            stop.set()
            dribbler.join(10)
        assert all(a.startswith(b"HTTP/1.1 408") or a == b"" for a in answers[:50]), {a[:40] for a in answers}
        assert sum(a.startswith(b"HTTP/1.1 408") for a in answers[:50]) >= 1
        assert answers[50:] == [b""] * 10
        assert healthy(host)


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(
    start_host: StartHost, size_dir: Path
) -> None:
    host = start_host("--entry-script", "score.py", "--source-dir", str(size_dir), "--keepalive-timeout-ms", "1000")
    with closing(connect(host)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first
        # Nothing more is sent: the server closes the idle connection (recv sees the end).
        assert read_response(sock) == b""


def test_bodies_over_the_budget_are_503_with_retry_after_and_health_checks_still_answer(
    start_host: StartHost, size_dir: Path
) -> None:
    host = start_host("--entry-script", "score.py", "--source-dir", str(size_dir), "--max-concurrent", "2",
                      "--max-body-bytes-in-flight", str(8 * 1024 * 1024))
    big = 6 * 1024 * 1024
    held: dict[str, tuple[int, dict[str, str], bytes]] = {}
    first = threading.Thread(target=lambda: held.update(first=host.score("sleep" + "x" * (big - 5), timeout=30)))
    first.start()
    try:
        wait_until(lambda: _in_flight(host) == 1, timeout=20)
        status, headers, _ = host.score("y" * big)
        assert status == 503 and headers["retry-after"] == "1"
        assert host.score("small")[:3:2] == (200, b"5")  # small bodies still fit
        assert healthy(host)
    finally:
        first.join(30)
    assert held["first"][:3:2] == (200, str(big).encode())
    assert host.score("y" * big)[:3:2] == (200, str(big).encode())  # the budget came back
    metrics = host.request("GET", "/metrics")[2].decode()
    assert metric_value(metrics, "amlops_scoring_queue_rejections_total", reason="bytes") == 1.0


def test_memory_is_returned_after_large_requests(start_host: StartHost, size_dir: Path) -> None:
    host = start_host("--entry-script", "score.py", "--source-dir", str(size_dir), "--max-concurrent", "4")
    process = psutil.Process(host.process.pid)
    assert host.score("warm")[0] == 200
    baseline = process.memory_info().rss
    size = 40 * 1024 * 1024
    answers: list[tuple[int, dict[str, str], bytes]] = []
    clients = [threading.Thread(target=lambda: answers.append(host.score("x" * size, timeout=60))) for _ in range(4)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(60)
    assert [a[:3:2] for a in answers] == [(200, str(size).encode())] * 4
    # Four 40 MiB bodies (and their decoded strings) came and went: the resident set falls back.
    wait_until(lambda: process.memory_info().rss < baseline + 48 * 1024 * 1024, timeout=20)


def _in_flight(host: Host) -> int:
    # The series carries the replica's identity labels (service, version, replica, worker).
    value = metric_value(host.request("GET", "/metrics")[2].decode(), "amlops_scoring_in_flight")
    return -1 if value is None else int(value)


def test_a_burst_of_large_bodies_gets_answers_within_the_budget_never_resets(
    start_host: StartHost, size_dir: Path
) -> None:
    # Eight clients at once, 30 MB each, against a 64 MiB budget: some are scored, the rest told
    # to retry; none loses its connection, and the process never holds all eight bodies.
    host = start_host("--entry-script", "score.py", "--source-dir", str(size_dir), "--max-concurrent", "8",
                      "--max-body-bytes-in-flight", str(64 * 1024 * 1024))
    process = psutil.Process(host.process.pid)
    assert host.score("warm")[0] == 200
    baseline = process.memory_info().rss
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            with suppress(psutil.Error):
                peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    size = 30 * 1000 * 1000
    answers: list[object] = []

    def client() -> None:
        try:
            status, headers, body = host.score("z" * size, timeout=60)
            answers.append((status, headers.get("retry-after"), body if status == 200 else b""))
        except Exception as exc:  # a reset or a broken pipe is a lost request
            answers.append(repr(exc))

    clients = [threading.Thread(target=client) for _ in range(8)]
    try:
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(90)
    finally:
        stop.set()
        sampler.join(10)
    assert len(answers) == 8 and all(isinstance(a, tuple) for a in answers), answers
    assert set(answers) <= {(200, None, str(size).encode()), (503, "1", b"")}, answers
    assert (200, None, str(size).encode()) in answers and (503, "1", b"") in answers
    assert peak[0] - baseline < 320 * 1024 * 1024, (peak[0] - baseline) >> 20
