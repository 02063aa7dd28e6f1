"""Weighted hand-off of scoring requests from the live replicas to a candidate version.

During a canary the live replicas keep accepting every connection on the service's one port, as
always; each scoring request is then either run here or handed to the candidate's own port. The
choice is per request, not per connection, so keep-alive clients are split as exactly as new
ones: a credit counter adds ``weight`` per request and forwards whenever it reaches 100, so every
live replica forwards exactly ``weight`` requests in each hundred it receives.

The split comes from a small JSON file (``controller.structs.rollouts.Split``) that the backend
writes and each replica polls every ``SPLIT_POLL_S``; without the file, or at weight 0, a request
pays one attribute test. Forwarded requests travel over pooled keep-alive connections. A request
the candidate never answered a byte of (its port closed, a pooled connection it had dropped) is
run here instead, so a candidate going away never fails a client's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

import httptools
import orjson

from controller.structs.rollouts import SPLIT_POLL_S, Split

Answer = tuple[int, dict[bytes, bytes], bytes]
_HOP_HEADERS = frozenset({b"host", b"connection", b"keep-alive", b"content-length", b"transfer-encoding", b"upgrade"})
POOL_MAX = 32


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to the candidate; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.answered_bytes = False
        self.closed = False
        self.keep_alive = True
        self.deadline = 0.0
        self.done: Callable[[Answer | None], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail()

    def data_received(self, data: bytes) -> None:
        self.answered_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        done, self.done = self.done, None
        if done is not None:
            done((self.parser.get_status_code(), self.headers, b"".join(self.body)))

    def _fail(self) -> None:
        """The exchange ends without an answer: None (run it here) if the candidate sent nothing, else 502."""
        done, self.done = self.done, None
        if done is not None:
            done((502, {}, b"the candidate version closed the connection mid-answer") if self.answered_bytes else None)

    def send(self, data: bytes, deadline: float, done: Callable[[Answer | None], None]) -> None:
        self.headers, self.body, self.answered_bytes = {}, [], False
        self.deadline, self.done = deadline, done
        assert self.transport is not None
        self.transport.write(data)

    def expire(self) -> None:
        """Past its deadline: answer 504 and drop the connection (a late answer has nowhere to go)."""
        done, self.done = self.done, None
        self.close()
        if done is not None:
            done((504, {}, b"the candidate version did not answer in time"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Splitter:
    """Follows a split file and hands the chosen share of scoring requests to the candidate.

    Forwarding is callback-driven, with no task or timer per request: a pooled connection takes the
    request at once, and the poll tick that reads the split file also expires overdue exchanges.
    """

    def __init__(self, path: str, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.weight = 0
        self.port = 0
        self.credit = 0
        self.idle: list[_Upstream] = []
        self.busy: set[_Upstream] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._seen: tuple[int, int] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the file now and every ``SPLIT_POLL_S`` after."""
        self.loop = loop
        self.poll()
        loop.call_later(SPLIT_POLL_S, self._tick)

    def _tick(self) -> None:
        self.poll()
        now = time.monotonic()
        for upstream in [u for u in self.busy if u.deadline < now]:
            upstream.expire()
        assert self.loop is not None
        self.loop.call_later(SPLIT_POLL_S, self._tick)

    def poll(self) -> None:
        """Take up a changed split file (one ``stat`` when it did not change)."""
        try:
            st = os.stat(self.path)
        except OSError:
            self._set(None)
            self._seen = None
            return
        seen = (st.st_mtime_ns, st.st_ino)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            with open(self.path, "rb") as handle:
                split = Split.from_json(orjson.loads(handle.read()))
        except (OSError, ValueError):
            split = None
        self._set(split)

    def _set(self, split: Split | None) -> None:
        weight, port = (split.weight, split.port) if split is not None else (0, 0)
        if port != self.port:
            for upstream in self.idle:
                upstream.close()
            self.idle.clear()
        self.weight, self.port = weight, port

    def take(self) -> bool:
        """Whether this request goes to the candidate (exactly ``weight`` in each hundred)."""
        self.credit += self.weight
        if self.credit >= 100:
            self.credit -= 100
            return True
        return False

    def forward(self, url: bytes, headers: dict[bytes, bytes], body: bytes, done: Callable[[Answer | None], None]) -> None:
        """Send the request to the candidate; ``done`` gets its answer, or None when it answered nothing
        (then the request runs here)."""
        head = [b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: %d\r\n" % (url, len(body))]
        head.extend(b"%s: %s\r\n" % item for item in headers.items() if item[0] not in _HOP_HEADERS)
        self._send(b"".join(head) + b"\r\n" + body, self.port, done)

    def _send(self, data: bytes, port: int, done: Callable[[Answer | None], None]) -> None:
        while self.idle:
            upstream = self.idle.pop()
            if not upstream.closed and upstream.transport is not None and not upstream.transport.is_closing():
                self._exchange(upstream, data, port, done, retry=True)
                return
        if not port or self.loop is None:
            done(None)
            return
        self.loop.create_task(self._connect(data, port, done))

    async def _connect(self, data: bytes, port: int, done: Callable[[Answer | None], None]) -> None:
        assert self.loop is not None
        try:
            _transport, upstream = await self.loop.create_connection(_Upstream, "127.0.0.1", port)
        except OSError:
            done(None)
            return
        self._exchange(upstream, data, port, done, retry=False)

    def _exchange(self, upstream: _Upstream, data: bytes, port: int, done: Callable[[Answer | None], None],
                  retry: bool) -> None:
        def settle(answer: Answer | None) -> None:
            self.busy.discard(upstream)
            if answer is None and retry:
                self._send(data, port, done)  # a pooled connection the candidate had dropped: a fresh one
                return
            if answer is not None and upstream.keep_alive and not upstream.closed and port == self.port \
                    and len(self.idle) < POOL_MAX:
                self.idle.append(upstream)
            elif not upstream.closed:
                upstream.close()
            done(answer)

        self.busy.add(upstream)
        upstream.send(data, time.monotonic() + self.timeout_s, settle)

    def close(self) -> None:
        """Close pooled connections."""
        for upstream in self.idle:
            with contextlib.suppress(Exception):
                upstream.close()
        self.idle.clear()
