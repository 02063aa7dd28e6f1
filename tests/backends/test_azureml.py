"""The azureml backend with the real azureml-core against a real emulator subprocess.

The backend runs in a subprocess (HTTPS_PROXY / REQUESTS_CA_BUNDLE are process-wide); the script
applies plans with the core planner and reports what it saw, and this test checks the emulator's
request counters between steps.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# tests/ is on sys.path (pytest's rootdir insertion): the emulator harness and the numpy entry script.
from backends.test_azureml_reconcile import SCORE, emulators

pytestmark = pytest.mark.azureml

DRIVER = '''
    import json, sys, time, traceback
    from pathlib import Path
    from controller.backends.azureml import AzureMLBackend
    from controller.backends.base import ApplyContext
    from controller.core.planning import plan
    from controller.sources.loading import load_desired_state
    from controller.structs.errors import PermanentError, TransientError
    from controller.structs.manifests import Kind
    from controller.structs.plans import Action

    root = Path(sys.argv[1])
    desired = load_desired_state(root)
    ws = next(r.manifest for r in desired if r.id.kind is Kind.WORKSPACE)
    backend = AzureMLBackend(ws, "amlops")
    ctx = ApplyContext("amlops", "rev-" + sys.argv[2], str(root), desired)
    out = {"changes": [], "errors": []}
    try:
        p = plan(desired, backend.read(), controller_name="amlops", replace_fields=backend.replace_fields)
        out["plan"] = [[c.id.kind.value, c.id.name, c.action.value, [d.path for d in c.diffs]] for c in p.effective]
        if sys.argv[2] != "plan-only":
            for change in p.effective:
                resource = desired.resources.get(change.id)
                if change.action is Action.CREATE:
                    backend.create(resource, ctx)
                elif change.action is Action.UPDATE:
                    backend.update(resource, change, ctx)
                elif change.action is Action.REPLACE:
                    backend.delete(change.id, ctx)
                    backend.create(resource, ctx)
                elif change.action is Action.DELETE:
                    backend.delete(change.id, ctx)
    except (PermanentError, TransientError) as exc:
        out["errors"].append({"type": type(exc).__name__, "message": str(exc),
                              "reason": getattr(exc, "reason", None), "retry_after": getattr(exc, "retry_after", None)})
    try:
        actual = backend.read()
        out["actual"] = {f"{r.id.kind.value}/{r.id.name}": {"spec": dict(r.spec), "tags": dict(r.tags),
                         "details": dict(r.details), "conditions": [[c.type, c.status, c.reason] for c in r.conditions]}
                         for r in actual}
    except (PermanentError, TransientError) as exc:
        out["errors"].append({"type": type(exc).__name__, "message": str(exc), "reason": getattr(exc, "reason", None),
                              "retry_after": getattr(exc, "retry_after", None)})
    print("RESULT " + json.dumps(out, default=str))
'''



@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    running = emulators.start_emulator(tmp_path_factory.mktemp("azureml-backend") / "state")
    yield running
    running.stop()


def _write_repo(root: Path, config: dict[str, str], replicas: int = 1, gpus_per_node: int | None = None,
                extra_service: str = "") -> None:
    import numpy as np

    (root / "models" / "tiny" / "model").mkdir(parents=True, exist_ok=True)
    np.save(root / "models" / "tiny" / "model" / "w.npy", np.array([[1.0], [2.0]]))
    (root / "src").mkdir(exist_ok=True)
    (root / "src" / "score.py").write_text(SCORE)
    (root / "amlops.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: amlops.dev/v1
        kind: Workspace
        metadata: {{name: {config['workspace_name']}}}
        spec:
          backend: azureml
          subscriptionId: "{config['subscription_id']}"
          resourceGroup: {config['resource_group']}
          workspaceName: {config['workspace_name']}
        ---
        apiVersion: amlops.dev/v1
        kind: AksCluster
        metadata: {{name: aks-gpu}}
        spec:
          vmSize: Standard_NC6
          agentCount: 3
        ---
        apiVersion: amlops.dev/v1
        kind: Environment
        metadata: {{name: myenv}}
        spec:
          baseImage: DEFAULT_GPU_IMAGE
          conda:
            dependencies:
              - python=3.6.2
              - pip: [azureml-defaults>=1.0.45, numpy]
        ---
        apiVersion: amlops.dev/v1
        kind: Model
        metadata: {{name: tiny}}
        spec:
          path: models/tiny
          tags: {{dataset: ones}}
        ---
        apiVersion: amlops.dev/v1
        kind: Webservice
        metadata: {{name: svc-tiny}}
        spec:
          cluster: aks-gpu
          models: [tiny]
          environment: myenv
          sourceDirectory: src
          entryScript: score.py
          replicas: {replicas}
          resources: {{cpu: 0.5, memoryGb: 1, gpu: 1}}
        """).replace("agentCount: 3\n", "agentCount: 3\n" + (
        f"  gpusPerNode: {gpus_per_node}\n" if gpus_per_node is not None else ""), 1) + extra_service)


def _run(emulator: Any, root: Path, step: str) -> dict[str, Any]:
    done = emulator.sdk(DRIVER.replace("sys.argv[1]", repr(str(root))).replace("sys.argv[2]", repr(step)),
                        root.parent, extra_env={"PYTHONPATH": str(emulators.REPO)})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-6000:]}"
    return dict(json.loads(lines[-1].removeprefix("RESULT ")))


def _writes(counts: dict[str, int]) -> dict[str, int]:
    # The SDK's pre-flight validation POSTs are dry runs: they change nothing.
    return {k: v for k, v in counts.items()
            if not k.startswith(("GET ", "HEAD ")) and " login " not in k and "/services/validate" not in k}


def test_the_backend_applies_updates_in_place_retries_faults_and_reports_unschedulable(emulator: Any, tmp_path: Path) -> None:
    config = json.loads((emulator.state_dir / "config.json").read_text())
    root = tmp_path / "repo"
    root.mkdir()
    _write_repo(root, config, replicas=1)

    # 1. First apply creates cluster, environment, model and service.
    first = _run(emulator, root, "1")
    assert first["errors"] == []
    assert sorted((k, n, a) for k, n, a, _ in first["plan"]) == [
        ("AksCluster", "aks-gpu", "create"), ("Environment", "myenv", "create"),
        ("Model", "tiny", "create"), ("Webservice", "svc-tiny", "create")]
    svc = first["actual"]["Webservice/svc-tiny"]
    assert svc["details"]["state"] == "Healthy" and svc["details"]["scoringUri"].startswith("http://127.0.0.1:")
    assert svc["tags"]["amlops.dev/managed-by"] == "amlops" and svc["spec"]["replicas"] == 1
    assert first["actual"]["Model/tiny"]["tags"]["amlops.dev/managed-by"] == "amlops"
    assert first["actual"]["AksCluster/aks-gpu"]["spec"]["vmSize"] == "Standard_NC6"

    # 2. A second read + plan changes nothing and writes nothing; reads are one list per kind.
    emulator.reset_counts()
    again = _run(emulator, root, "plan-only")
    assert again["plan"] == [] and again["errors"] == []
    counts = emulator.counts()
    assert _writes(counts) == {}
    lists = {k: v for k, v in counts.items() if " login " not in k and "/subscriptions" not in k.split(" ")[2][:14]}
    assert sum(lists.values()) <= 12, lists

    # 3. Changing replicas issues one PATCH and no other write.
    _write_repo(root, config, replicas=2)
    emulator.reset_counts()
    scaled = _run(emulator, root, "2")
    assert scaled["errors"] == [] and [c[:3] for c in scaled["plan"]] == [["Webservice", "svc-tiny", "update"]]
    assert _writes(emulator.counts()) == {"PATCH api /modelmanagement/v1.0{WS}/services/{name}": 1}
    assert scaled["actual"]["Webservice/svc-tiny"]["spec"]["replicas"] == 2

    # 4. An injected 429 surfaces as TransientError with Retry-After; the next pass converges.
    _write_repo(root, config, replicas=3)
    emulator.set_faults([{"route": "PATCH *", "status": 429, "count": 1, "retryAfter": 2}])
    throttled = _run(emulator, root, "3")
    assert [e["type"] for e in throttled["errors"]] == ["TransientError"] and throttled["errors"][0]["retry_after"] == 2
    emulator.set_faults([{"route": "GET api /rp/workspaces*", "status": 500, "count": 1}])
    failing_read = _run(emulator, root, "3")
    assert failing_read["errors"][0]["type"] == "TransientError"
    converged = _run(emulator, root, "3")
    assert converged["errors"] == [] and converged["actual"]["Webservice/svc-tiny"]["spec"]["replicas"] == 3

    # 5. More GPUs than the cluster really has: Unschedulable, as a PermanentError.
    extra = textwrap.dedent("""\
        ---
        apiVersion: amlops.dev/v1
        kind: Webservice
        metadata: {name: svc-big}
        spec:
          cluster: aks-gpu
          models: [tiny]
          environment: myenv
          sourceDirectory: src
          entryScript: score.py
          replicas: 2
          resources: {cpu: 0.5, memoryGb: 1, gpu: 1}
        """)
    # The manifest claims 4 GPUs per node, so validation passes; Azure knows Standard_NC6 has one.
    _write_repo(root, config, replicas=3, gpus_per_node=4, extra_service=extra)
    emulator.set_faults([])
    big = _run(emulator, root, "4")
    assert [(e["type"], e["reason"]) for e in big["errors"]] == [("PermanentError", "Unschedulable")]
    assert "Insufficient nvidia.com/gpu" in big["errors"][0]["message"]
