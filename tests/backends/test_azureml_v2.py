"""The azureml backend on API v2 (azure-ai-ml), driven through the reconcile engine against the emulator.

Each pass runs ``controller.core.reconciling.reconcile`` with a real ``BackendPool`` and ``Recorder``
in its own process, with the emulator's proxy and CA (the real azure-ai-ml + azure-identity
``ClientSecretCredential``, unpatched). Scoring goes through the endpoint's ``scoring_uri`` with a
plain HTTP client and the endpoint's key; the emulator runs real scoring replicas per deployment.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.azureml

_spec = importlib.util.spec_from_file_location("emulators", Path(__file__).parents[1] / "emulator" / "emulators.py")
assert _spec is not None and _spec.loader is not None
emulators = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("emulators", emulators)
_spec.loader.exec_module(emulators)

DRIVER = Path(__file__).parents[1] / "emulator" / "reconcile_v2_driver.py"

SCORE = textwrap.dedent('''
    import json, os
    import numpy as np

    def init():
        global W
        W = np.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "w.npy"))

    def run(raw_data):
        return (np.array(json.loads(raw_data)["data"]) @ W).tolist()
''')


def _doc(kind: str, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> str:
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return json.dumps({"apiVersion": "amlops.dev/v1", "kind": kind, "metadata": meta, "spec": spec})


class Repo:
    """The walk-through's manifests on a v2 workspace: attached cluster, environment, model, one service."""

    def __init__(self, root: Path, config: dict[str, str], api: str = "v2") -> None:
        self.root = root
        self.config = config
        self.workspace(api)
        aks = (f"/subscriptions/{config['subscription_id']}/resourceGroups/{config['resource_group']}"
               "/providers/Microsoft.ContainerService/managedClusters/aks1")
        self.aks = aks
        self.cluster(attach=api == "v2")
        self.write("environments/myenv.yaml", _doc("Environment", "myenv", {
            "baseImage": "DEFAULT_GPU_IMAGE",
            "conda": {"dependencies": ["python=3.11", {"pip": ["azureml-inference-server-http", "numpy"]}]}}))
        self.write("models/tiny.yaml", _doc("Model", "tiny", {"path": "tiny", "tags": {"dataset": "ones"}}))
        self.weights([[1.0], [2.0]])
        self.write("src/score.py", SCORE)
        self.service()

    def cluster(self, attach: bool) -> None:
        cluster: dict[str, Any] = {"vmSize": "Standard_NC6s_v3", "agentCount": 2, "deletionPolicy": "Retain"}
        if attach:
            cluster["attach"] = {"resourceId": self.aks, "namespace": "amlops"}
        self.write("clusters/aks-gpu.yaml", _doc("AksCluster", "aks-gpu", cluster))

    def workspace(self, api: str) -> None:
        c = self.config
        self.write("workspace.yaml", _doc("Workspace", c["workspace_name"], {
            "backend": "azureml", "subscriptionId": c["subscription_id"], "resourceGroup": c["resource_group"],
            "workspaceName": c["workspace_name"], "api": api,
            "credentials": {"type": "servicePrincipal", "tenantId": {"fromEnv": "AZURE_TENANT_ID"},
                            "clientId": {"fromEnv": "AZURE_CLIENT_ID"},
                            "clientSecret": {"fromEnv": "AZURE_CLIENT_SECRET"}}}))

    def write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def weights(self, w: list[list[float]]) -> None:
        import numpy as np

        (self.root / "models" / "tiny" / "model").mkdir(parents=True, exist_ok=True)
        np.save(self.root / "models" / "tiny" / "model" / "w.npy", np.array(w))

    def service(self, name: str = "svc-tiny", replicas: int = 1, annotations: dict[str, str] | None = None,
                **extra: Any) -> None:
        spec: dict[str, Any] = {
            "cluster": "aks-gpu", "models": ["tiny"], "environment": "myenv", "sourceDirectory": "../src",
            "entryScript": "score.py", "replicas": replicas, "resources": {"cpu": 0.5, "memoryGb": 1},
            "maxQueueWaitMs": 10000,
            "rollout": {"sampleRequest": {"body": json.dumps({"data": [[1, 1]]}), "compareWithLive": False}}}
        spec.update(extra)
        self.write(f"services/{name}.yaml", _doc("Webservice", name, spec, annotations))

    def remove(self, rel: str) -> None:
        (self.root / rel).unlink(missing_ok=True)


class Reconciler:
    """Runs reconcile passes in subprocesses; the recorder's state folder persists across passes."""

    def __init__(self, emulator: Any, workdir: Path) -> None:
        self.emulator = emulator
        self.workdir = workdir
        self.passes = 0

    def __call__(self, repo: Repo, **options: Any) -> dict[str, Any]:
        self.passes += 1
        args: dict[str, Any] = {"root": str(repo.root), "stateDir": str(self.workdir / "amlops-state"),
                                "revision": f"r{self.passes}", **options}
        script = f"import runpy, sys; sys.argv = ['driver', {json.dumps(args)!r}]; runpy.run_path({str(DRIVER)!r}, run_name='__main__')"
        done = self.emulator.sdk(script, self.workdir, timeout=400, extra_env={"PYTHONPATH": str(emulators.REPO)})
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        assert lines, f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-6000:]}"
        return dict(json.loads(lines[-1].removeprefix("RESULT ")))


def start(tmp: Path) -> Any:
    return emulators.start_emulator(tmp / "state", "--aks-cluster", "aks1=Standard_NC6s_v3:2", "--poll-ms", "50",
                                    "--lro-delay", "0.05")


def writes(counts: dict[str, int]) -> dict[str, int]:
    """Requests that change state (login and read-only POSTs such as listKeys and token are not)."""
    out = {}
    for route, n in counts.items():
        method, host, path = route.split(" ", 2)
        if method in ("GET", "HEAD") or host == "login" or path.lower().endswith(("/listkeys", "/token", "/listsecrets")):
            continue
        out[route] = n
    return out


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    running = start(tmp_path_factory.mktemp("azureml-v2"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("azureml-v2-work")


@pytest.fixture
def repo(emulator: Any, workdir: Path) -> Repo:
    config = json.loads((emulator.state_dir / "config.json").read_text())
    return Repo(workdir / "repo", config)


@pytest.fixture(scope="module")
def reconcile(emulator: Any, workdir: Path) -> Reconciler:
    return Reconciler(emulator, workdir)


def _applied(out: dict[str, Any]) -> dict[str, Any]:
    assert out["status"] in ("applied", "no-changes"), json.dumps(out, indent=1)[:6000]
    return out


def test_applying_the_manifests_to_a_v2_workspace_serves_predictions_with_the_key(repo: Repo, reconcile: Reconciler) -> None:
    out = _applied(reconcile(repo, readBack=True, predict={"service": "svc-tiny", "rows": [[1, 1], [2, 0]]}))
    actual = out["actual"]
    assert actual["AksCluster/aks-gpu"]["details"]["computeType"] == "Kubernetes"
    assert actual["AksCluster/aks-gpu"]["spec"]["attach"]["namespace"] == "amlops"
    # DEFAULT_GPU_IMAGE is Azure ML's current minimal GPU inference image (concept-prebuilt-docker-images-inference)
    assert actual["Environment/myenv"]["details"]["image"] == \
        "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py39-cuda11.8-gpu-inference:latest"
    assert actual["Model/tiny"]["tags"]["amlops.dev/managed-by"] == "amlops"
    svc = actual["Webservice/svc-tiny"]
    assert svc["details"]["api"] == "v2" and svc["details"]["state"] == "Succeeded"
    live = svc["details"]["liveDeployment"]
    assert svc["details"]["traffic"] == {live: 100}
    assert out["predict"]["status"] == 200 and out["predict"]["body"] == [[3.0], [2.0]]
    assert out["predict"]["deployments"] == [live]
    for rid in ("AksCluster/aks-gpu", "Environment/myenv", "Model/tiny", "Webservice/svc-tiny"):
        assert out["resources"][rid][0][:3] == ["Ready", True, "ReconciliationSucceeded"], (rid, out["resources"])


def test_a_second_apply_makes_zero_writes_and_few_requests(emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    _applied(reconcile(repo))
    emulator.reset_counts()
    out = reconcile(repo)
    assert out["status"] == "no-changes" and out["changes"] == [], out
    counts = emulator.counts()
    assert writes(counts) == {}, counts
    # One list per kind (and one GET per managed asset version, for its tags); the workspace is read
    # twice because the v1 web services of the same workspace are listed too (migration candidates).
    arm = {route: n for route, n in counts.items() if route.split(" ", 2)[1] == "arm" and route != "GET arm {WS}"}
    assert all(n == 1 for n in arm.values()) and counts["GET arm {WS}"] <= 2, json.dumps(counts, indent=0)
    assert sum(n for route, n in counts.items() if route.split(" ", 2)[1] != "login") <= 12, counts


def test_a_no_op_pass_makes_the_same_requests_whatever_the_number_of_assets_and_misses_no_change_by_hand(
        emulator: Any, repo: Repo, reconcile: Reconciler, workdir: Path) -> None:
    # Passes in one process with one backend pool, as ``amlops run`` keeps it: the first reads every
    # asset's versions; later ones list each kind once and a container's versions only when the
    # container list shows it changed (or amlops wrote to it).
    config = json.loads((emulator.state_dir / "config.json").read_text())
    more = Repo(workdir / "repo-more", config)
    for i in (2, 3, 4):
        more.write(f"models/tiny-{i}.yaml", _doc("Model", f"tiny-{i}", {"path": "tiny", "tags": {"dataset": "ones"}}))
    more.write("environments/myenv-2.yaml", _doc("Environment", "myenv-2", {
        "baseImage": "DEFAULT_GPU_IMAGE", "conda": {"dependencies": ["python=3.11", {"pip": ["numpy"]}]}}))
    bigger = {"root": str(more.root), "count": True}
    def acted(out: dict[str, Any]) -> list[tuple[str, str]]:
        return sorted((c["id"], c["action"]) for c in out["plan"] if c["action"] != "no-op")

    # After a pass that wrote, the next one lists again what amlops wrote to ("settle"), then none.
    steps = {
        "cold": {}, "settle-1": {},  # lists the versions of every asset (and applies what is missing)
        "small": {"count": True},  # 1 environment, 1 model
        "grow": {"root": str(more.root)}, "settle-2": {"root": str(more.root)},  # 3 models, 1 environment more
        "large": bigger,  # 2 environments, 4 models
        "retagged": {**bigger, "byHand": {"workspace": config, "kind": "model", "name": "tiny-2", "do": "retag",
                                          "tags": {"dataset": "zeros"}}},
        "settle-3": {"root": str(more.root)},
        "registered": {**bigger, "byHand": {"workspace": config, "kind": "environment", "name": "myenv-2",
                                            "do": "register", "version": "1", "tags": {"owner": "someone"}}},
        "archived": {**bigger, "byHand": {"workspace": config, "kind": "model", "name": "tiny-3", "do": "archive"}},
        "settle-4": {"root": str(more.root)},
        "steady": bigger,
        "prune": {"allowMassDelete": True},  # back to the walk-through: the extra assets are pruned
    }
    passes = dict(zip(steps, reconcile(repo, admin=f"http://127.0.0.1:{emulator.port}/_emulator/",
                                       passes=list(steps.values()))["passes"], strict=True))
    for out in passes.values():
        _applied(out)
    small, large, retagged, registered, archived, steady = (
        passes[name] for name in ("small", "large", "retagged", "registered", "archived", "steady"))
    for out in (small, large, steady):
        assert out["status"] == "no-changes" and writes(out["counts"]) == {}, out["counts"]
        assert not any("/versions" in route for route in out["counts"]), out["counts"]
    # The same requests at 5 and 9 resources (one list per kind, no login: the session holds its
    # tokens), and again after the changes by hand.
    assert small["counts"] == large["counts"] == steady["counts"], (small["counts"], large["counts"], steady["counts"])
    assert all(n == 1 and " login " not in route for route, n in small["counts"].items()), small["counts"]
    versions = "GET arm {WS}/%s/{name}/versions"
    # A user's re-tag of amlops's version is seen (its container changed) and put back.
    assert acted(retagged) == [("Model/tiny-2", "update")], retagged["plan"]
    # A version a user registered is seen (one list of that container's versions); it is not amlops's.
    assert registered["status"] == "no-changes" and registered["counts"][versions % "environments"] == 1, registered
    assert versions % "models" not in registered["counts"], registered["counts"]
    # amlops's version archived by hand: the model is missing, so it is registered again.
    assert acted(archived) == [("Model/tiny-3", "create")], archived["plan"]
    assert acted(passes["prune"]) == [("Environment/myenv-2", "delete"), ("Model/tiny-2", "delete"),
                                      ("Model/tiny-3", "delete"), ("Model/tiny-4", "delete")], passes["prune"]["plan"]


def test_changing_replicas_scales_the_live_deployment_in_place(emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    before = _applied(reconcile(repo, predict={"service": "svc-tiny", "rows": [[1, 1]]}))["predict"]
    repo.service(replicas=2)
    emulator.reset_counts()
    out = _applied(reconcile(repo, predict={"service": "svc-tiny", "rows": [[1, 1]]}))
    assert [c["action"] for c in out["changes"]] == ["update"], out["changes"]
    after = out["predict"]
    assert after["deployments"] == before["deployments"] and after["traffic"] == before["traffic"]
    # The same deployment, PUT once with two instances (and the endpoint's tags once).
    assert emulator.counts()["PUT arm {WS}/onlineEndpoints/{endpoint}/deployments/{name}"] == 1, emulator.counts()
    repo.service(replicas=1)
    _applied(reconcile(repo))


class Clients:
    """Two looping clients through the endpoint URI: one new connection per request, one keep-alive.

    ``uri`` may be changed while they run (a client following the published scoring URI).
    """

    def __init__(self, uri: str, key: str) -> None:
        self.uri, self.key = uri, key
        self.stop = threading.Event()
        self.results: dict[str, list[Any]] = {"fresh": [], "keepalive": []}
        self.threads = [threading.Thread(target=self._loop, args=(name,), daemon=True) for name in self.results]

    def _loop(self, name: str) -> None:
        import requests

        session = requests.Session() if name == "keepalive" else None
        headers = {"Content-Type": "application/json", "Authorization": "Bearer " + self.key}
        body = json.dumps({"data": [[1, 1]]})
        while not self.stop.is_set():
            try:
                if session is None:
                    with requests.Session() as fresh:
                        fresh.trust_env = False
                        resp = fresh.post(self.uri, data=body, headers={**headers, "Connection": "close"}, timeout=30)
                else:
                    session.trust_env = False
                    resp = session.post(self.uri, data=body, headers=headers, timeout=30)
                self.results[name].append((resp.status_code, resp.text))
            except Exception as exc:  # every client exception is a failed request
                self.results[name].append((type(exc).__name__, str(exc)[:200]))

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def test_a_new_model_file_rolls_out_through_canary_steps_with_zero_failed_requests(
        emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    first = _applied(reconcile(repo, predict={"service": "svc-tiny", "rows": [[1, 1]]}))["predict"]
    repo.service(rollout={"strategy": "canary", "steps": [{"weight": 10}, {"weight": 50}, {"weight": 100}],
                          "sampleRequest": {"body": json.dumps({"data": [[1, 1]]})}})
    _applied(reconcile(repo))
    repo.weights([[2.0], [2.0]])
    emulator.reset_counts()
    with Clients(first["uri"], first["key"]) as clients:
        # One short step per pass (the rollout engine's), passes run as the loop runs them.
        out = _applied(reconcile(repo, drive={"service": "svc-tiny"}, predict={"service": "svc-tiny", "rows": [[1, 1]]}))
    for name, results in clients.results.items():
        assert results and all(r[0] == 200 for r in results), (name, [r for r in results if r[0] != 200][:5])
        assert {r[1] for r in results} <= {"[[3.0]]", "[[4.0]]"}, (name, {r[1] for r in results})
    after = out["predict"]
    assert after["body"] == [[4.0]] and after["deployments"] != first["deployments"] and len(after["deployments"]) == 1
    (change,) = [c for c in out["changes"] if c["id"] == "Webservice/svc-tiny"]
    assert [s["weight"] for s in change["rollout"]] == [10, 50, 100], change
    # Endpoint PUTs: the rollout stored (1); per step its state, its traffic table and its start once
    # in force (3 × 3); promotion: all traffic, state, the new deployment named live, state removed (4).
    # Never one on a pass that merely waits for requests.
    puts = emulator.counts()["PUT arm {WS}/onlineEndpoints/{name}"]
    assert puts <= 1 + 3 * 3 + 4, (puts, len(out["passes"]))


def test_a_broken_new_model_gets_no_traffic_and_the_old_deployment_keeps_serving(
        emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    before = _applied(reconcile(repo, predict={"service": "svc-tiny", "rows": [[1, 1]]}))["predict"]
    repo.write("src/score.py", "def init():\n    raise RuntimeError('weights are corrupt')\n\ndef run(raw):\n    return []\n")
    out = reconcile(repo, predict={"service": "svc-tiny", "rows": [[1, 1]]})
    assert out["status"] == "failed", out
    (change,) = [c for c in out["changes"] if c["id"] == "Webservice/svc-tiny"]
    assert change["status"] == "failed" and "got no traffic and was deleted" in change["error"], change
    status = {c[0]: c for c in out["resources"]["Webservice/svc-tiny"]}
    assert status["Stalled"][1] is True and "no traffic" in status["Stalled"][3], status
    assert out["predict"]["deployments"] == before["deployments"] and out["predict"]["body"] == before["body"]
    repo.write("src/score.py", SCORE)
    _applied(reconcile(repo))


def test_keys_and_logs_of_a_v2_service(repo: Repo, reconcile: Reconciler) -> None:
    out = _applied(reconcile(repo, access="svc-tiny"))
    assert out["access"]["primary_kept"] and out["access"]["secondary_changed"]
    assert isinstance(out["access"]["log"], str) and out["access"]["log"]


def test_throttled_list_calls_are_retried_honouring_retry_after(emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    _applied(reconcile(repo))
    emulator.reset_counts()
    # More 429s than azure-core's own retries: the backend reports a transient error and the read is retried.
    emulator.set_faults([{"route": "GET arm {WS}/onlineEndpoints", "status": 429, "count": 5, "retryAfter": 1}])
    try:
        out = reconcile(repo)
    finally:
        emulator.set_faults([])
    assert out["status"] == "no-changes", out
    assert emulator.counts()["GET arm {WS}/onlineEndpoints"] == 6, emulator.counts()
    assert writes(emulator.counts()) == {}


def test_sdk_retries_are_bounded_and_long_server_waits_are_not_slept_inside_the_sdk(
        emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    _applied(reconcile(repo))
    # Endless throttling: each read attempt is one request plus the backend's 3 SDK retries, and the
    # driver's 3 attempts end it; the pass fails and says why.
    emulator.reset_counts()
    emulator.set_faults([{"route": "GET arm {WS}/onlineEndpoints", "status": 429, "retryAfterMs": 50}])
    try:
        out = reconcile(repo)
    finally:
        emulator.set_faults([])
    assert out["status"] == "failed" and "Azure answered 429; will retry" in out["errors"][0], out
    assert emulator.counts()["GET arm {WS}/onlineEndpoints"] == 3 * (1 + 3), emulator.counts()

    # Azure ML's retry-after-ms asks for two minutes: the SDK does not sleep them in a worker (one
    # request, no retry in place); the error carries the wait, and as it is longer than this pass's
    # retry budget (60 s) the pass ends at once, leaving it to the next one.
    emulator.reset_counts()
    emulator.set_faults([{"route": "GET arm {WS}/onlineEndpoints", "status": 429, "count": 1,
                          "retryAfterMs": 120000}])
    try:
        out = reconcile(repo)
    finally:
        emulator.set_faults([])
    assert out["status"] == "failed" and "after the 120 s the service asked for" in out["errors"][0], out
    assert emulator.counts()["GET arm {WS}/onlineEndpoints"] == 1, emulator.counts()
    assert _applied(reconcile(repo))["status"] == "no-changes"


LRO_PAST_ITS_TIMEOUT = '''
import json
from controller.backends.azureml.v2.backend import AzureMLV2Backend
from controller.backends.base import ApplyContext
from controller.sources.loading import load_desired_state
from controller.structs.errors import TransientError
from controller.structs.manifests import Kind
from controller.structs.plans import Action, Change, FieldDiff
from controller.structs.states import ResourceId

desired = load_desired_state(ROOT)
workspace = next(r.manifest for r in desired if r.id.kind is Kind.WORKSPACE)
backend = AzureMLV2Backend(workspace, "amlops", lro_timeout_s=6.0, list_v1_services=False)
seen = []
ctx = ApplyContext("amlops", "r-lro", ROOT, desired, lambda message, fraction: seen.append(message))
rid = ResourceId(Kind.WEBSERVICE, "svc-tiny")
try:
    backend.update(desired.resources[rid], Change(rid, Action.UPDATE, (FieldDiff("spec.replicas", 1, 2),)), ctx)
    out = {"error": None}
except TransientError as exc:
    out = {"error": str(exc)}
out["progress"] = seen
print("\\nRESULT " + json.dumps(out), flush=True)
'''


def test_a_long_operation_is_awaited_with_progress_until_its_timeout_then_retried_later(
        emulator: Any, repo: Repo, reconcile: Reconciler, workdir: Path) -> None:
    _applied(reconcile(repo))
    repo.service(replicas=2)
    # Every poll of an operation's status hangs 30 s: the scale's operation never reports in time.
    emulator.set_faults([{"route": "GET arm */mfeOperationsStatus/{op}", "latencySeconds": 30}])
    try:
        script = f"ROOT = {str(repo.root)!r}\n" + LRO_PAST_ITS_TIMEOUT
        done = emulator.sdk(script, workdir, timeout=120, extra_env={"PYTHONPATH": str(emulators.REPO)})
    finally:
        emulator.set_faults([])
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    # Progress while waiting, then a transient error naming the operation: the next pass looks again.
    assert any(m.startswith("create deployment") and m.endswith(": InProgress after 5 s") for m in out["progress"]), out
    assert out["error"] and "not finished after 10 s" in out["error"] and "next pass" in out["error"], out
    repo.service(replicas=1)
    _applied(reconcile(repo))


def test_a_token_service_answers_with_an_aml_token(emulator: Any, repo: Repo, reconcile: Reconciler,
                                                   workdir: Path) -> None:
    import requests

    repo.service(name="svc-token", auth="token")
    try:
        out = _applied(reconcile(repo, token="svc-token"))
        assert out["token"]["status"] == 200 and out["token"]["body"] == "[[3.0]]", out["token"]
        assert out["token"]["expires"] > out["token"]["refresh"] > 0
        # `amlops token` gives the endpoint's token (its token route) as it does on v1 and local.
        cli = json.loads(run_amlops(emulator, repo.root.parent, workdir / "cli-state",
                                    "token", "svc-token", "--path", "repo", "--output", "json"))
        assert cli["tokenType"] and cli["expiryOn"] > cli["refreshAfter"] > 0, cli
        uri = out["token"]["uri"]
        body = json.dumps({"data": [[1, 1]]})
        ok = requests.post(uri, data=body, timeout=30, headers={"Content-Type": "application/json",
                                                                 "Authorization": "Bearer " + cli["accessToken"]})
        assert (ok.status_code, ok.text) == (200, "[[3.0]]")
        # A token service has no keys: `amlops keys` says so rather than print nothing.
        keys = emulator.sdk(
            "import runpy, sys; sys.argv = ['amlops', 'keys', 'svc-token', '--path', 'repo', '--state-dir', "
            f"{str(workdir / 'cli-state')!r}]; runpy.run_module('controller', run_name='__main__', alter_sys=True)",
            repo.root.parent, timeout=240, extra_env={"PYTHONPATH": str(emulators.REPO)})
        assert keys.returncode != 0 and "does not use keys" in keys.stderr, (keys.returncode, keys.stderr[-2000:])
    finally:
        repo.remove("services/svc-token.yaml")
        _applied(reconcile(repo))


def test_removing_the_manifest_deletes_endpoint_and_deployments_and_keeps_the_attachment(
        emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    _applied(reconcile(repo))
    repo.remove("services/svc-tiny.yaml")
    out = _applied(reconcile(repo, readBack=True))
    assert "Webservice/svc-tiny" not in out["actual"], out["actual"].keys()
    assert out["actual"]["AksCluster/aks-gpu"]["details"]["provisioningState"] == "Succeeded"
    deletes = [r for r in writes(emulator.counts()) if r.startswith("DELETE")]
    assert any("onlineendpoints" in r.lower() for r in deletes) and not any("/computes/" in r.lower() for r in deletes)
    repo.service()


def amlops_process(emulator: Any, cwd: Path, state_dir: Path, *args: str) -> Any:
    """``amlops ARGS --state-dir STATE_DIR`` in the emulator's environment (its proxy, CA and principal)."""
    argv = [*args, "--state-dir", str(state_dir)]
    script = (f"import runpy, sys; sys.argv = ['amlops', *{argv!r}]; "
              "runpy.run_module('controller', run_name='__main__', alter_sys=True)")
    return emulator.sdk(script, cwd, timeout=400, extra_env={"PYTHONPATH": str(emulators.REPO)})


def run_amlops(emulator: Any, cwd: Path, state_dir: Path, *args: str) -> str:
    """The standard output of a successful ``amlops ARGS``."""
    done = amlops_process(emulator, cwd, state_dir, *args)
    assert done.returncode == 0, f"amlops {args}: {done.returncode}\n{done.stderr[-3000:]}"
    return str(done.stdout)


def test_amlops_apply_on_v2_leaves_no_sdk_console_chatter(emulator: Any, repo: Repo, reconcile: Reconciler,
                                                          workdir: Path) -> None:
    _applied(reconcile(repo))
    repo.service(replicas=2)
    try:
        done = amlops_process(emulator, repo.root.parent, workdir / "amlops-state", "apply", "repo", "--yes")
        assert done.returncode == 0, done.stderr[-3000:]
        assert "~ Webservice/svc-tiny: done" in done.stderr, done.stderr[-3000:]
        # azure-ai-ml's own prints ("Check: endpoint … exists" on stderr, a "." on stdout per poll of the
        # deployment's operation) stay out of the output.
        output = done.stdout + "\n" + done.stderr
        assert "Check: endpoint" not in output, done.stderr[-3000:]
        assert not [line for line in output.splitlines() if line.startswith(".")], output[-3000:]
    finally:
        repo.service(replicas=1)
        _applied(reconcile(repo))


def test_an_endpoint_amlops_did_not_create_is_never_pruned(emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    _applied(reconcile(repo))
    # Someone else's endpoint in the same workspace, on the same attached cluster, without amlops's tags.
    ws = emulator.workspace_id()
    status, _ = emulator.arm("PUT", f"{ws}/onlineEndpoints/theirs?api-version=2023-04-01-preview", {
        "location": "eastus", "tags": {"team": "other"},
        "properties": {"authMode": "Key", "compute": f"{ws}/computes/aks-gpu", "traffic": {}}})
    assert status in (200, 201), status
    try:
        out = reconcile(repo, readBack=True)
        assert out["status"] == "no-changes" and {c["action"] for c in out["plan"]} == {"no-op"}, out["plan"]
        assert not [c for c in out["plan"] if c["id"].endswith("/theirs")], out["plan"]
        assert "Webservice/theirs" not in out["actual"]
        status, body = emulator.arm("GET", f"{ws}/onlineEndpoints/theirs?api-version=2023-04-01-preview")
        assert status == 200 and body["tags"] == {"team": "other"}, (status, body)
    finally:
        emulator.arm("DELETE", f"{ws}/onlineEndpoints/theirs?api-version=2023-04-01-preview")


def test_amlops_status_keys_and_logs_reach_a_v2_service(emulator: Any, repo: Repo, reconcile: Reconciler,
                                                        workdir: Path) -> None:
    _applied(reconcile(repo))

    def amlops(*args: str) -> str:
        return run_amlops(emulator, repo.root.parent, workdir / "cli-state", *args)

    import requests

    keys = json.loads(amlops("keys", "svc-tiny", "--path", "repo", "--output", "json"))
    status = json.loads(amlops("status", "--path", "repo", "--output", "json"))
    uri = _scoring_uri(status)
    assert uri.endswith("/api/v1/endpoint/svc-tiny/score"), status
    resp = requests.post(uri, data=json.dumps({"data": [[1, 1]]}), timeout=30,
                         headers={"Content-Type": "application/json", "Authorization": "Bearer " + keys["primaryKey"]})
    assert resp.status_code == 200 and resp.json() == [[3.0]], (resp.status_code, resp.text)
    assert amlops("logs", "svc-tiny", "--path", "repo", "--tail", "20").strip()
    (row,) = [r for r in status["resources"] if r["name"] == "svc-tiny"]
    (live,) = row["traffic"]
    assert row["traffic"] == {live: 100} and row["state"] == "Succeeded", row
    assert f"traffic: {live} 100 %" in amlops("status", "--path", "repo")


def _scoring_uri(status: Any) -> str:
    """The first scoringUri anywhere in ``amlops status --output json``."""
    if isinstance(status, dict):
        if isinstance(status.get("scoringUri"), str):
            return str(status["scoringUri"])
        values: list[Any] = list(status.values())
    elif isinstance(status, list):
        values = status
    else:
        return ""
    for value in values:
        found = _scoring_uri(value)
        if found:
            return found
    return ""


def _second_source(workdir: Path, config: dict[str, str]) -> Repo:
    """Another team's repo on the same v2 workspace: the shared cluster and environment, an endpoint of
    its own on a model of its own, and a model named like the first repo's with other weights."""
    import numpy as np

    other = Repo(workdir / "repo-b", config)
    other.remove("services/svc-tiny.yaml")
    other.weights([[5.0], [5.0]])
    other.write("models/tiny-b.yaml", _doc("Model", "tiny-b", {"path": "tiny-b"}))
    (other.root / "models" / "tiny-b" / "model").mkdir(parents=True, exist_ok=True)
    np.save(other.root / "models" / "tiny-b" / "model" / "w.npy", np.array([[2.0], [2.0]]))
    other.service("svc-b", models=["tiny-b"])
    return other


def _plan(out: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["id"]: (c["action"], c["reason"]) for c in out["plan"]}


@pytest.mark.timeout(480)  # ten reconcile passes, two endpoints deployed (about 50 s on an idle machine)
def test_two_sources_under_one_controller_name_on_one_v2_workspace_never_delete_each_others_endpoints(
        emulator: Any, repo: Repo, reconcile: Reconciler, workdir: Path) -> None:
    # Two controllers named alike, each with its own source and state: the first one's first pass
    # stamps its inventory on what it runs.
    a = {"source": f"{repo.root}//.", "stateDir": str(workdir / "amlops-state-a")}
    first_a = _applied(reconcile(repo, readBack=True, predict={"service": "svc-tiny", "rows": [[1, 1], [2, 0]]}, **a))
    before = first_a["actual"]
    assert before["Webservice/svc-tiny"]["tags"]["amlops.dev/source"] == a["source"]
    assert before["Model/tiny"]["tags"]["amlops.dev/source"] == a["source"]
    config = json.loads((emulator.state_dir / "config.json").read_text())
    other = _second_source(workdir, config)
    b = {"source": f"{other.root}//.", "stateDir": str(workdir / "amlops-state-b")}

    emulator.reset_counts()
    first_b = reconcile(other, readBack=True, **b)
    assert first_b["status"] == "degraded", first_b  # applied its own, and reports the conflict
    plan = _plan(first_b)
    assert sorted((rid, p[0]) for rid, p in plan.items() if p[0] != "no-op") == [
        ("Model/tiny-b", "create"), ("Webservice/svc-b", "create")], plan
    assert plan["Model/tiny"][1].startswith("conflict: Model/tiny is applied by another source"), plan["Model/tiny"]
    assert ["Stalled", True, "OwnershipConflict"] in [c[:3] for c in first_b["resources"]["Model/tiny"]]
    assert first_b["actual"]["Webservice/svc-b"]["tags"]["amlops.dev/source"] == b["source"]
    counts = writes(emulator.counts())
    assert not [r for r in counts if r.startswith("DELETE")], counts
    # One model version registered (tiny-b's); tiny is neither re-registered nor re-tagged.
    assert sum(n for r, n in counts.items() if r.startswith("PUT arm {WS}/models/")) == 1, counts

    # Passes of both, alternating, as two controllers on one workspace would run: nothing written, no flapping.
    emulator.reset_counts()
    outs = [reconcile(repo, **a), reconcile(other, **b), reconcile(repo, **a),
            reconcile(other, readBack=True, predict={"service": "svc-tiny", "rows": [[1, 1], [2, 0]]}, **b)]
    assert [o["status"] for o in outs] == ["no-changes", "degraded", "no-changes", "degraded"], outs
    assert writes(emulator.counts()) == {}, emulator.counts()
    actual = outs[-1]["actual"]
    assert {"Webservice/svc-tiny", "Webservice/svc-b", "Model/tiny", "Model/tiny-b"} <= set(actual)
    assert actual["Model/tiny"]["details"]["version"] == before["Model/tiny"]["details"]["version"]
    assert actual["Model/tiny"]["tags"]["amlops.dev/source"] == a["source"]
    assert outs[-1]["predict"]["body"] == first_a["predict"]["body"]  # still the first source's model

    # Each source prunes its own: the second team removes everything it applied.
    for rel in ("services/svc-b.yaml", "models/tiny-b.yaml"):
        other.remove(rel)
    emulator.reset_counts()
    gone = reconcile(other, readBack=True, allowMassDelete=True, **b)
    assert gone["status"] == "degraded", gone  # its Model/tiny still conflicts with the first source's
    assert not {"Webservice/svc-b", "Model/tiny-b"} & set(gone["actual"]), gone["actual"].keys()
    assert {"Webservice/svc-tiny", "Model/tiny", "AksCluster/aks-gpu"} <= set(gone["actual"])
    deletes = [r for r in writes(emulator.counts()) if r.startswith("DELETE")]
    assert deletes == ["DELETE arm {WS}/onlineEndpoints/{name}"], emulator.counts()
    after = _applied(reconcile(repo, predict={"service": "svc-tiny", "rows": [[1, 1], [2, 0]]}, **a))
    assert after["status"] == "no-changes" and after["predict"]["body"] == first_a["predict"]["body"]

    # A pruned model declared again with the same content comes back: its archived version (which
    # Azure's lists leave out) is re-tagged for this revision and active again, so reads see it.
    other.write("models/tiny-b.yaml", _doc("Model", "tiny-b", {"path": "tiny-b"}))
    back = reconcile(other, readBack=True, **b)
    assert _plan(back)["Model/tiny-b"][0] == "create" and "Model/tiny-b" in back["actual"], back
    assert back["actual"]["Model/tiny-b"]["details"]["version"] == first_b["actual"]["Model/tiny-b"]["details"]["version"]
    other.remove("models/tiny-b.yaml")
    assert "Model/tiny-b" not in reconcile(other, readBack=True, allowMassDelete=True, **b)["actual"]


def test_azure_retry_after_is_honoured_and_the_sdks_own_retries_are_bounded_on_v2(
        emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    from controller.backends.azureml.v2.sessions import SDK_RETRIES

    route = "PUT arm {WS}/onlineEndpoints/{endpoint}/deployments/{name}"
    _applied(reconcile(repo))

    def puts() -> list[dict[str, Any]]:
        return [r for r in emulator.request_log() if r["route"] == route]

    # Two 429s with Retry-After: 2: azure-core retries inside the call, each time once the 2 s have
    # passed (the emulator's clock), and the change succeeds on its first attempt.
    repo.service(replicas=2)
    emulator.reset_counts()
    emulator.set_faults([{"route": route, "status": 429, "count": 2, "retryAfter": 2}])
    try:
        out = _applied(reconcile(repo))
    finally:
        emulator.set_faults([])
    (change,) = out["changes"]
    assert (change["status"], change["attempts"]) == ("succeeded", 1), change
    log = puts()
    assert [(r["status"], r["retryAfter"]) for r in log] == [(429, 2.0), (429, 2.0), (None, None)], log
    gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(log)]
    assert all(2.0 <= gap < 16.0 for gap in gaps), gaps  # the bound only rules out back-offs of 16 s and more

    # More 429s than the SDK may retry: the call gives up after its bounded retries, and the
    # executor's next attempt (waiting the Retry-After it was given) converges.
    repo.service(replicas=1)
    emulator.reset_counts()
    emulator.set_faults([{"route": route, "status": 429, "count": SDK_RETRIES + 2, "retryAfter": 1}])
    try:
        out = _applied(reconcile(repo))
    finally:
        emulator.set_faults([])
    (change,) = out["changes"]
    assert (change["status"], change["attempts"]) == ("succeeded", 2), change
    log = puts()
    assert [r["status"] for r in log] == [429] * (SDK_RETRIES + 2) + [None], log
    gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(log)]
    assert all(1.0 <= gap < 16.0 for gap in gaps), gaps
