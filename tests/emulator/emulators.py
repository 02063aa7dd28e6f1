"""Test harness: a real emulator subprocess, its admin API, and SDK subprocesses pointed at it.

SDK work runs in its own process because HTTPS_PROXY / REQUESTS_CA_BUNDLE act process-wide.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# Fast v2 long-running operations (polls every 100 ms) and one AKS cluster with two 1-GPU nodes that a
# KubernetesCompute can attach: /subscriptions/{sub}/resourceGroups/{rg}/.../managedClusters/aks1.
V2_ARGS = ("--poll-ms", "100", "--lro-delay", "0.2", "--aks-cluster", "aks1=Standard_NC6s_v3:2")


@dataclass
class RunningEmulator:
    """One emulator process and what its env.sh says."""

    proc: subprocess.Popen[str]
    port: int
    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/_emulator/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def counts(self) -> dict[str, int]:
        return dict(self.admin("GET", "requests"))

    def request_log(self) -> list[dict[str, Any]]:
        """Every request since the last reset, oldest first: ``at``, ``route``, injected ``status``, ``retryAfter``."""
        return list(self.admin("GET", "requests/log")["requests"])

    def reset_counts(self) -> None:
        self.admin("DELETE", "requests")

    def set_faults(self, rules: list[dict[str, Any]]) -> None:
        self.admin("POST", "faults", {"faults": rules})

    def arm(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One ARM request through the proxy, with a token from the emulator's login, as any ARM client makes it."""
        import requests

        session = requests.Session()
        session.trust_env = False
        session.proxies = {"https": self.env["HTTPS_PROXY"]}
        session.verify = self.env["REQUESTS_CA_BUNDLE"]
        tenant = self.env["AZURE_TENANT_ID"]
        token = session.post(f"https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token", timeout=30, data={
            "grant_type": "client_credentials", "client_id": self.env["AZURE_CLIENT_ID"],
            "client_secret": self.env["AZURE_CLIENT_SECRET"], "scope": "https://management.azure.com/.default"}).json()
        resp = session.request(method, f"https://management.azure.com{path}", json=body, timeout=60,
                               headers={"Authorization": f"Bearer {token['access_token']}"})
        return resp.status_code, (resp.json() if resp.content else None)

    def workspace_id(self) -> str:
        """The ARM id of the emulator's first workspace."""
        cfg = json.loads((self.state_dir / "config.json").read_text())
        return (f"/subscriptions/{cfg['subscription_id']}/resourceGroups/{cfg['resource_group']}/providers/"
                f"Microsoft.MachineLearningServices/workspaces/{cfg['workspace_name']}")

    def local_services(self) -> list[str]:
        """The services whose replicas the emulator's data plane runs now."""
        from controller.backends.local import LocalBackend
        from controller.structs.manifests import Kind

        local = self.state_dir / "dataplane" / "local"
        if not local.exists():
            return []
        backend = LocalBackend(local, "amlops-emulator")
        try:
            return sorted(r.id.name for r in backend.read() if r.id.kind is Kind.WEBSERVICE)
        finally:
            backend.close()

    def sdk(self, script: str, cwd: Path, extra_env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with the emulator's environment, a temp HOME and ``cwd``."""
        home = cwd / ".home"
        home.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(cwd),
               "AZUREML_LOG_DEPRECATION_WARNING_ENABLED": "False", "PYTHONUNBUFFERED": "1",
               **self.env, **(extra_env or {})}
        return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env, text=True,
                              capture_output=True, timeout=timeout, check=False)

    def stop(self, keep_services: bool = False) -> None:
        """Stop the emulator and (unless ``keep_services``) the replicas its services left running."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not keep_services:
            # Services outlive the emulator by design (re-adopted on restart); a test run must not leak them.
            from controller.emulator.deploying import stop_services

            stop_services(self.state_dir)


def start_emulator(state_dir: Path, *args: str, gpus: list[dict[str, Any]] | None = None) -> RunningEmulator:
    """Start ``python -m controller.emulator`` on a free port and wait until it listens.

    ``gpus`` is the GPU inventory its data plane places replicas on (``AMLOPS_GPU_INVENTORY``);
    none by default: the GPUs under test are the emulated cluster's, whatever this machine has.
    """
    log = open(state_dir.parent / f"{state_dir.name}-emulator.log", "a")  # noqa: SIM115 - lives as long as the process
    inventory = state_dir.parent / f"{state_dir.name}-gpus.json"
    inventory.write_text(json.dumps(gpus or []))
    proc = subprocess.Popen([sys.executable, "-m", "controller.emulator", "--listen", "127.0.0.1:0",
                             "--state-dir", str(state_dir), "--ready-timeout", "60", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True,
                            env={**os.environ, "AMLOPS_GPU_INVENTORY": str(inventory)})
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "listening on" in line or proc.poll() is not None:
            break
    match = re.search(r"127\.0\.0\.1:(\d+)", line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"emulator did not start: {line!r}")
    env: dict[str, str] = {}
    for raw in (state_dir / "env.sh").read_text().splitlines():
        key, _, value = raw.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    return RunningEmulator(proc, int(match.group(1)), state_dir, env)
