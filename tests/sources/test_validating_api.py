"""What one Azure ML API generation cannot do is refused at validation, with file, line and field."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from controller.sources.loading import load_desired_state

_spec = importlib.util.spec_from_file_location("test_validating", Path(__file__).parent / "test_validating.py")
assert _spec is not None and _spec.loader is not None
base = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("test_validating_base", base)
_spec.loader.exec_module(base)

# A canary or blue/green runs its new version beside the live one: one replica of one GPU leaves the
# three-GPU cluster room for it (three would not fit twice).
ONE_REPLICA = base.SERVICE_OK.replace("replicas: 3", "replicas: 1")
ATTACH = "  attach:\n    resourceId: /subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/aks1\n"


def workspace(api: str) -> str:
    return (f"apiVersion: amlops.dev/v1\nkind: Workspace\nmetadata:\n  name: ws\nspec:\n  backend: azureml\n"
            f"  subscriptionId: s\n  resourceGroup: rg\n  api: {api}\n")


def repo(tmp_path: Path, api: str, service_body: str, cluster: str = base.CLUSTER + ATTACH) -> Path:
    return base.write_repo(tmp_path, {"workspace.yaml": workspace(api), "cluster.yaml": cluster,
                                      "model.yaml": base.MODEL, "svc.yaml": base.service(service_body)})


def test_v2_refuses_auth_none_at_its_line(tmp_path: Path) -> None:
    root = repo(tmp_path, "v2", base.SERVICE_OK + "auth: none\n")
    errors = base.errors_of(root)
    assert len(errors) == 1
    assert errors[0].startswith("svc.yaml:11: Webservice aks-dnn-mnist: spec.auth: auth: none is not possible on Azure ML v2")


def test_a_v2_cluster_without_attach_says_how_to_create_it_outside_azure_ml(tmp_path: Path) -> None:
    root = repo(tmp_path, "v2", base.SERVICE_OK, cluster=base.CLUSTER)
    [error] = base.errors_of(root)
    assert error.startswith("cluster.yaml:5: AksCluster aks-gpu: spec.attach: Azure ML v2 cannot create AKS clusters")
    assert "az aks create" in error and "az k8s-extension create" in error and "attach.resourceId" in error


def test_a_service_moved_to_v2_needs_its_cluster_attached(tmp_path: Path) -> None:
    root = repo(tmp_path, "v1", base.SERVICE_OK + "api: v2\n", cluster=base.CLUSTER)
    [error] = base.errors_of(root)
    assert "spec.attach" in error and "service aks-dnn-mnist uses api: v2" in error


# A canary's or blue/green's new version runs beside the live replicas (the GPU rule counts both): one replica here.
ONE_REPLICA = base.SERVICE_OK.replace("replicas: 3", "replicas: 1")


def test_v1_rejects_v2_only_fields(tmp_path: Path) -> None:
    body = ONE_REPLICA + "instanceType: gpu-small\nrollout:\n  strategy: canary\n  steps: [{weight: 10}, {weight: 100}]\n"
    errors = base.errors_of(repo(tmp_path, "v1", body))
    assert [e.split(": ")[2] for e in errors] == ["spec.instanceType", "spec.rollout.strategy"]
    assert "svc.yaml:11:" in errors[0] and "v1 AKS web service cannot split traffic" in errors[1]


def test_the_same_service_is_valid_on_v2(tmp_path: Path) -> None:
    body = ONE_REPLICA + "instanceType: gpu-small\nrollout:\n  strategy: canary\n  steps: [{weight: 10}, {weight: 100}]\n"
    state = load_desired_state(repo(tmp_path, "v2", body))
    assert len(state.resources) == 4


def test_a_service_override_to_v2_is_judged_by_v2_rules(tmp_path: Path) -> None:
    body = ONE_REPLICA + "api: v2\nauth: none\nrollout: {strategy: blueGreen}\n"
    errors = base.errors_of(repo(tmp_path, "v1", body))
    assert [e.split(": ")[2] for e in errors] == ["spec.auth"]


def test_the_gpu_rule_still_applies_on_v2(tmp_path: Path) -> None:
    body = base.SERVICE_OK.replace("replicas: 3", "replicas: 4")
    errors = base.errors_of(repo(tmp_path, "v2", body))
    assert len(errors) == 1 and "GPUs cannot be shared between replicas" in errors[0]


def test_a_local_workspace_ignores_api_rules(tmp_path: Path) -> None:
    body = ONE_REPLICA + "auth: none\nrollout: {strategy: blueGreen}\n"
    files = {"cluster.yaml": base.CLUSTER, "model.yaml": base.MODEL, "svc.yaml": base.service(body)}
    assert len(load_desired_state(base.write_repo(tmp_path, files)).resources) == 3
