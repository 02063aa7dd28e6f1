"""Load generation with ``wrk`` (C, epoll, one thread): POST a fixed body for a fixed duration.

``wrk`` is used rather than a Python client so that the load generator is not the bottleneck: its
own CPU time is measured (children's rusage) and printed next to each figure, so a reader can see
how much of the two cores it took from the server under test.

``run_load`` falls back to a small Python client (one keep-alive connection per thread) where
``wrk`` is not installed, e.g. on a machine with no package mirror: it saturates at a few
thousand requests per second, so figures from it say which generator took them.
"""

from __future__ import annotations

import http.client
import json
import resource
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(%(body)s, "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"p50_us\\":%%d,\\"p99_us\\":%%d,\\"max_us\\":%%d,"
    .. "\\"connect\\":%%d,\\"read\\":%%d,\\"write\\":%%d,\\"status\\":%%d,\\"timeout\\":%%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass(frozen=True)
class LoadResult:
    """One wrk run: throughput, latency percentiles, errors and the load generator's own CPU use."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    wrk_cpu: float  # wrk's CPU seconds per wall second (1.0 = one full core)

    @property
    def rps(self) -> float:
        """Successful requests per second (non-2xx answers are counted as errors, not throughput)."""
        return (self.requests - self.errors) / self.seconds if self.seconds else 0.0


def require_wrk() -> str:
    """The path of ``wrk``; raises ``RuntimeError`` with how to install it."""
    path = shutil.which("wrk")
    if not path:
        raise RuntimeError("wrk is not installed: apt-get update && apt-get install -y wrk")
    return path


def lua_script(folder: Path, name: str, body: bytes) -> Path:
    """Write ``body`` and a wrk Lua script that POSTs it; returns the script's path."""
    body_path = folder / f"{name}.json"
    body_path.write_bytes(body)
    script = folder / f"{name}.lua"
    script.write_text(LUA % {"body": json.dumps(str(body_path))})
    return script


def run_wrk(url: str, script: Path, connections: int, seconds: float, timeout_s: int = 10) -> LoadResult:
    """Run wrk with one thread and ``connections`` keep-alive connections; parse its summary."""
    wrk = require_wrk()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s}s",
         "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + timeout_s + 30,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {out.stdout[-500:]} {out.stderr[-500:]}")
    data = json.loads(line[len("WRKJSON "):])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    errors = data["connect"] + data["read"] + data["write"] + data["status"] + data["timeout"]
    return LoadResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
        wrk_cpu=cpu / wall if wall else 0.0,
    )


def post(url: str, body: bytes, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """One POST (used for readiness and to check answers agree across servers)."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def load_generator() -> str:
    """``wrk`` when installed, else ``python`` (see :func:`run_load`)."""
    return "wrk" if shutil.which("wrk") else "python"


def run_load(url: str, body: bytes, script: Path, connections: int, seconds: float) -> LoadResult:
    """``wrk`` with ``script`` when installed, else :func:`run_python_load` with ``body``."""
    if load_generator() == "wrk":
        return run_wrk(url, script, connections, seconds)
    return run_python_load(url, body, connections, seconds)


def run_python_load(url: str, body: bytes, connections: int, seconds: float, timeout_s: float = 10.0) -> LoadResult:
    """POST ``body`` on ``connections`` keep-alive connections (one thread each) for ``seconds``.

    Every exception and every non-200 answer counts as an error. ``wrk_cpu`` is this process's
    CPU seconds per wall second over the run (the client's own cost, as for wrk).
    """
    parts = urlsplit(url)
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections  # non-200 answers and exceptions
    dropped = [0] * connections  # exceptions only: requests with no answer to time
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        conn: http.client.HTTPConnection | None = None
        headers = {"Content-Type": "application/json"}
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout_s)
                conn.request("POST", parts.path or "/", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    errors[index] += 1
            except (OSError, http.client.HTTPException):
                errors[index] += 1
                dropped[index] += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            latencies[index].append(time.monotonic() - started)
        if conn is not None:
            conn.close()

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout_s + 5)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    timings = sorted(t for per in latencies for t in per)
    failed = sum(errors)

    def percentile(q: float) -> float:
        return timings[min(len(timings) - 1, int(q * len(timings)))] * 1000 if timings else 0.0

    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # Non-200 answers were timed too; like wrk, they count as requests and as errors.
    return LoadResult(requests=len(timings) + sum(dropped), seconds=wall, p50_ms=percentile(0.5), p99_ms=percentile(0.99),
                      errors=failed, wrk_cpu=cpu / wall if wall else 0.0)
