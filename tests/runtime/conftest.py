"""Fixtures for the controller process: real Git repos in temp folders, real subprocesses, real HTTP."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil
import pytest

T = TypeVar("T")
AUTHOR = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def eventually(probe: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except (OSError, ValueError) as exc:
            last = exc
        else:
            last = result
            if result:
                return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


class GitRepo:
    """A non-bare Git repo in a temp folder, committed to with the ``git`` command."""

    def __init__(self, root: Path, branch: str = "main") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", branch)

    def git(self, *args: str) -> str:
        env = {**os.environ, **AUTHOR}
        done = subprocess.run(
            ["git", *args], cwd=self.root, env=env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    def write(self, rel: str, text: str | bytes) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    def commit(self, message: str = "change") -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")


def doc(kind: str, name: str, spec: dict[str, object]) -> str:
    """One manifest as YAML-compatible JSON text."""
    return (
        json.dumps({"apiVersion": "amlops.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})
        + "\n"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, str]:
    """One request; (status, body text) without raising on HTTP errors."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def _amlops_run_argv() -> list[str]:
    """``amlops run`` through the real command line (``python -m controller run``): a broken subcommand fails here."""
    return [sys.executable, "-m", "controller", "run"]


class Controller:
    """One ``amlops run`` subprocess with its log file and HTTP address."""

    def __init__(
        self, args: list[str], log: Path, env: dict[str, str] | None = None, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = log.open("ab")
        argv = [*_amlops_run_argv(), *args, "--listen", f"127.0.0.1:{self.port}"]
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def get(self, path: str) -> tuple[int, str]:
        return http("GET", self.base + path, timeout=5)

    def status(self) -> dict[str, Any]:
        code, body = self.get("/api/status")
        assert code == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"controller exited with {self.proc.returncode}:\n{self.log()}")
            return self.get("/readyz")[0] == 200

        eventually(ready, timeout, "controller /readyz 200")

    def wait_reconciles(self, n: int, timeout: float = 60) -> dict[str, Any]:
        return eventually(lambda: (s := self.status())["reconciles"] >= n and s, timeout, f"{n} reconciles")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def controllers() -> Iterator[Callable[..., Controller]]:
    """Start controllers with ``controllers(args, log=..., env=...)``; all are killed at the end."""
    started: list[Controller] = []

    def start(
        args: list[str], log: Path, env: dict[str, str] | None = None, port: int | None = None
    ) -> Controller:
        c = Controller(args, log, env, port)
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()


def stop_local_services(state_dir: Path) -> None:
    """Stop every service the local backend runs under ``state_dir`` and kill what is left."""
    if (state_dir / "local.sqlite").exists() or state_dir.exists():
        from controller.backends.local import LocalBackend

        with contextlib.suppress(Exception):
            backend = LocalBackend(state_dir, "amlops")
            with backend.store.snapshot() as conn:
                names = [s.name for s in backend.store.all_services(conn)]
            for name in names:
                with contextlib.suppress(Exception):
                    backend._stop_service(name)
            backend.close()
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(str(state_dir) in part for part in (p.info.get("cmdline") or []))
    ]
    for proc in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(leftovers, timeout=5)


# A numpy entry script and its model file: services that start fast (no TensorFlow) for loop tests.
SCORE_PY = textwrap.dedent(
    """
    import json
    import os

    import numpy as np


    def init():
        global scale
        scale = np.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], "scale.npy"))


    def run(raw_data):
        return (np.array(json.loads(raw_data)["data"], dtype=float) * scale).tolist()
    """
)


def npy(value: float) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array(value))
    return buffer.getvalue()
