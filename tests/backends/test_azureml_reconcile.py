"""The azureml backend driven through the reconcile engine, against a real emulator subprocess.

Each pass is ``controller.core.reconciling.reconcile`` with a real ``BackendPool`` and ``Recorder``
(what ``amlops apply`` wires up) in its own process, with the emulator's env.sh (HTTPS_PROXY and
REQUESTS_CA_BUNDLE act process-wide). The Workspace manifest names ``backend: azureml`` and takes
its credentials by reference (``fromEnv``). The tests read the emulator's request counters between
passes. Reconciling is level-triggered, so each test first converges on the state it starts from
and does not depend on the order the tests run in.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.azureml

_spec = importlib.util.spec_from_file_location("emulators", Path(__file__).parents[1] / "emulator" / "emulators.py")
assert _spec is not None and _spec.loader is not None
emulators = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("emulators", emulators)
_spec.loader.exec_module(emulators)

DRIVER = Path(__file__).parents[1] / "emulator" / "reconcile_driver.py"
WS = "/modelmanagement/v1.0{WS}"

SCORE = textwrap.dedent('''
    import json, os
    import numpy as np

    def init():
        global W
        W = np.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "w.npy"))

    def run(raw_data):
        return (np.array(json.loads(raw_data)["data"]) @ W).tolist()
''')


def _doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "amlops.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


class Repo:
    """A manifests folder shaped like ``manifests/``, with a numpy model so replicas start fast."""

    def __init__(self, root: Path, config: dict[str, str]) -> None:
        self.root = root
        self.write("workspace.yaml", _doc("Workspace", config["workspace_name"], {
            "backend": "azureml", "subscriptionId": config["subscription_id"],
            "resourceGroup": config["resource_group"], "workspaceName": config["workspace_name"],
            "credentials": {"type": "servicePrincipal", "tenantId": {"fromEnv": "AZURE_TENANT_ID"},
                            "clientId": {"fromEnv": "AZURE_CLIENT_ID"},
                            "clientSecret": {"fromEnv": "AZURE_CLIENT_SECRET"}}}))
        self.write("clusters/aks-gpu.yaml", _doc("AksCluster", "aks-gpu", {
            "vmSize": "Standard_NC6", "agentCount": 3, "clusterPurpose": "FastProd", "deletionPolicy": "Retain"}))
        self.write("environments/myenv.yaml", _doc("Environment", "myenv", {
            "baseImage": "DEFAULT_GPU_IMAGE",
            "conda": {"dependencies": ["python=3.6.2", {"pip": ["azureml-defaults>=1.0.45", "numpy"]}]}}))
        self.write("models/tiny.yaml", _doc("Model", "tiny", {"path": "tiny", "tags": {"dataset": "ones"}}))
        self.weights([[1.0], [2.0]])
        self.write("src/score.py", SCORE)
        self.service()

    def write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def weights(self, w: list[list[float]]) -> None:
        import numpy as np

        (self.root / "models" / "tiny" / "model").mkdir(parents=True, exist_ok=True)
        np.save(self.root / "models" / "tiny" / "model" / "w.npy", np.array(w))

    def service(self, name: str = "svc-tiny", replicas: int = 1, gpu: int = 1) -> None:
        self.write(f"services/{name}.yaml", _doc("Webservice", name, {
            "cluster": "aks-gpu", "models": ["tiny"], "environment": "myenv", "sourceDirectory": "../src",
            "entryScript": "score.py", "replicas": replicas, "resources": {"cpu": 0.5, "memoryGb": 1, "gpu": gpu},
            "maxQueueWaitMs": 10000}))

    def remove(self, rel: str) -> None:
        (self.root / rel).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    running = emulators.start_emulator(tmp_path_factory.mktemp("azureml-reconcile") / "state")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("azureml-reconcile-work")


@pytest.fixture
def repo(emulator: Any, workdir: Path) -> Repo:
    """The repo in its starting shape (one service, one replica, the first weights), rewritten per test."""
    config = json.loads((emulator.state_dir / "config.json").read_text())
    root = workdir / "repo"
    for extra in ("services/svc-big.yaml", "services/svc-fail.yaml"):
        (root / extra).unlink(missing_ok=True)
    return Repo(root, config)


class Reconciler:
    """Runs reconcile passes in subprocesses; the recorder's state folder persists across passes."""

    def __init__(self, emulator: Any, workdir: Path) -> None:
        self.emulator = emulator
        self.workdir = workdir
        self.passes = 0

    def __call__(self, repo: Repo, *, read_back: bool = False, predict: list[list[float]] | None = None,
                 service: str = "svc-tiny", source: str = "", state: str = "amlops-state",
                 allow_mass_delete: bool = False) -> dict[str, Any]:
        self.passes += 1
        args: dict[str, Any] = {"root": str(repo.root), "stateDir": str(self.workdir / state),
                                "revision": f"r{self.passes}", "readBack": read_back, "source": source,
                                "allowMassDelete": allow_mass_delete}
        if predict is not None:
            args["predict"] = {"service": service, "rows": predict}
        script = f"import runpy, sys; sys.argv = ['driver', {json.dumps(args)!r}]; runpy.run_path({str(DRIVER)!r}, run_name='__main__')"
        # No AZUREML_DEFAULT_RETRIES here: the backend itself turns the SDK's own retry loop off.
        done = self.emulator.sdk(script, self.workdir, timeout=240, extra_env={"PYTHONPATH": str(emulators.REPO)})
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        assert lines, f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-6000:]}"
        return dict(json.loads(lines[-1].removeprefix("RESULT ")))


@pytest.fixture(scope="module")
def reconcile(emulator: Any, workdir: Path) -> Reconciler:
    return Reconciler(emulator, workdir)


def _converged(reconcile: Reconciler, repo: Repo) -> dict[str, Any]:
    out = reconcile(repo)
    assert out["status"] in ("applied", "no-changes"), out
    return out


# Writes are what changes state. Login, the SDK's pre-flight validation (a dry run it skips when
# it fails) and the POSTs that only read (listkeys, token) are not writes.
_READ_POSTS = ("/services/validate", "/listkeys", "/token")


def writes(counts: dict[str, int]) -> dict[str, int]:
    out = {}
    for route, n in counts.items():
        method, host, path = route.split(" ", 2)
        if method in ("GET", "HEAD") or host == "login" or path.endswith(_READ_POSTS) or "/services/validate" in path:
            continue
        out[route] = n
    return out


def _change(out: dict[str, Any], rid: str) -> dict[str, Any]:
    found = [c for c in out["changes"] if c["id"] == rid]
    assert found, out
    return dict(found[0])


@pytest.fixture
def empty_workspace(tmp_path: Path) -> Iterator[Any]:
    """An emulator of its own: the workspace holds nothing, whichever tests ran before."""
    running = emulators.start_emulator(tmp_path / "state")
    yield running
    running.stop()


def _replica_devices(state_dir: Path) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each scoring replica the emulator's data plane runs under ``state_dir``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "controller.scoring" in cmdline and any(str(state_dir) in part for part in cmdline):
            with contextlib.suppress(psutil.Error):
                found.append(proc.environ().get("CUDA_VISIBLE_DEVICES", "unset"))
    return found


@pytest.mark.parametrize("machine_gpus", [0, 1, 4])
def test_gpu_services_deploy_the_same_on_a_machine_with_0_1_or_4_gpus(machine_gpus: int, tmp_path: Path) -> None:
    # Azure's scheduler (the emulated cluster: 3 × Standard_NC6) decides whether GPU services fit; the
    # machine's own GPUs only say where the emulator's data plane runs their replicas: one GPU each
    # while the machine has them, CPU beyond that (as on a machine without any), never a refusal.
    gpus = [{"uuid": f"GPU-machine-{i}", "name": "NVIDIA H200", "index": i, "memoryBytes": 150754820096,
             "migParent": None} for i in range(machine_gpus)]
    running = emulators.start_emulator(tmp_path / "state", gpus=gpus)
    try:
        config = json.loads((running.state_dir / "config.json").read_text())
        repo = Repo(tmp_path / "repo", config)
        repo.service("svc-big", replicas=1, gpu=1)
        out = Reconciler(running, tmp_path)(repo, predict=[[1, 1]])
        assert out["status"] == "applied", out
        assert out["predict"]["status"] == 200 and out["predict"]["body"] == [[3.0]], out["predict"]
        devices = sorted(_replica_devices(running.state_dir))
        machine = {g["uuid"] for g in gpus}
        on_gpus = [d for d in devices if d]
        assert len(devices) == 2 and set(on_gpus) <= machine and len(set(on_gpus)) == len(on_gpus), devices
        assert len(on_gpus) == min(machine_gpus, 2), devices
    finally:
        running.stop()


def test_applying_the_manifests_creates_the_cluster_environment_model_and_service(
        empty_workspace: Any, tmp_path: Path) -> None:
    config = json.loads((empty_workspace.state_dir / "config.json").read_text())
    repo = Repo(tmp_path / "repo", config)
    out = Reconciler(empty_workspace, tmp_path)(repo, read_back=True)
    assert out["status"] == "applied", out
    assert sorted((c["id"], c["action"], c["status"]) for c in out["changes"]) == [
        ("AksCluster/aks-gpu", "create", "succeeded"), ("Environment/myenv", "create", "succeeded"),
        ("Model/tiny", "create", "succeeded"), ("Webservice/svc-tiny", "create", "succeeded")]
    actual = out["actual"]
    assert actual["AksCluster/aks-gpu"]["spec"]["vmSize"] == "Standard_NC6"
    assert actual["AksCluster/aks-gpu"]["details"]["provisioningState"] == "Succeeded"
    assert "Environment/myenv" in actual
    assert actual["Model/tiny"]["details"]["version"] >= 1
    svc = actual["Webservice/svc-tiny"]
    assert svc["details"]["state"] == "Healthy" and svc["spec"]["replicas"] == 1
    assert svc["tags"]["amlops.dev/managed-by"] == "amlops"
    for rid in ("AksCluster/aks-gpu", "Environment/myenv", "Model/tiny", "Webservice/svc-tiny"):
        assert out["resources"][rid][0][:3] == ["Ready", True, "ReconciliationSucceeded"], (rid, out["resources"])


def test_the_walk_through_client_gets_predictions_with_the_primary_key(repo: Repo, reconcile: Reconciler) -> None:
    _converged(reconcile, repo)
    out = reconcile(repo, predict=[[1, 1], [2, 0]])
    assert out["status"] == "no-changes", out
    assert out["predict"]["status"] == 200 and out["predict"]["state"] == "Healthy"
    assert out["predict"]["body"] == [[3.0], [2.0]]


def test_a_second_reconcile_with_no_changes_makes_zero_write_requests(
        emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    _converged(reconcile, repo)
    emulator.reset_counts()
    out = reconcile(repo)
    assert out["status"] == "no-changes" and out["changes"] == [], out
    counts = emulator.counts()
    assert writes(counts) == {}, counts
    # Stricter still: the only non-GET requests of a no-op pass are the service principal's login.
    assert {r for r in counts if not r.startswith(("GET ", "HEAD "))} <= {"POST login /{tenant}/oauth2/v2.0/token"}, counts
    assert any(r.startswith("GET api") and r.endswith("/services") for r in counts), counts  # it did read


def test_changing_replicas_issues_one_patch_and_nothing_else(emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    _converged(reconcile, repo)
    repo.service(replicas=2)
    emulator.reset_counts()
    out = reconcile(repo, read_back=True)
    assert out["status"] == "applied", out
    assert [c[:3] for c in out["plan"] if c[2] != "no-op"] == [["Webservice", "svc-tiny", "update"]]
    assert writes(emulator.counts()) == {f"PATCH api {WS}/services/{{name}}": 1}
    assert out["actual"]["Webservice/svc-tiny"]["spec"]["replicas"] == 2


def test_changing_the_model_file_registers_one_new_version_and_rolls_the_service(
        emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    before = _converged(reconcile, repo)
    before = reconcile(repo, read_back=True)
    version = before["actual"]["Model/tiny"]["details"]["version"]
    repo.weights([[1.0], [3.0]])
    emulator.reset_counts()
    out = reconcile(repo, read_back=True, predict=[[1, 1], [2, 0]])
    assert out["status"] == "applied", out
    assert sorted(c[:3] for c in out["plan"] if c[2] != "no-op") == [
        ["Model", "tiny", "update"], ["Webservice", "svc-tiny", "update"]]
    counts = writes(emulator.counts())
    assert counts.get(f"POST api {WS}/models") == 1, counts  # one new version
    assert counts.get(f"PATCH api {WS}/services/{{name}}") == 1, counts  # rolled in place
    assert not any(r.startswith("DELETE") for r in counts) and f"POST api {WS}/services" not in counts, counts
    assert out["actual"]["Model/tiny"]["details"]["version"] == version + 1
    assert out["predict"]["models"] == [f"tiny:{version + 1}"]
    assert out["predict"]["body"] == [[4.0], [2.0]]


def test_throttling_and_server_errors_are_retried_by_the_executor_until_converged(
        emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    _converged(reconcile, repo)
    repo.service(replicas=2)
    _converged(reconcile, repo)
    repo.service(replicas=1)
    emulator.reset_counts()
    # Attempt 1: reading the service answers 500. Attempt 2: the PATCH answers 429. Attempt 3 passes.
    emulator.set_faults([{"route": f"GET api {WS}/services/{{name}}", "status": 500, "count": 1},
                         {"route": "PATCH *", "status": 429, "count": 1, "retryAfter": 0.2}])
    try:
        out = reconcile(repo, read_back=True)
    finally:
        emulator.set_faults([])
    assert out["status"] == "applied", out
    change = _change(out, "Webservice/svc-tiny")
    assert change["status"] == "succeeded" and change["attempts"] == 3, change
    assert writes(emulator.counts()) == {f"PATCH api {WS}/services/{{name}}": 2}  # the 429 and the one that passed
    assert out["actual"]["Webservice/svc-tiny"]["spec"]["replicas"] == 1
    assert out["resources"]["Webservice/svc-tiny"][0][:3] == ["Ready", True, "ReconciliationSucceeded"]


def test_azure_retry_after_is_honoured_by_the_executor_not_hidden_under_the_sdks_own_backoff(
        emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    _converged(reconcile, repo)
    repo.service(replicas=2)
    emulator.reset_counts()
    # Two 429s with Retry-After: 2. azureml-core alone would retry them itself, 32 s then 64 s later.
    emulator.set_faults([{"route": "PATCH *", "status": 429, "count": 2, "retryAfter": 2}])
    try:
        out = reconcile(repo, read_back=True)
    finally:
        emulator.set_faults([])
    assert out["status"] == "applied", out
    # When each PATCH arrived, by the emulator's clock: each retry came once the 2 s had passed, and
    # none waited out an SDK back-off (azureml-core's own loop waits 32 s, then 64 s).
    patches = [r for r in emulator.request_log() if r["route"] == f"PATCH api {WS}/services/{{name}}"]
    assert [(r["status"], r["retryAfter"]) for r in patches] == [(429, 2.0), (429, 2.0), (None, None)], patches
    gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(patches)]
    assert all(2.0 <= gap < 16.0 for gap in gaps), gaps  # 16 s: half the base back-off of azureml-core's loop
    change = _change(out, "Webservice/svc-tiny")
    # Each attempt of the executor is exactly one PATCH: the SDK retried nothing underneath it.
    assert change["status"] == "succeeded" and change["attempts"] == 3, change
    assert writes(emulator.counts()) == {f"PATCH api {WS}/services/{{name}}": 3}
    assert out["actual"]["Webservice/svc-tiny"]["spec"]["replicas"] == 2
    repo.service(replicas=1)
    _converged(reconcile, repo)


def test_a_gpu_request_no_node_can_hold_ends_unschedulable_and_is_not_retried_on_the_same_input(
        emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    _converged(reconcile, repo)
    # 2 GPUs per replica passes validation (1 + 2 <= 3 GPUs in the cluster), but no Standard_NC6 node has 2.
    repo.service("svc-big", replicas=1, gpu=2)
    first = reconcile(repo)
    assert first["status"] == "failed", first
    change = _change(first, "Webservice/svc-big")
    assert (change["status"], change["reason"], change["attempts"]) == ("failed", "Unschedulable", 1), change
    assert "Insufficient nvidia.com/gpu" in change["error"]
    stalled = first["resources"]["Webservice/svc-big"]
    assert ["Stalled", True, "Unschedulable"] in [c[:3] for c in stalled], stalled

    emulator.reset_counts()
    second = reconcile(repo)
    assert writes(emulator.counts()) == {}, emulator.counts()
    assert next(c[3] for c in second["plan"] if c[1] == "svc-big").startswith("stalled: Unschedulable")
    assert ["Stalled", True, "Unschedulable"] in [c[:3] for c in second["resources"]["Webservice/svc-big"]]

    # A changed input is tried again: one GPU per replica fits.
    repo.service("svc-big", replicas=1, gpu=1)
    emulator.reset_counts()
    fixed = reconcile(repo, read_back=True)
    assert fixed["status"] == "applied", fixed
    assert writes(emulator.counts()) == {f"PATCH api {WS}/services/{{name}}": 1}
    assert fixed["actual"]["Webservice/svc-big"]["details"]["state"] == "Healthy"
    assert fixed["resources"]["Webservice/svc-big"][0][:3] == ["Ready", True, "ReconciliationSucceeded"]

    # Removing the manifest prunes the service, like any other.
    repo.remove("services/svc-big.yaml")
    emulator.reset_counts()
    gone = reconcile(repo, read_back=True)
    assert gone["status"] == "applied", gone
    assert "Webservice/svc-big" not in gone["actual"]
    assert writes(emulator.counts()) == {f"DELETE api {WS}/services/{{name}}": 1}


def test_a_deployment_whose_operation_fails_is_reported_as_a_permanent_deployment_failure(
        emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    _converged(reconcile, repo)
    repo.service("svc-fail", replicas=1, gpu=0)
    emulator.set_faults([{"route": f"POST api {WS}/services", "failOperation": "image build failed: no space left"}])
    try:
        out = reconcile(repo)
    finally:
        emulator.set_faults([])
    change = _change(out, "Webservice/svc-fail")
    assert (change["status"], change["reason"], change["attempts"]) == ("failed", "DeploymentFailed", 1), change
    assert "no space left" in change["error"]
    assert ["Stalled", True, "DeploymentFailed"] in [c[:3] for c in out["resources"]["Webservice/svc-fail"]]
    repo.remove("services/svc-fail.yaml")
    _converged(reconcile, repo)


def test_removing_the_service_manifest_deletes_the_service_and_retains_the_cluster(
        emulator: Any, repo: Repo, reconcile: Reconciler) -> None:
    _converged(reconcile, repo)
    repo.remove("services/svc-tiny.yaml")
    repo.remove("clusters/aks-gpu.yaml")  # deletionPolicy: Retain keeps it in Azure all the same
    emulator.reset_counts()
    out = reconcile(repo, read_back=True)
    assert out["status"] == "applied", out
    counts = writes(emulator.counts())
    assert counts == {f"DELETE api {WS}/services/{{name}}": 1}, counts
    assert "Webservice/svc-tiny" not in out["actual"] and "AksCluster/aks-gpu" in out["actual"]
    assert [c[2:] for c in out["plan"] if c[1] == "aks-gpu"] == [["no-op", "retained (deletionPolicy: Retain)"]]


def _second_source(workdir: Path, config: dict[str, str]) -> Repo:
    """Another team's repo on the same workspace: the shared cluster and environment, a service of
    its own on a model of its own, and a model named like the first repo's with other weights."""
    import numpy as np

    other = Repo(workdir / "repo-b", config)
    other.remove("services/svc-tiny.yaml")
    other.weights([[5.0], [5.0]])
    other.write("models/tiny-b.yaml", _doc("Model", "tiny-b", {"path": "tiny-b"}))
    (other.root / "models" / "tiny-b" / "model").mkdir(parents=True, exist_ok=True)
    np.save(other.root / "models" / "tiny-b" / "model" / "w.npy", np.array([[2.0], [2.0]]))
    other.write("services/svc-b.yaml", _doc("Webservice", "svc-b", {
        "cluster": "aks-gpu", "models": ["tiny-b"], "environment": "myenv", "sourceDirectory": "../src",
        "entryScript": "score.py", "replicas": 1, "resources": {"cpu": 0.5, "memoryGb": 1, "gpu": 0},
        "maxQueueWaitMs": 10000}))
    return other


def test_two_sources_under_one_controller_name_on_one_workspace_never_delete_each_others_services(
        emulator: Any, repo: Repo, reconcile: Reconciler, workdir: Path) -> None:
    # Each controller follows its own source: the first one's first pass stamps its inventory on what it runs.
    a = {"source": f"{repo.root}//.", "state": "amlops-state-a"}
    _converged(reconcile, repo)
    before = reconcile(repo, read_back=True, **a)["actual"]
    answers = reconcile(repo, predict=[[1, 1], [2, 0]], **a)["predict"]["body"]
    assert before["Webservice/svc-tiny"]["tags"]["amlops.dev/source"] == a["source"]
    config = json.loads((emulator.state_dir / "config.json").read_text())
    other = _second_source(workdir, config)
    b = {"source": f"{other.root}//.", "state": "amlops-state-b"}

    emulator.reset_counts()
    first_b = reconcile(other, read_back=True, **b)
    assert first_b["status"] == "degraded", first_b  # applied its own, and reports the conflict
    assert sorted(c[:3] for c in first_b["plan"] if c[2] != "no-op") == [
        ["Model", "tiny-b", "create"], ["Webservice", "svc-b", "create"]], first_b["plan"]
    conflict = next(c[3] for c in first_b["plan"] if c[:2] == ["Model", "tiny"])
    assert conflict.startswith("conflict: Model/tiny is applied by another source"), conflict
    assert ["Stalled", True, "OwnershipConflict"] in [c[:3] for c in first_b["resources"]["Model/tiny"]]
    assert first_b["actual"]["Webservice/svc-b"]["tags"]["amlops.dev/source"] == b["source"]
    counts = writes(emulator.counts())
    assert not [r for r in counts if r.startswith("DELETE")], counts
    assert counts.get(f"POST api {WS}/models") == 1, counts  # tiny-b once; tiny never re-registered
    assert counts.get(f"POST api {WS}/services") == 1, counts  # svc-b once

    # Passes of both, alternating, as two controllers on one workspace would run: no write at all, no flapping.
    emulator.reset_counts()
    outs = [reconcile(repo, read_back=True, **a), reconcile(other, **b), reconcile(repo, **a), reconcile(other, **b)]
    assert [o["status"] for o in outs] == ["no-changes", "degraded", "no-changes", "degraded"], outs
    assert writes(emulator.counts()) == {}, emulator.counts()
    actual = outs[0]["actual"]
    assert {"Webservice/svc-tiny", "Webservice/svc-b", "Model/tiny", "Model/tiny-b"} <= set(actual)
    assert actual["Model/tiny"]["details"]["version"] == before["Model/tiny"]["details"]["version"]
    assert reconcile(repo, predict=[[1, 1], [2, 0]], **a)["predict"]["body"] == answers  # the first source's model

    # Each source prunes its own: the second team removes everything it applied.
    for rel in ("services/svc-b.yaml", "models/tiny-b.yaml"):
        other.remove(rel)
    gone = reconcile(other, read_back=True, allow_mass_delete=True, **b)
    assert not {"Webservice/svc-b", "Model/tiny-b"} & set(gone["actual"]), gone
    assert {"Webservice/svc-tiny", "Model/tiny", "AksCluster/aks-gpu"} <= set(gone["actual"])
    _converged(reconcile, repo)


def test_services_that_fill_every_gpu_of_the_cluster_are_all_deployed_and_still_roll(
        repo: Repo, reconcile: Reconciler) -> None:
    # 3 × Standard_NC6 = 3 GPUs: svc-tiny 2 × 1 and svc-big 1 × 1 fit, as AKS schedules them. The
    # data plane must not keep svc-tiny's third GPU as rolling-update surge and refuse svc-big.
    _converged(reconcile, repo)
    repo.service(replicas=2)
    _converged(reconcile, repo)
    repo.service("svc-big", replicas=1, gpu=1)
    out = reconcile(repo, read_back=True)
    assert out["status"] == "applied", out
    assert out["actual"]["Webservice/svc-big"]["details"]["state"] == "Healthy", out["actual"]["Webservice/svc-big"]
    # With no GPU to surge into, a new model version rolls svc-tiny one replica at a time.
    repo.weights([[1.0], [4.0]])
    rolled = reconcile(repo, read_back=True, predict=[[1, 1]])
    assert rolled["status"] == "applied", rolled
    assert rolled["predict"]["status"] == 200 and rolled["predict"]["body"] == [[5.0]], rolled["predict"]
    assert rolled["actual"]["Webservice/svc-tiny"]["details"]["state"] == "Healthy"
