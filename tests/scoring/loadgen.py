"""A tiny loopback HTTP load generator for the scoring host (run by hand; not a test).

``python tests/scoring/loadgen.py --port 5001 --concurrency 8 --seconds 10 --body-file req.json``
keeps ``concurrency`` keep-alive connections busy with POST /score and prints requests/second.
"""

from __future__ import annotations

import argparse
import asyncio
import time


class Client(asyncio.Protocol):
    def __init__(self, request: bytes, deadline: float, done: asyncio.Future[tuple[int, int]]) -> None:
        self.request = request
        self.deadline = deadline
        self.done = done
        self.buffer = b""
        self.ok = 0
        self.failed = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            status = int(head[9:12])
            self.buffer = self.buffer[end + 4 + length :]
            if status == 200:
                self.ok += 1
            else:
                self.failed += 1
            assert self.transport is not None
            if time.monotonic() < self.deadline:
                self.transport.write(self.request)
            else:
                self.transport.close()
                if not self.done.done():
                    self.done.set_result((self.ok, self.failed))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result((self.ok, self.failed))


async def load(host: str, port: int, path: str, body: bytes, concurrency: int, seconds: float) -> None:
    request = (
        b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (path.encode(), host.encode(), len(body), body)
    )
    loop = asyncio.get_running_loop()
    # Warm-up second, not counted.
    warm = loop.create_future()
    await loop.create_connection(lambda: Client(request, time.monotonic() + 1.0, warm), host, port)
    await warm
    start = time.monotonic()
    deadline = start + seconds
    futures = []
    for _ in range(concurrency):
        done: asyncio.Future[tuple[int, int]] = loop.create_future()
        await loop.create_connection(lambda d=done: Client(request, deadline, d), host, port)  # type: ignore[misc]
        futures.append(done)
    results = await asyncio.gather(*futures)
    elapsed = time.monotonic() - start
    ok = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    print(f"concurrency={concurrency} seconds={elapsed:.2f} ok={ok} failed={failed} req/s={ok / elapsed:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--path", default="/score")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--body-file", required=True)
    args = parser.parse_args()
    with open(args.body_file, "rb") as handle:
        body = handle.read()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(load(args.host, args.port, args.path, body, args.concurrency, args.seconds))


if __name__ == "__main__":
    main()
