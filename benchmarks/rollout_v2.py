"""Commit to 100 % traffic on the new deployment, by phase, for an Azure ML v2 service (emulator).

The emulator runs with its data plane (real scoring replicas per deployment) and fast LRO polling
(``--poll-ms 50``). A repo with a v2 workspace, an attached cluster, an environment, a numpy model
and one service (canary steps 10 / 50 / 100 %, a sample request) is applied once; then the model
file changes and reconcile passes run in one process, as the controller's loop runs them (one
short rollout step per pass, ``requeue_after`` between passes), while a client posts 20 requests
a second through the endpoint (each step needs one answer of the new version; the analysis reads
Azure Monitor's figures). Phases, from the start of the first pass:

- first pass: load + read + plan, model upload + code registration, the candidate deployment created;
- candidate ready + sample request: until the pass that enters step 1 (replicas started, provisioning
  ``Succeeded``, the sample request answered, the traffic table at 10 %);
- each canary step: from entering it to entering the next one (the analysis of its window included);
- promotion: the new deployment named live, the old one deleted.

Every client exception or non-200 answer is a failed request; the count is printed.

Run alone: ``python -m benchmarks.rollout_v2 [--quick] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.calls import Emulator
from benchmarks.reports import heading, print_machine, run_script, table
from benchmarks.workfolders import work_folder

SCORE = textwrap.dedent('''
    import json, os
    import numpy as np

    def init():
        global W
        W = np.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "w.npy"))

    def run(raw_data):
        return (np.array(json.loads(raw_data)["data"]) @ W).tolist()
''')

DRIVER = """
import json, logging, sys, threading, time
import requests
logging.basicConfig(level=logging.WARNING)
from controller.core.connecting import BackendPool
from controller.core.reconciling import ReconcileOptions, reconcile
from controller.core.recording import Recorder
from controller.structs.results import ReconcileStatus
args = json.loads(sys.argv[1])
events, answers = [], []
stop = threading.Event()
def load(uri, key):
    with requests.Session() as session:
        session.trust_env = False
        while not stop.is_set():
            try:
                answers.append(session.post(uri, data=json.dumps({"data": [[1, 1]]}), timeout=30, headers={
                    "Content-Type": "application/json", "Authorization": "Bearer " + key}).status_code)
            except Exception as exc:
                answers.append(type(exc).__name__)
            stop.wait(0.05)
pool = BackendPool(args["stateDir"], "amlops-bench")
options = ReconcileOptions(controller_name="amlops-bench", parallelism=2)
recorder = Recorder(args["stateDir"])
started = time.monotonic()
client = None
while True:
    outcome = reconcile(args["root"], ".", args["revision"], pool.backend_for, recorder, options)
    message = " ".join(c.message or "" for c in outcome.changes if c.id.kind.value == "Webservice")
    events.append([round(time.monotonic() - started, 3), message])
    if client is None and args.get("load"):
        ml = next(b for b in pool.backends() if getattr(b, "api", "") == "v2").session.client
        client = threading.Thread(target=load, daemon=True, args=(
            ml.online_endpoints.get("svc").scoring_uri, ml.online_endpoints.get_keys("svc").primary_key))
        client.start()
    if outcome.status is not ReconcileStatus.PROGRESSING or time.monotonic() - started > 600:
        break
    time.sleep(outcome.requeue_after or 0.5)
total = time.monotonic() - started
stop.set()
print("\\nRESULT " + json.dumps({"status": outcome.status.value, "errors": list(outcome.errors), "events": events,
                               "total_s": total, "requests": len(answers),
                               "failed": [a for a in answers if a != 200][:20]}, default=str))
pool.close()
"""


def _doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "amlops.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


def write_repo(root: Path, config: dict[str, str], weights: list[list[float]]) -> None:
    import numpy as np

    aks = (f"/subscriptions/{config['subscription_id']}/resourceGroups/{config['resource_group']}"
           "/providers/Microsoft.ContainerService/managedClusters/aks1")
    files = {
        "workspace.yaml": _doc("Workspace", config["workspace_name"], {
            "backend": "azureml", "api": "v2", "subscriptionId": config["subscription_id"],
            "resourceGroup": config["resource_group"], "workspaceName": config["workspace_name"],
            "credentials": {"type": "servicePrincipal", "tenantId": {"fromEnv": "AZURE_TENANT_ID"},
                            "clientId": {"fromEnv": "AZURE_CLIENT_ID"}, "clientSecret": {"fromEnv": "AZURE_CLIENT_SECRET"}}}),
        "clusters/aks.yaml": _doc("AksCluster", "aks", {"vmSize": "Standard_D3_v2", "agentCount": 3,
                                                       "attach": {"resourceId": aks, "namespace": "amlops"}}),
        "environments/env.yaml": _doc("Environment", "env", {
            "conda": {"dependencies": ["python=3.11", {"pip": ["azureml-inference-server-http", "numpy"]}]}}),
        "models/tiny.yaml": _doc("Model", "tiny", {"path": "tiny"}),
        "src/score.py": SCORE,
        "services/svc.yaml": _doc("Webservice", "svc", {
            "cluster": "aks", "models": ["tiny"], "environment": "env", "sourceDirectory": "../src",
            "entryScript": "score.py", "replicas": 1, "maxQueueWaitMs": 10000,
            "rollout": {"strategy": "canary", "steps": [{"weight": 10}, {"weight": 50}, {"weight": 100}],
                        "sampleRequest": {"body": json.dumps({"data": [[1, 1]]})}}}),
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "models" / "tiny" / "model").mkdir(parents=True, exist_ok=True)
    np.save(root / "models" / "tiny" / "model" / "w.npy", np.array(weights))


def reconcile(emulator: Emulator, root: Path, work: Path, revision: str, load: bool = True) -> dict[str, Any]:
    import os
    import subprocess

    from benchmarks.workfolders import REPO, project_python

    home = work / ".home"
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(work),
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **emulator.env}
    args = {"root": str(root), "stateDir": str(work / "amlops-state"), "revision": revision, "load": load}
    done = subprocess.run([project_python(), "-c", DRIVER, json.dumps(args)], cwd=work, env=env, text=True,
                          capture_output=True, timeout=900, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"reconcile failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return dict(json.loads(lines[-1].removeprefix("RESULT ")))


def phases(out: dict[str, Any]) -> dict[str, float]:
    """Seconds per phase from each pass's end and message (see the module docstring)."""
    events = out["events"]

    def at(prefix: str) -> float | None:
        return next((t for t, m in events if m.startswith(prefix)), None)

    marks = [("first pass (candidate created)", events[0][0] if events else None),
             ("candidate ready + sample request", at("canary step 1 ")),
             ("step 1 (10 %)", at("canary step 2 ")), ("step 2 (50 %)", at("canary step 3 ")),
             ("step 3 (100 %)", at("canary: promoting")), ("promotion (old deployment deleted)", float(out["total_s"]))]
    out_phases: dict[str, float] = {}
    previous = 0.0
    for name, t in marks:
        if t is not None:
            out_phases[name] = t - previous
            previous = t
    out_phases["commit to 100 %"] = at("canary step 3 ") or float("nan")
    out_phases["passes"] = float(len(events))
    out_phases["reconcile total"] = float(out["total_s"])
    return out_phases


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rollout_v2", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="two rollouts")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 2)
    print_machine()
    base = work_folder("rollout-v2")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    emulator = Emulator(base / "emulator", "--aks-cluster", "aks1=Standard_D3_v2:3", "--poll-ms", "50",
                        "--lro-delay", "0.05", data_plane=True)
    runs: list[dict[str, float]] = []
    requests = 0
    try:
        work = base / "work"
        work.mkdir()
        root = work / "repo"
        write_repo(root, emulator.config, [[1.0], [2.0]])
        first = reconcile(emulator, root, work, "r0", load=False)
        if first["status"] != "applied":
            raise RuntimeError(f"first apply: {first['status']} {first['errors']}")
        for i in range(args.repeats):
            write_repo(root, emulator.config, [[float(i + 2)], [2.0]])
            started = time.monotonic()
            out = reconcile(emulator, root, work, f"r{i + 1}")
            if out["status"] != "applied" or out["failed"]:
                raise RuntimeError(f"rollout {i + 1}: {out['status']} {out['errors']} failed requests {out['failed']}")
            requests += out["requests"]
            runs.append({**phases(out), "process wall": time.monotonic() - started})
    finally:
        emulator.stop()
    heading(f"Azure ML v2 (emulator): a three-step canary from a changed model file to all traffic, by phase ({len(runs)} rollouts)")
    names = list(runs[0])
    print(table(["phase", "median s", "min s", "max s"],
                [(n, statistics.median(r[n] for r in runs), min(r[n] for r in runs), max(r[n] for r in runs))
                 for n in names]))
    print(f"\n{requests} requests through the endpoint during the rollouts, none failed.")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, "rollout_v2"))
