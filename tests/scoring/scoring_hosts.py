"""Helpers and fixtures that start real scoring host processes and talk to them over loopback HTTP."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


class Host:
    """A running ``python -m controller.scoring`` process."""

    def __init__(self, process: subprocess.Popen[bytes], status_file: Path, log_file: Path) -> None:
        self.process = process
        self.status_file = status_file
        self.log_file = log_file
        self.port = 0

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_file.read_text()))
        except (OSError, ValueError):
            return {}

    def wait_state(self, *states: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the status file shows one of ``states``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status.get("state") in states:
                self.port = int(status.get("port") or 0)
                return status
            if self.process.poll() is not None and status.get("state") not in states:
                break
            time.sleep(0.02)
        raise AssertionError(f"host never reached {states}: status={self.status()} log:\n{self.log()}")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None, timeout: float = 20.0) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: (status, lower-cased headers, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def score(self, payload: Any, path: str = "/score", headers: dict[str, str] | None = None,
              timeout: float = 20.0) -> tuple[int, dict[str, str], bytes]:
        body = payload if isinstance(payload, bytes | str) else json.dumps(payload)
        return self.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})}, timeout)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


StartHost = Callable[..., Host]


@pytest.fixture
def start_host(tmp_path: Path) -> Iterator[StartHost]:
    """Start scoring hosts (``start_host(*flags, env=..., pass_fds=..., wait=True)``); all stopped after."""
    hosts: list[Host] = []

    def start(*flags: str, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = (),
              wait: bool = True, timeout: float = 30.0) -> Host:
        index = len(hosts)
        status_file = tmp_path / f"status-{index}.json"
        log_file = tmp_path / f"host-{index}.log"
        args = [sys.executable, "-m", "controller.scoring", "--status-file", str(status_file), *flags]
        if "--port" not in flags and "--listen-fd" not in flags:
            args += ["--port", "0"]
        with open(log_file, "wb") as log:
            process = subprocess.Popen(
                args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, pass_fds=pass_fds,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
            )
        host = Host(process, status_file, log_file)
        hosts.append(host)
        if wait:
            host.wait_state("ready", timeout=timeout)
        return host

    yield start
    for host in hosts:
        if host.process.poll() is None:
            host.process.send_signal(signal.SIGTERM)
    for host in hosts:
        try:
            host.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            host.process.kill()
            host.process.wait()


ECHO_SCRIPT = '''
import json
import os
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def init():
    time.sleep(float(os.environ.get("TEST_INIT_DELAY", "0")))
    if os.environ.get("TEST_INIT_FAIL"):
        raise RuntimeError("init exploded on purpose")


def run(raw_data):
    with open(os.path.join(HERE, "calls.log"), "a") as log:
        log.write(raw_data.replace("\\n", " ") + "\\n")
    request = json.loads(raw_data)
    if "raise" in request:
        raise ValueError(request["raise"])
    time.sleep(request.get("sleep", 0))
    if "text" in request:
        return request["text"]
    data = np.asarray(request.get("data", [0.0]), dtype=np.float64)
    return {"sum": data.sum(), "doubled": data * 2, "pid": os.getpid(), "cwd": os.getcwd(),
            "model_dir": os.environ.get("AZUREML_MODEL_DIR")}
'''


def write_script(folder: Path, text: str, name: str = "score.py") -> Path:
    """Write an entry script into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def echo_dir(tmp_path: Path) -> Path:
    """A source dir holding the numpy-only test entry script (``calls.log`` records each run())."""
    write_script(tmp_path / "src", ECHO_SCRIPT)
    return tmp_path / "src"


def calls(source_dir: Path) -> list[str]:
    """The raw bodies run() has seen."""
    path = source_dir / "calls.log"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def echo_host(start_host: StartHost, echo_dir: Path) -> Host:
    """A ready host serving the echo script."""
    return start_host("--entry-script", "score.py", "--source-dir", str(echo_dir))


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until true (fails the test after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


