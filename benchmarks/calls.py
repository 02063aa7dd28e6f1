"""Backend calls per no-op reconcile: the local backend (counting proxy) and the Azure ML emulator (HTTP requests).

Local backend: a repo is applied once; then reconciles of the unchanged repo are run with the
backend wrapped in a counting proxy (and its store too, whose list queries are the local backend's
"API calls"). Two repo sizes show whether calls grow with resources (they should not: one list per
kind) and that a no-op reconcile writes nothing (no create/update/delete, no store writes).

Azure ML: the emulator (``python -m controller.emulator``, started as the tests start it, without a
data plane so services need no replicas) counts every request by route; the azureml backend runs
one reconcile per subprocess with the emulator's env.sh and a temp HOME (HTTPS_PROXY and
REQUESTS_CA_BUNDLE act process-wide), so every pass logs in afresh. After one apply, the counters
are reset (``DELETE /_emulator/requests``) before each no-op reconcile and read after it
(``GET /_emulator/requests``), at two repo sizes.

Services here use a trivial entry script (no TensorFlow) and no GPU, so applying them is cheap.
The counting proxy is measurement only: it forwards every call unchanged.

The same for API v2 (azure-ai-ml): the workspace says ``api: v2`` and the cluster is attached
(the emulator holds an AKS cluster for it, ``--aks-cluster``); a no-op pass lists each kind once
(plus the versions of each asset amlops registered) and writes nothing.

Run alone: ``python -m benchmarks.calls [--quick] [--only local|azureml|azureml-v2]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.reports import Skipped, heading, print_machine, run_script, table
from benchmarks.workfolders import REPO, project_python, work_folder

WRITE_METHODS = {"create", "update", "delete"}
CONTROLLER = "amlops-bench"


class Counting:
    """Forwards attribute access to ``target``; counts each method call by name."""

    def __init__(self, target: Any, counts: collections.Counter[str], prefix: str = "") -> None:
        self._target = target
        self._counts = counts
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if callable(value) and not name.startswith("__"):
            counts, key = self._counts, self._prefix + name

            def counted(*args: Any, **kwargs: Any) -> Any:
                counts[key] += 1
                return value(*args, **kwargs)

            return counted
        return value


def write_repo(root: Path, services: int) -> None:
    """One workspace, one CPU cluster, two environments, three models, ``services`` trivial services."""
    if root.exists():
        shutil.rmtree(root)
    for folder in ("clusters", "environments", "models", "services", "src"):
        (root / folder).mkdir(parents=True)
    (root / "workspace.yaml").write_text(
        "apiVersion: amlops.dev/v1\nkind: Workspace\nmetadata:\n  name: bench\nspec:\n  backend: local\n")
    (root / "src" / "score.py").write_text("def init():\n    pass\n\n\ndef run(raw_data):\n    return [0]\n")
    (root / "clusters" / "cpu.yaml").write_text(
        "apiVersion: amlops.dev/v1\nkind: AksCluster\nmetadata:\n  name: cpu\nspec:\n  vmSize: Standard_D3_v2\n"
        "  agentCount: 3\n")
    for i in range(2):
        (root / "environments" / f"env-{i}.yaml").write_text(
            f"apiVersion: amlops.dev/v1\nkind: Environment\nmetadata:\n  name: env-{i}\nspec:\n"
            f"  environmentVariables:\n    N: \"{i}\"\n")
    for i in range(3):
        (root / "models" / f"model-{i}").mkdir()
        (root / "models" / f"model-{i}" / "weights.bin").write_bytes(bytes([i]) * 1024)
        (root / "models" / f"model-{i}.yaml").write_text(
            f"apiVersion: amlops.dev/v1\nkind: Model\nmetadata:\n  name: model-{i}\nspec:\n  path: model-{i}\n")
    for i in range(services):
        (root / "services" / f"svc-{i:03d}.yaml").write_text(
            f"apiVersion: amlops.dev/v1\nkind: Webservice\nmetadata:\n  name: svc-{i:03d}\nspec:\n  cluster: cpu\n"
            f"  models:\n    - model-{i % 3}\n  environment: env-{i % 2}\n  sourceDirectory: ../src\n"
            f"  entryScript: score.py\n  replicas: 1\n  resources:\n    cpu: 0.1\n    memoryGb: 0.5\n"
            f"  auth: none\n")


def measure(services: int, no_op_runs: int) -> dict[str, Any]:
    """Apply a repo of ``services`` services, then count backend calls over ``no_op_runs`` no-op reconciles."""
    from controller.backends.local import LocalBackend
    from controller.core.reconciling import ReconcileOptions, reconcile
    from controller.core.recording import Recorder

    root = work_folder("calls") / f"repo-{services}"
    state = work_folder("calls") / f"state-{services}"
    shutil.rmtree(state, ignore_errors=True)
    write_repo(root, services)
    backend = LocalBackend(state, CONTROLLER, ready_timeout=120)
    recorder = Recorder(state)  # the real history recorder: reconcile reads resource status from it
    options = ReconcileOptions(controller_name=CONTROLLER)
    try:
        first = reconcile(root, ".", "bench-1", lambda ws: backend, recorder, options)
        counts: collections.Counter[str] = collections.Counter()
        real_store = backend.store
        backend.store = Counting(real_store, counts, "store.")  # type: ignore[assignment]
        proxy = Counting(backend, counts)
        outcomes = [reconcile(root, ".", "bench-1", lambda ws: proxy, recorder, options)
                    for _ in range(no_op_runs)]
        backend.store = real_store
        resources = 1 + 1 + 2 + 3 + services
        changes = [sum(1 for c in (o.plan.changes if o.plan else ()) if c.action.value != "no-op") for o in outcomes]
        return {"services": services, "resources": resources, "first": str(first.status),
                "statuses": sorted({str(o.status) for o in outcomes}), "changes": changes,
                "per_reconcile": {k: v / no_op_runs for k, v in sorted(counts.items())}}
    finally:
        try:
            for i in range(services):
                from controller.structs.manifests import Kind
                from controller.structs.states import ResourceId

                backend.delete(ResourceId(Kind.WEBSERVICE, f"svc-{i:03d}"), _ctx(root))
        except Exception as exc:  # cleanup is best effort; say so
            print(f"(cleanup of services failed: {type(exc).__name__}: {exc})")
        backend.close()


def _ctx(root: Path) -> Any:
    from controller.backends.base import ApplyContext
    from controller.sources.loading import load_desired_state

    return ApplyContext(CONTROLLER, "bench-1", str(root), load_desired_state(root))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.calls", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer services and no-op runs")
    parser.add_argument("--only", choices=("local", "azureml", "azureml-v2"), help="one backend only")
    args = parser.parse_args(argv)
    print_machine()
    if args.only in (None, "local"):
        local_backend(args.quick)
    if args.only in (None, "azureml"):
        azureml_backend(args.quick)
    if args.only in (None, "azureml-v2"):
        azureml_backend(args.quick, api="v2")
    return 0


def local_backend(quick: bool) -> None:
    """Calls per no-op reconcile on the local backend, at two sizes."""
    try:
        import controller.backends.local
        import controller.core.reconciling  # noqa: F401
    except ImportError as exc:
        raise Skipped(f"the local backend or reconcile pipeline does not exist yet: {exc}") from exc
    sizes = (2, 8) if quick else (4, 16)
    runs = 3 if quick else 5
    results = [measure(n, runs) for n in sizes]
    heading(f"Local backend: calls per no-op reconcile (mean of {runs}, after one apply)")
    names = sorted({k for r in results for k in r["per_reconcile"]})
    print(table(["call"] + [f"{r['resources']} resources" for r in results],
                [(name, *(r["per_reconcile"].get(name, 0) for r in results)) for name in names]))
    for r in results:
        writes = {k: v for k, v in r["per_reconcile"].items() if k in WRITE_METHODS or
                  any(w in k for w in ("store.put", "store.upsert", "store.insert", "store.delete", "store.set",
                                       "store.record", "store.write", "store.save", "store.update"))}
        print(f"{r['resources']} resources: first apply {r['first']}; no-op reconciles {r['statuses']}, "
              f"planned changes {r['changes']}; write calls {writes or 'none'}")


# -- Azure ML emulator ----------------------------------------------------------------------------

AZ_SCORE = "import json\n\n\ndef init():\n    pass\n\n\ndef run(raw_data):\n    return json.loads(raw_data)['data']\n"

# Reconciles of the real engine with a real BackendPool and Recorder (what `amlops apply` wires up):
# one, or (``passes``) several with the same pool, as the long-lived `amlops run` keeps it, with the
# emulator's request counters reset before and read after each (``admin``).
AZ_DRIVER = """
import json, logging, sys, urllib.request
logging.basicConfig(level=logging.WARNING)
from controller.core.connecting import BackendPool
from controller.core.executing import RetryPolicy
from controller.core.reconciling import ReconcileOptions, reconcile
from controller.core.recording import Recorder
args = json.loads(sys.argv[1])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def admin(method):
    with opener.open(urllib.request.Request(args["admin"] + "requests", method=method), timeout=10) as resp:
        return json.loads(resp.read() or b"null")
pool = BackendPool(args["stateDir"], "amlops-bench")
results = []
for _ in range(args.get("passes", 1)):
    if "admin" in args:
        admin("DELETE")
    outcome = reconcile(args["root"], ".", args["revision"], pool.backend_for, Recorder(args["stateDir"]),
                        ReconcileOptions(controller_name="amlops-bench", parallelism=2,
                                         retry=RetryPolicy(max_attempts=4, base_delay_s=0.05, max_delay_s=0.2,
                                                           max_total_s=120.0)))
    changes = [c for c in (outcome.plan.changes if outcome.plan else ()) if c.action.value != "no-op"]
    results.append({"status": outcome.status.value, "errors": list(outcome.errors),
                    "changes": [f"{c.id.kind.value}/{c.id.name} {c.action.value}" for c in changes],
                    "counts": admin("GET") if "admin" in args else None})
print("\\nRESULT " + json.dumps(results[0] if "passes" not in args else results))
pool.close()
"""

# Not writes, though POSTed: the SDK's pre-flight validation and the POSTs that only read.
READ_POSTS = ("/services/validate", "/listkeys", "/token", "/listsecrets", "/listKeys", "/listSecrets")


class Emulator:
    """One ``python -m controller.emulator`` process (started as the tests start it) and what its env.sh says."""

    def __init__(self, state_dir: Path, *extra: str, data_plane: bool = False) -> None:
        self.state_dir = state_dir
        self.log = state_dir.parent / f"{state_dir.name}-emulator.log"
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [project_python(), "-m", "controller.emulator", "--listen", "127.0.0.1:0", "--state-dir",
                 str(state_dir), *(() if data_plane else ("--no-data-plane",)), *extra],
                cwd=REPO, stdout=subprocess.PIPE, stderr=sink, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line, deadline = "", time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if "listening on" in line or self.proc.poll() is not None:
                break
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        if match is None:
            self.stop()
            raise RuntimeError(f"emulator did not start: {line!r}; see {self.log}")
        self.port = int(match.group(1))
        self.env: dict[str, str] = {}
        for raw in (state_dir / "env.sh").read_text().splitlines():
            key, _, value = raw.removeprefix("export ").partition("=")
            self.env[key] = shlex.split(value)[0]
        self.config = json.loads((state_dir / "config.json").read_text())

    def admin(self, method: str, path: str) -> Any:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the admin API is plain HTTP
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/_emulator/{path}", method=method)
        with opener.open(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def reconcile(self, root: Path, work: Path, revision: str, passes: int = 0) -> Any:
        """One reconcile pass in a subprocess with the emulator's env and a temp HOME (or, with
        ``passes``, that many in one process, each with its request counts)."""
        home = work / ".home"
        home.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(work),
               "AZUREML_LOG_DEPRECATION_WARNING_ENABLED": "False", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": str(REPO), **self.env}
        args: dict[str, Any] = {"root": str(root), "stateDir": str(work / "amlops-state"), "revision": revision}
        if passes:
            args.update(passes=passes, admin=f"http://127.0.0.1:{self.port}/_emulator/")
        done = subprocess.run([project_python(), "-c", AZ_DRIVER, json.dumps(args)], cwd=work, env=env, text=True,
                              capture_output=True, timeout=600, check=False)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if not lines:
            raise RuntimeError(f"reconcile failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        return json.loads(lines[-1].removeprefix("RESULT "))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        from controller.emulator.deploying import stop_services

        stop_services(self.state_dir)  # its services' replicas outlive it by design; a benchmark must not leak them


def write_azureml_repo(root: Path, config: dict[str, str], envs: int, models: int, services: int,
                       api: str = "v1") -> int:
    """An azureml workspace (credentials from the environment), one cluster, and the given counts; returns resources."""
    def doc(kind: str, name: str, spec: dict[str, Any]) -> str:
        return json.dumps({"apiVersion": "amlops.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})

    if root.exists():
        shutil.rmtree(root)
    files = {
        "workspace.yaml": doc("Workspace", config["workspace_name"], {
            "backend": "azureml", "subscriptionId": config["subscription_id"],
            "resourceGroup": config["resource_group"], "workspaceName": config["workspace_name"], "api": api,
            "credentials": {"type": "servicePrincipal", "tenantId": {"fromEnv": "AZURE_TENANT_ID"},
                            "clientId": {"fromEnv": "AZURE_CLIENT_ID"},
                            "clientSecret": {"fromEnv": "AZURE_CLIENT_SECRET"}}}),
        "clusters/aks.yaml": doc("AksCluster", "aks", {"vmSize": "Standard_D3_v2", "agentCount": 3,
                                                       "clusterPurpose": "DevTest", "deletionPolicy": "Retain"}),
        "src/score.py": AZ_SCORE,
    }
    if api == "v2":
        files["clusters/aks.yaml"] = doc("AksCluster", "aks", {
            "vmSize": "Standard_D3_v2", "agentCount": 3, "deletionPolicy": "Retain",
            "attach": {"namespace": "amlops", "resourceId": f"/subscriptions/{config['subscription_id']}/resourceGroups/"
                       f"{config['resource_group']}/providers/Microsoft.ContainerService/managedClusters/aks1"}})
    for i in range(envs):
        files[f"environments/env-{i}.yaml"] = doc("Environment", f"env-{i}", {
            "baseImage": "DEFAULT_CPU_IMAGE", "environmentVariables": {"N": str(i)},
            "conda": {"dependencies": ["python=3.8", {"pip": ["azureml-defaults"]}]}})
    for i in range(models):
        files[f"models/model-{i}.yaml"] = doc("Model", f"model-{i}", {"path": f"model-{i}"})
        files[f"models/model-{i}/weights.txt"] = f"{i}\n"
    for i in range(services):
        files[f"services/svc-{i}.yaml"] = doc("Webservice", f"svc-{i}", {
            "cluster": "aks", "models": [f"model-{i % models}"], "environment": f"env-{i % envs}",
            "sourceDirectory": "../src", "entryScript": "score.py", "replicas": 1,
            "resources": {"cpu": 0.1, "memoryGb": 0.5, "gpu": 0}})
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return 2 + envs + models + services


def request_kind(route: str) -> str:
    """``"METHOD host /path"`` → ``login``, ``read`` or ``write``."""
    method, host, path = route.split(" ", 2)
    if host == "login":
        return "login"
    if method in ("GET", "HEAD") or path.endswith(READ_POSTS) or "/services/validate" in path:
        return "read"
    return "write"


def azureml_backend(quick: bool, api: str = "v1") -> None:
    """Requests per no-op reconcile against the emulator, at two repo sizes."""
    try:
        if api == "v2":
            import azure.ai.ml  # noqa: F401
        import azureml.core  # noqa: F401

        import controller.emulator  # noqa: F401
    except ImportError as exc:
        print(f"SKIPPED azureml part: {exc}")
        return
    sizes = ((1, 1, 1), (2, 3, 3)) if quick else ((1, 1, 1), (2, 4, 4))  # (environments, models, services)
    runs = 2 if quick else 3
    base = work_folder("calls-azureml" if api == "v1" else "calls-azureml-v2")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    extra = ("--aks-cluster", "aks1=Standard_D3_v2:3", "--poll-ms", "50", "--lro-delay", "0.05") if api == "v2" else ()
    emulator = Emulator(base / "emulator", *extra)
    results = []
    try:
        for envs, models, services in sizes:
            work = base / f"work-{envs}-{models}-{services}"
            work.mkdir()
            root = work / "repo"
            resources = write_azureml_repo(root, emulator.config, envs, models, services, api)
            emulator.admin("DELETE", "requests")
            started = time.monotonic()
            first = emulator.reconcile(root, work, "r1")
            apply_s = time.monotonic() - started
            if first["status"] not in ("applied", "no-changes"):
                raise RuntimeError(f"first apply of {resources} resources: {first}")
            apply_counts = emulator.admin("GET", "requests")
            passes = []
            for _ in range(runs):
                emulator.admin("DELETE", "requests")
                out = emulator.reconcile(root, work, "r1")
                passes.append((out, emulator.admin("GET", "requests")))
            # The long-lived controller (`amlops run`) keeps its backends between passes: one process,
            # its first pass cold, the others steady.
            held = emulator.reconcile(root, work, "r1", passes=runs + 1) if api == "v2" else []
            results.append({"size": (envs, models, services), "resources": resources, "first": first,
                            "apply_s": apply_s, "apply_counts": apply_counts, "passes": passes,
                            "held": [(out, out.pop("counts")) for out in held]})
    finally:
        emulator.stop()
    print_azureml(results, runs, api)
    if api == "v2":
        print_azureml([{**r, "passes": r["held"][1:]} for r in results], runs, api,
                      "in one long-lived process (as `amlops run`), after its first pass")
        print_azureml([{**r, "passes": r["held"][:1]} for r in results], 1, api,
                      "the first pass of that process")


def print_azureml(results: list[dict[str, Any]], runs: int, api: str = "v1",
                  where: str = "each in its own process (as `amlops apply`)") -> None:
    """Per-route counts of each size side by side, then totals split into login / reads / writes."""
    heading(f"Azure ML emulator, API {api}: HTTP requests per no-op reconcile ({runs} passes each after one apply, "
            f"{where})")
    labels = [f"{r['resources']} res ({r['size'][0]} env, {r['size'][1]} mod, {r['size'][2]} svc)" for r in results]
    routes = sorted({route for r in results for _, counts in r["passes"] for route in counts},
                    key=lambda rt: (request_kind(rt), rt))

    def per_pass(r: dict[str, Any], route: str) -> str:
        return "/".join(str(v) for v in sorted({counts.get(route, 0) for _, counts in r["passes"]}))

    print(table(["kind", "route", *labels], [(request_kind(rt), rt, *(per_pass(r, rt) for r in results))
                                             for rt in routes]))
    rows = []
    for r in results:
        totals = [collections.Counter({k: 0 for k in ("login", "read", "write")}) for _ in r["passes"]]
        for total, (_, counts) in zip(totals, r["passes"], strict=True):
            for route, n in counts.items():
                total[request_kind(route)] += n
        mean = {k: sum(t[k] for t in totals) / len(totals) for k in ("login", "read", "write")}
        rows.append((r["resources"], mean["login"], mean["read"], mean["write"], sum(mean.values()),
                     sum(mean.values()) / r["resources"], ",".join(sorted({o["status"] for o, _ in r["passes"]})),
                     ",".join(str(n) for n in sorted({len(o["changes"]) for o, _ in r["passes"]})),
                     sum(r["apply_counts"].values()), r["apply_s"]))
    heading(f"Azure ML emulator, API {api}: totals per no-op reconcile (mean of the passes)")
    print(table(["resources", "login", "reads", "writes", "total", "per resource", "status", "planned changes",
                 "requests of the first apply", "first apply s"], rows))
    if len(rows) == 2:
        print(f"\nresources {rows[1][0] / rows[0][0]:.2f}x ({rows[0][0]} → {rows[1][0]}); requests per no-op "
              f"reconcile {rows[1][4] / rows[0][4]:.2f}x ({rows[0][4]:g} → {rows[1][4]:g})")
    for r in results:
        print(f"{r['resources']} resources: first apply {r['first']['status']}, "
              f"{len(r['first']['changes'])} changes, errors {r['first']['errors'] or 'none'}")


if __name__ == "__main__":
    sys.exit(run_script(main, "calls"))
