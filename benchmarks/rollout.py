"""Canary rollouts on the local backend: what the traffic split costs per request, and how long a canary takes.

Two parts (``--parts``):

* ``split``: one service (one replica, a trivial ``run()`` so that per-request overheads are not
  hidden behind model time) under ``wrk`` with no rollout in progress, then with a candidate of the
  same version taking 10 %, 50 % and 100 % of requests through the live replica's hand-off, back to
  back, alternating rounds. Figures: requests/s, p50/p99, and CPU seconds per request summed over
  every scoring process (live + candidate), each as a ratio against no rollout in the same round.
* ``canary``: a three-step canary (10 → 50 → 100 %, 20 requests per step, no pause) of a new model
  version under bounded Python load, driven by the real reconcile pipeline, from the commit to all
  traffic on the new version, timed by phase: candidate start, each step, promotion (live replicas
  rolled), clean-up.

Run alone: ``python -m benchmarks.rollout [--quick] [--parts split,canary]``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from benchmarks.reports import heading, print_machine, run_script, table
from benchmarks.requesting import LoadResult, lua_script, require_wrk, run_wrk
from benchmarks.workfolders import work_folder
from controller.backends.base import ApplyContext
from controller.backends.local import LocalBackend
from controller.backends.local.layouts import candidate_of
from controller.core.reconciling import ReconcileOptions, reconcile
from controller.core.recording import Recorder
from controller.sources.loading import load_desired_state
from controller.structs.manifests import Kind
from controller.structs.results import ReconcileStatus

SERVICE = "bench-svc"
PARTS = ("split", "canary")
SCORE_PY = """\
import json
import os

def init():
    global scale
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "scale.txt")) as f:
        scale = float(f.read())

def run(raw):
    return [x * scale for x in json.loads(raw)["data"]]
"""
STEPS = [{"weight": 10, "minRequests": 20}, {"weight": 50, "minRequests": 20}, {"weight": 100, "minRequests": 20}]


def _doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "amlops.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


def write_repo(root: Path, scale: str, rollout: dict[str, Any]) -> None:
    """A workspace, a cluster, a model (``scale.txt``) and one service with ``rollout``."""
    files = {
        "workspace.yaml": _doc("Workspace", "ws", {"backend": "local"}),
        "cluster.yaml": _doc("AksCluster", "aks", {"vmSize": "Standard_D3_v2", "agentCount": 1}),
        "model/scale.txt": scale,
        "model.yaml": _doc("Model", "scaler", {"path": "model"}),
        "src/score.py": SCORE_PY,
        "service.yaml": _doc("Webservice", SERVICE, {
            "cluster": "aks", "models": ["scaler"], "sourceDirectory": "src", "entryScript": "score.py",
            "replicas": 1, "auth": "none", "maxConcurrentRequestsPerReplica": 4, "maxQueueWaitMs": 10000,
            "rollout": rollout}),
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _processes(backend: LocalBackend) -> list[psutil.Process]:
    with backend.store.snapshot() as conn:
        rows = backend.store.replicas(conn, SERVICE) + backend.store.replicas(conn, candidate_of(SERVICE))
    found = []
    for row in rows:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(row.pid))
    return found


def _cpu(processes: Sequence[psutil.Process]) -> float:
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def _measure(backend: LocalBackend, url: str, script: Path, seconds: float) -> tuple[LoadResult, float]:
    processes = _processes(backend)
    before = _cpu(processes)
    result = run_wrk(url, script, connections=8, seconds=seconds)
    spent = _cpu(processes) - before
    return result, spent / max(1, result.requests)


def part_split(folder: Path, seconds: float, rounds: int) -> None:
    """Requests/s, latency and CPU per request at split weights 0 (no rollout), 10, 50 and 100 %."""
    heading("Traffic split: cost per request (same service, no rollout in progress = 1.00)")
    require_wrk()
    repo, state = folder / "split-repo", folder / "split-state"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    write_repo(repo, "2", {"strategy": "rolling"})
    backend = LocalBackend(state, "bench", ready_timeout=120)
    try:
        desired = load_desired_state(repo, ".", "r1")
        ctx = ApplyContext("bench", "r1", str(repo), desired)
        for resource in desired:
            backend.create(resource, ctx)
        # A candidate of the same version: the figures are the hand-off's cost, not a model's.
        service = desired.get(Kind.WEBSERVICE, SERVICE)
        assert service is not None
        backend.start_candidate(service, ctx)
        deadline = time.monotonic() + 120
        while backend.candidate_health(SERVICE)[0] != "ready":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the candidate did not start: {backend.candidate_health(SERVICE)[1]}")
            time.sleep(0.2)
        url = backend.scoring_uri(SERVICE)
        script = lua_script(folder, "split", json.dumps({"data": [1.0, 2.0, 3.0]}).encode())
        weights = (0, 10, 50, 100)
        results: dict[int, list[tuple[LoadResult, float]]] = {w: [] for w in weights}
        for _ in range(rounds):
            for weight in weights:
                backend.set_weight(SERVICE, weight)
                time.sleep(0.5)  # every replica has polled the new split
                results[weight].append(_measure(backend, url, script, seconds))
        backend.set_weight(SERVICE, 0)
        rows = []
        base_rps = statistics.median(r.rps for r, _ in results[0])
        base_cpu = statistics.median(c for _, c in results[0])
        for weight in weights:
            rps = statistics.median(r.rps for r, _ in results[weight])
            cpu = statistics.median(c for _, c in results[weight])
            p50 = statistics.median(r.p50_ms for r, _ in results[weight])
            p99 = statistics.median(r.p99_ms for r, _ in results[weight])
            errors = sum(r.errors for r, _ in results[weight])
            rows.append([f"{weight} %" if weight else "no rollout", rps, rps / base_rps, p50, p99, cpu * 1e6,
                         cpu / base_cpu, errors])
        print(table(["to the candidate", "req/s", "× no rollout", "p50 ms", "p99 ms", "CPU µs/request",
                     "CPU × no rollout", "errors"], rows))
        print(f"\nwrk: 1 thread, 8 keep-alive connections, {seconds:g} s per level, {rounds} alternating round(s), "
              "medians; CPU = user+system of the live and candidate scoring processes.")
    finally:
        with contextlib.suppress(Exception):
            backend.discard_candidate(SERVICE)
        with contextlib.suppress(Exception):
            backend._stop_service(SERVICE)
        backend.close()


class _Load:
    """A few keep-alive clients posting at a bounded rate; counts answers and exceptions."""

    def __init__(self, port: int, clients: int = 4, rate: float = 25.0) -> None:
        self.port, self.clients, self.rate = port, clients, rate
        self.stop = threading.Event()
        self.ok = self.failed = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> _Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        body = json.dumps({"data": [1.0]}).encode()
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                conn.request("POST", f"/api/v1/service/{SERVICE}/score", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                good = response.status == 200
            except Exception:
                good = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failed += 1
            self.stop.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - began)))


def _one_canary(folder: Path, index: int) -> dict[str, float]:
    repo, state = folder / f"canary-repo-{index}", folder / f"canary-state-{index}"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    rollout = {"strategy": "canary", "steps": STEPS, "analysis": {"maxErrorRate": 0.01, "minRequests": 20}}
    write_repo(repo, "2", rollout)
    backend = LocalBackend(state, "bench", ready_timeout=120)
    recorder = Recorder(state)
    options = ReconcileOptions(controller_name="bench")
    try:
        first = reconcile(repo, ".", "r1", lambda _ws: backend, recorder, options)
        if first.status is not ReconcileStatus.APPLIED:
            raise RuntimeError(f"the first version did not deploy: {first.errors}")
        port = int(backend.scoring_uri(SERVICE).split(":")[2].split("/")[0])
        with _Load(port) as load:
            (repo / "model/scale.txt").write_text("3")  # the commit: a new model version
            marks: dict[str, float] = {}
            started = time.monotonic()
            last = "commit"
            while True:
                outcome = reconcile(repo, ".", "r2", lambda _ws: backend, recorder, options)
                state_now = backend.rollout_state(SERVICE)
                label = ("done" if state_now is None else
                         f"step {state_now.step + 1} ({state_now.weight} %)" if state_now.phase == "stepping"
                         else state_now.phase)
                if label != last:
                    marks[label] = time.monotonic() - started
                    last = label
                if outcome.status is not ReconcileStatus.PROGRESSING:
                    break
                if time.monotonic() - started > 300:
                    raise RuntimeError("the canary took longer than 300 s")
                time.sleep(outcome.requeue_after or 0.5)
            if outcome.status is not ReconcileStatus.APPLIED:
                raise RuntimeError(f"the canary did not finish: {outcome.errors}")
        if load.failed:
            raise RuntimeError(f"{load.failed} requests failed during the canary")
        return marks
    finally:
        with contextlib.suppress(Exception):
            backend.discard_candidate(SERVICE)
        with contextlib.suppress(Exception):
            backend._stop_service(SERVICE)
        backend.close()


def part_canary(folder: Path, repeats: int) -> None:
    """Seconds from the commit to 100 % on the new version, by phase (medians over ``repeats``)."""
    heading("Three-step canary: commit to 100 %, by phase")
    runs = [_one_canary(folder, i) for i in range(repeats)]
    boundaries = ["starting", "step 1 (10 %)", "step 2 (50 %)", "step 3 (100 %)", "promoting", "done"]
    names = ["first pass: load, plan, candidate launched", "candidate starting until ready",
             "step 1 (10 %), 20 requests", "step 2 (50 %), 20 requests", "step 3 (100 %), 20 requests",
             "promoting: live replicas rolled, candidate removed"]
    rows = []
    previous = 0.0
    for name, label in zip(names, boundaries, strict=True):
        ends = [r[label] for r in runs if label in r]
        if not ends:
            continue
        at = statistics.median(ends)
        rows.append([name, at - previous, at])
        previous = at
    print(table(["phase", "seconds", "since commit"], rows))
    print(f"\n{repeats} run(s), medians of each boundary; load: 4 clients × 25 req/s of a trivial run(); steps "
          "with 20 requests each and no pause.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rollout", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per load level, 1 round, 1 canary")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    print_machine()
    folder = work_folder("rollout")
    if "split" in parts:
        part_split(folder, args.seconds or (3.0 if args.quick else 10.0), 1 if args.quick else 3)
    if "canary" in parts:
        part_canary(folder, 1 if args.quick else 3)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, "rollout"))
