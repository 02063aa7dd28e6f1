"""How responses reach the client: whole, in order, with unique ids, however fast the client reads."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
from scoring_hosts import Host

pytestmark = pytest.mark.timeout(60)

UUID_SHAPE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[dict[str, str], bytes]:
    """One HTTP/1.1 response from ``sock`` (``buffer`` keeps what belongs to the next one)."""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(1 << 20)
        assert chunk, "connection closed before the whole body arrived"
        rest += chunk
    buffer[:] = rest[length:]
    return headers, rest[:length]


def test_large_pipelined_responses_arrive_whole_and_in_order_to_a_slow_reader(echo_host: Host) -> None:
    # Several MB per answer and a client that waits before reading: the socket buffer fills, so
    # part of each answer is left for the transport to write later; nothing may be lost or reordered.
    texts = [chr(ord("a") + index) * (3 * 1024 * 1024) for index in range(3)]
    with socket.create_connection(("127.0.0.1", echo_host.port), timeout=30) as sock:
        for index, text in enumerate(texts):
            body = json.dumps({"text": text}).encode()
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nx-request-id: req-%d\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (index, len(body), body))
        time.sleep(1.0)
        buffer = bytearray()
        for index, text in enumerate(texts):
            headers, body = read_response(sock, buffer)
            assert headers["x-request-id"] == f"req-{index}"
            assert json.loads(body) == text


def test_generated_request_ids_are_unique_and_uuid_shaped(echo_host: Host) -> None:
    ids = [echo_host.score({"data": [1]})[1]["x-request-id"] for _ in range(20)]
    assert len(set(ids)) == len(ids)
    assert all(UUID_SHAPE.match(request_id) for request_id in ids)
