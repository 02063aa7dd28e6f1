"""The example manifests (the walk-through's TF1 model, score.py and conda file, unchanged) on an Azure ML v2 workspace.

Only ``workspace.yaml`` changes (``backend: azureml``, ``api: v2``) and the cluster gains its
``attach`` block, as the README's v2 section says. The real azure-ai-ml + azure-identity drive the
emulator, which runs the deployment as three real TensorFlow scoring replicas; the walk-through's
client (the key from ``get_keys``, a plain POST to the endpoint's ``scoring_uri``) must classify
held-out digits correctly.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.azureml

_spec = importlib.util.spec_from_file_location("test_azureml_v2_shared", Path(__file__).parent / "test_azureml_v2.py")
assert _spec is not None and _spec.loader is not None
v2 = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("test_azureml_v2_shared", v2)
_spec.loader.exec_module(v2)

REPO = Path(__file__).resolve().parents[2]


class ExampleRepo:
    """A copy of ``manifests/`` pointed at the emulator's workspace on API v2."""

    def __init__(self, root: Path, config: dict[str, str]) -> None:
        self.root = root
        shutil.copytree(REPO / "manifests", root)
        c = config
        (root / "workspace.yaml").write_text(v2._doc("Workspace", c["workspace_name"], {
            "backend": "azureml", "subscriptionId": c["subscription_id"], "resourceGroup": c["resource_group"],
            "workspaceName": c["workspace_name"], "api": "v2",
            "credentials": {"type": "servicePrincipal", "tenantId": {"fromEnv": "AZURE_TENANT_ID"},
                            "clientId": {"fromEnv": "AZURE_CLIENT_ID"},
                            "clientSecret": {"fromEnv": "AZURE_CLIENT_SECRET"}}}))
        aks = (f"/subscriptions/{c['subscription_id']}/resourceGroups/{c['resource_group']}"
               "/providers/Microsoft.ContainerService/managedClusters/aks1")
        with (root / "clusters" / "aks-gpu.yaml").open("a") as f:
            f.write(f"  attach:\n    resourceId: {aks}\n    namespace: amlops\n")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # The example's cluster: 3 × Standard_NC6 (one GPU each) for 3 one-GPU replicas. Three TensorFlow
    # replicas on a small, shared machine can take a while to import.
    running = v2.emulators.start_emulator(tmp_path_factory.mktemp("azureml-v2-walkthrough") / "state",
                                          "--aks-cluster", "aks1=Standard_NC6:3", "--poll-ms", "50",
                                          "--lro-delay", "0.05", "--ready-timeout", "240")
    yield running
    running.stop()


def test_the_example_manifests_on_v2_classify_held_out_digits_and_reapply_with_zero_writes(
        emulator: Any, tmp_path: Path) -> None:
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = (np.arange(28) * 8) // 28
    X = (digits.images / 16.0)[:, idx][:, :, idx].reshape(-1, 784)
    _, X_test, _, y_test = train_test_split(X, digits.target, test_size=0.2, random_state=0)

    config = json.loads((emulator.state_dir / "config.json").read_text())
    repo = ExampleRepo(tmp_path / "repo", config)
    reconcile = v2.Reconciler(emulator, tmp_path)
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(X_test.tolist()))
    out = v2._applied(reconcile(repo, readBack=True, predict={"service": "aks-dnn-mnist", "rowsFile": str(rows)}))
    actual = out["actual"]
    assert actual["AksCluster/aks-gpu"]["details"]["computeType"] == "Kubernetes"
    assert actual["Webservice/aks-dnn-mnist"]["details"]["api"] == "v2"
    predicted = np.array(out["predict"]["body"])
    assert out["predict"]["status"] == 200 and predicted.shape == y_test.shape, out["predict"]["status"]
    accuracy = float((predicted == y_test).mean())
    assert accuracy >= 0.9, accuracy  # the model's held-out accuracy, served by the v2 deployment

    emulator.reset_counts()
    again = reconcile(repo)
    assert again["status"] == "no-changes" and again["changes"] == [], again
    assert v2.writes(emulator.counts()) == {}, emulator.counts()
