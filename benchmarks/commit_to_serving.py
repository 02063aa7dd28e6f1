"""Commit to serving: from ``git commit`` to the new model version answering, polled vs webhook-triggered.

A Git repo holds a local-backend workspace, one model (a ``.npy`` scale) and one service with a
numpy entry script (no TensorFlow import, so replica start-up is the scoring host's own) and 2
replicas, ``auth: none``. ``amlops run --repo <repo> --path manifests`` watches its committed
history in two modes, each its own controller and state dir:

- polled: ``--interval 2`` (the commit is found by the next pass);
- webhook: ``--interval 300`` plus a signed GitHub-style push (``POST /hooks/git`` with
  ``X-Hub-Signature-256``, secret from ``--webhook-secret-file``) sent right after the commit.

Each repetition commits a new scale and polls the scoring URI (every 20 ms) until the answer is the
new one. Phases, all measured from the moment ``git commit`` returned:

- detect: until the controller logs ``sync.started`` (its JSON log, ``--log-format json``);
- fetch: ``sync.started`` → the history record's ``started`` (the Git fetch and export);
- load / read / plan / apply: the history record's ``durations`` (``amlops history --output json``);
- first new replica started (supervisor log ``replica.started`` of the new generation), first and
  last new replica ready (the scoring host's ``ready`` event in the replica logs);
- first new answer, and the last old answer (both versions answer while the roll is under way: new
  and old replicas share the listening socket);
- ``sync.finished`` (the reconcile, including recording, is over).

The baseline is the polled mode in the same run: the table ends with webhook ÷ polled. Commits are
spaced by a varying pause so that they land at different points of the polling interval.

Run alone: ``python -m benchmarks.commit_to_serving [--quick] [--repeats N] [--interval S]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.reports import Skipped, heading, print_machine, run_script, table
from benchmarks.workfolders import REPO, project_python, work_folder

CONTROLLER = "amlops-bench"
SERVICE = "numpy-svc"
REPLICAS = 2
SECRET = "bench-webhook-secret"
POLL_S = 0.02
STEADY_ANSWERS = 20  # this many new answers in a row: the old version is gone

SCORE_PY = '''\
import json
import os

import numpy as np


def init():
    global scale
    scale = np.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], "scale.npy"))


def run(raw_data):
    return (np.array(json.loads(raw_data)["data"], dtype=float) * scale).tolist()
'''

GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "bench@example.invalid", "GIT_CONFIG_NOSYSTEM": "1"}


def manifest(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "amlops.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}) + "\n"


def npy(value: float) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.array(value))
    return buffer.getvalue()


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(repo.parent)}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def write_repo(repo: Path, scale: float) -> None:
    """A Git repo shaped like the e2e tests' example: workspace, CPU cluster, numpy model, one service."""
    if repo.exists():
        shutil.rmtree(repo)
    files: dict[str, str | bytes] = {
        "manifests/workspace.yaml": manifest("Workspace", "local", {"backend": "local"}),
        "manifests/clusters/cpu.yaml": manifest("AksCluster", "cpu", {"vmSize": "Standard_D2_v2", "agentCount": 1,
                                                                      "gpusPerNode": 0}),
        "manifests/models/scaler.yaml": manifest("Model", "scaler", {"path": "scaler"}),
        "manifests/models/scaler/scale.npy": npy(scale),
        "manifests/src/score.py": SCORE_PY,
        f"manifests/services/{SERVICE}.yaml": manifest("Webservice", SERVICE, {
            "cluster": "cpu", "models": ["scaler"], "sourceDirectory": "../src", "entryScript": "score.py",
            "replicas": REPLICAS, "resources": {"cpu": 0.1, "memoryGb": 0.5, "gpu": 0}, "auth": "none",
            "maxQueueWaitMs": 10000}),
    }
    for rel, content in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"scale {scale:g}")


def amlops_argv() -> list[str]:
    script = Path(project_python()).parent / "amlops"
    return [str(script)] if script.exists() else [project_python(), "-m", "controller"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 5) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def log_events(log: Path) -> list[dict[str, Any]]:
    """The controller's JSON log lines (other lines, e.g. the service banner, are skipped)."""
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


class Controller:
    """One ``amlops run`` subprocess in its own process group, with its state dir and log."""

    def __init__(self, name: str, repo: Path, interval: float, webhook: bool) -> None:
        base = work_folder("commit", name)
        self.state = base / "state"
        shutil.rmtree(self.state, ignore_errors=True)
        self.log = base / "controller.log"
        self.port = free_port()
        flags = ["--repo", str(repo), "--path", "manifests", "--interval", f"{interval:g}", "--listen",
                 f"127.0.0.1:{self.port}", "--state-dir", str(self.state), "--controller-name", CONTROLLER,
                 "--log-format", "json"]
        if webhook:
            secret = base / "webhook-secret"
            secret.write_text(SECRET + "\n")
            secret.chmod(0o600)
            flags += ["--webhook-secret-file", str(secret)]
        self.command = "amlops run " + " ".join(flags).replace(str(REPO) + "/", "")
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen([*amlops_argv(), "run", *flags], cwd=REPO, stdout=sink,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_applied(self, revision: str, timeout: float = 180) -> dict[str, Any]:
        """The ``sync.finished`` log event of ``revision`` (applied or no-changes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"amlops run exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            for event in log_events(self.log):
                if event.get("event") == "sync.finished" and str(event.get("revision", "")).startswith(revision):
                    if event.get("status") not in ("applied", "no-changes"):
                        raise RuntimeError(f"reconcile of {revision} {event.get('status')}: {event}")
                    return event
            time.sleep(0.2)
        raise TimeoutError(f"revision {revision} not applied within {timeout:.0f} s; see {self.log}")

    def history(self) -> list[dict[str, Any]]:
        done = subprocess.run([*amlops_argv(), "history", "--output", "json", "--limit", "50", "--state-dir",
                               str(self.state), "--controller-name", CONTROLLER], capture_output=True, text=True,
                              timeout=120, check=True)
        return list(json.loads(done.stdout))

    def scoring_uri(self) -> str:
        from controller.backends.local import LocalBackend
        from controller.structs.manifests import Kind

        backend = LocalBackend(self.state, CONTROLLER)
        try:
            found = backend.read().get(Kind.WEBSERVICE, SERVICE)
        finally:
            backend.close()
        if found is None:
            raise RuntimeError(f"service {SERVICE} does not exist in {self.state}")
        return str(found.details["scoringUri"])

    def stop(self) -> None:
        """SIGTERM the controller's group, then delete the service (its replicas outlive the controller)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        from controller.backends.base import ApplyContext
        from controller.backends.local import LocalBackend
        from controller.structs.manifests import Kind
        from controller.structs.states import DesiredState

        backend = LocalBackend(self.state, CONTROLLER)
        try:
            ctx = ApplyContext(CONTROLLER, "cleanup", str(self.state), DesiredState("cleanup", str(self.state), {}))
            for resource in backend.read():
                if resource.id.kind is Kind.WEBSERVICE:
                    backend.delete(resource.id, ctx)
        finally:
            backend.close()


def answer(uri: str) -> float | None:
    """The service's answer to ``[[1]]`` (the model's scale), or None when it does not answer 200."""
    try:
        code, body = http("POST", uri, json.dumps({"data": [[1]]}).encode(), {"Content-Type": "application/json"})
    except OSError:
        return None
    if code != 200:
        return None
    try:
        return float(json.loads(body)[0][0])
    except (ValueError, IndexError, TypeError):
        return None


def wait_answer(uri: str, value: float, timeout: float = 180) -> dict[str, float]:
    """Poll until ``value`` has been answered ``STEADY_ANSWERS`` times in a row; when it was first and last not."""
    first_new = last_other = None
    streak = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = answer(uri)
        now = time.time()
        if got is not None and abs(got - value) < 1e-9:
            first_new = first_new or now
            streak += 1
            if streak >= STEADY_ANSWERS:
                return {"first_new": first_new, "last_old": last_other or first_new}
        else:
            streak = 0
            last_other = now
        time.sleep(POLL_S)
    raise TimeoutError(f"the service did not answer {value} within {timeout:.0f} s")


def signed_push(url: str) -> int:
    """A GitHub push event for ``main``, signed with the webhook secret."""
    body = json.dumps({"ref": "refs/heads/main", "after": "0" * 40, "repository": {"full_name": "bench/repo"}}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    code, _ = http("POST", f"{url}/hooks/git", body, {"Content-Type": "application/json", "X-GitHub-Event": "push",
                                                       "X-GitHub-Delivery": "bench", "X-Hub-Signature-256": signature})
    return code


def _events(path: Path) -> list[tuple[str, float]]:
    """(msg, time) of each JSON log line of ``path`` (supervisors and replicas write one object per line)."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        with contextlib.suppress(ValueError, KeyError, TypeError):
            doc = json.loads(line)
            found.append((str(doc["msg"]), datetime.fromisoformat(str(doc["time"]).replace("Z", "+00:00")).timestamp()))
    return found


def replica_times(state: Path, since: float) -> dict[str, float | None]:
    """First ``replica.started`` (supervisor log) and first/last scoring-host ``ready`` after ``since``."""
    sdir = next((p for p in state.rglob("supervisor.log") if SERVICE in str(p)), None)
    started = [ts for msg, ts in (_events(sdir) if sdir is not None else []) if msg == "replica.started" and ts >= since]
    ready: list[float] = []
    logs = sdir.parent / "logs" if sdir is not None else None
    if logs is not None and logs.is_dir():
        for replica_log in logs.glob("replica-*.log"):
            ready += [ts for msg, ts in _events(replica_log) if msg == "ready" and ts >= since]
    return {"replica_started": min(started) if started else None,
            "first_ready": min(ready) if ready else None,
            "last_ready": max(ready) if len(ready) >= REPLICAS else None}


def iso(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def one_change(c: Controller, repo: Path, scale: float, webhook: bool) -> dict[str, Any]:
    """Commit ``scale``, (webhook mode) send the push event, wait for the new answer; the phases, in seconds."""
    (repo / "manifests/models/scaler/scale.npy").write_bytes(npy(scale))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"scale {scale:g}")
    t0 = time.time()
    revision = git(repo, "rev-parse", "HEAD")
    hook = signed_push(c.url) if webhook else None
    hook_s = time.time() - t0 if webhook else None
    seen = wait_answer(c.scoring_uri(), scale)
    finished = c.wait_applied(revision[:12])
    events = log_events(c.log)
    sync = next((e for e in events if e.get("event") == "sync.started" and e["ts"] >= t0 - 0.01), None)
    record = next((h for h in c.history() if str(h.get("revision", "")).startswith(revision[:12])), None)
    if record is None:
        raise RuntimeError(f"no history record for {revision}")
    started = iso(record["started"])
    durations = record.get("durations") or {}
    replicas = replica_times(c.state, t0)

    def rel(ts: float | None) -> float | None:
        return None if ts is None else ts - t0

    return {"detect": rel(sync["ts"]) if sync else None, "fetch": started - sync["ts"] if sync else None,
            "load": durations.get("load"), "read": durations.get("read"), "plan": durations.get("plan"),
            "apply": durations.get("apply"), "replica_started": rel(replicas["replica_started"]),
            "first_ready": rel(replicas["first_ready"]), "last_ready": rel(replicas["last_ready"]),
            "first_new": rel(seen["first_new"]), "last_old": rel(seen["last_old"]),
            "finished": rel(finished["ts"]), "hook_code": hook, "hook_s": hook_s}


def run_mode(name: str, repo: Path, interval: float, webhook: bool, repeats: int, first_scale: float) -> dict[str, Any]:
    write_repo(repo, first_scale)
    c = Controller(name, repo, interval, webhook)
    print(f"command ({name}): {c.command}", flush=True)
    rows = []
    try:
        c.wait_applied(git(repo, "rev-parse", "HEAD")[:12])
        wait_answer(c.scoring_uri(), first_scale)
        for i in range(repeats):
            time.sleep(0.5 + (i * 0.7) % max(interval, 0.5) if not webhook else 1.0)
            scale = first_scale + i + 1
            row = one_change(c, repo, scale, webhook)
            rows.append(row)
            print(f"  {name} #{i + 1}: first new answer after {row['first_new']:.2f} s "
                  f"(detect {row['detect']:.2f} s, apply {row['apply'] or 0:.2f} s)", flush=True)
    finally:
        c.stop()
    return {"name": name, "interval": interval, "rows": rows, "command": c.command}


PHASES = (("detect", "commit → sync.started"), ("fetch", "sync.started → reconcile started (git fetch)"),
          ("load", "load+validate (history)"), ("read", "read actual (history)"), ("plan", "plan (history)"),
          ("apply", "apply (history)"), ("replica_started", "commit → first new replica spawned"),
          ("first_ready", "commit → first new replica ready"), ("last_ready", f"commit → all {REPLICAS} new ready"),
          ("first_new", "commit → first NEW answer"), ("last_old", "commit → last old answer"),
          ("finished", "commit → sync.finished"))


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.commit_to_serving", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions per mode instead of 5")
    parser.add_argument("--repeats", type=int, help="repetitions per mode (overrides --quick)")
    parser.add_argument("--interval", type=float, default=2.0, help="polling interval of the polled mode (default 2)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    print_machine()
    if shutil.which("git") is None:
        raise Skipped("git is not installed")
    try:
        import numpy  # noqa: F401

        import controller.backends.local  # noqa: F401
    except ImportError as exc:
        raise Skipped(f"numpy or the local backend is missing: {exc}") from exc
    repo = work_folder("commit") / "repo"
    modes = [run_mode("polled", repo, args.interval, False, repeats, 2.0),
             run_mode("webhook", repo, 300.0, True, repeats, 2.0)]
    heading(f"Commit to serving, local backend, numpy service with {REPLICAS} replicas: median of {repeats} "
            f"(min–max), seconds")
    labels = {m["name"]: f"{m['name']} (--interval {m['interval']:g}{', push' if m['name'] == 'webhook' else ''})"
              for m in modes}

    def cell(m: dict[str, Any], key: str) -> str:
        values = [r[key] for r in m["rows"] if r[key] is not None]
        if not values:
            return "–"
        return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"

    rows = []
    for key, label in PHASES:
        p, w = (median([r[key] for r in m["rows"]]) for m in modes)
        rows.append((label, *(cell(m, key) for m in modes), f"{w / p:.2f}" if p and w is not None else "–"))
    print(table(["phase", labels["polled"], labels["webhook"], "webhook ÷ polled (medians)"], rows))
    hooks = sorted({r["hook_code"] for r in modes[1]["rows"]})
    print(f"\nwebhook answers: {hooks}; sending it took {median([r['hook_s'] for r in modes[1]['rows']]) or 0:.3f} s "
          f"(median). Durations from `amlops history --output json`; detect from the JSON log's sync.started; "
          f"replica times from the supervisor log and the replica logs' `ready` events.")
    print("per repetition (first new answer, s): " + "; ".join(
        f"{m['name']} " + ", ".join(f"{r['first_new']:.2f}" for r in m["rows"]) for m in modes))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, "commit_to_serving"))
