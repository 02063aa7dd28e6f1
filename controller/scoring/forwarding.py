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
        self.waiter: asyncio.Future[Answer] | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.answered_bytes = False
        self.closed = False
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("the candidate closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.answered_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed answer from the candidate: {exc}"))
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), self.headers, b"".join(self.body)))

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, loop: asyncio.AbstractEventLoop, data: bytes) -> asyncio.Future[Answer]:
        self.headers, self.body, self.answered_bytes = {}, [], False
        self.waiter = loop.create_future()
        assert self.transport is not None
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Splitter:
    """Follows a split file and hands the chosen share of scoring requests to the candidate."""

    def __init__(self, path: str, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.weight = 0
        self.port = 0
        self.credit = 0
        self.idle: list[_Upstream] = []
        self._seen: tuple[int, int] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the file now and every ``SPLIT_POLL_S`` after."""
        self.poll()
        loop.call_later(SPLIT_POLL_S, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.poll()
        loop.call_later(SPLIT_POLL_S, self._tick, loop)

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

    async def forward(self, url: bytes, headers: dict[bytes, bytes], body: bytes) -> Answer | None:
        """The candidate's answer, or None when it answered nothing (then the request runs here)."""
        loop = asyncio.get_running_loop()
        head = [b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: %d\r\n" % (url, len(body))]
        head.extend(b"%s: %s\r\n" % item for item in headers.items() if item[0] not in _HOP_HEADERS)
        data = b"".join(head) + b"\r\n" + body
        port = self.port
        while self.idle:
            upstream = self.idle.pop()
            if upstream.closed:
                continue
            answer = await self._exchange(loop, upstream, data)
            if answer is not None:
                return self._keep(upstream, port, answer)
            # A pooled connection the candidate had already dropped: try a fresh one.
        if not port:
            return None
        try:
            _transport, upstream = await loop.create_connection(_Upstream, "127.0.0.1", port)
        except OSError:
            return None
        answer = await self._exchange(loop, upstream, data)
        return None if answer is None else self._keep(upstream, port, answer)

    async def _exchange(self, loop: asyncio.AbstractEventLoop, upstream: _Upstream, data: bytes) -> Answer | None:
        try:
            return await asyncio.wait_for(upstream.send(loop, data), self.timeout_s)
        except (OSError, ConnectionError):
            upstream.close()
            if upstream.answered_bytes:
                return (502, {}, b"the candidate version closed the connection mid-answer")
            return None
        except TimeoutError:
            upstream.close()
            return (504, {}, b"the candidate version did not answer in time")

    def _keep(self, upstream: _Upstream, port: int, answer: Answer) -> Answer:
        if upstream.keep_alive and not upstream.closed and port == self.port and len(self.idle) < POOL_MAX:
            self.idle.append(upstream)
        else:
            upstream.close()
        return answer

    def close(self) -> None:
        """Close pooled connections."""
        for upstream in self.idle:
            with contextlib.suppress(Exception):
                upstream.close()
        self.idle.clear()
