"""Validation errors name the file, the line and the field, exactly, and all are reported at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from controller.sources.loading import load_desired_state
from controller.structs.errors import ValidationFailed

CLUSTER = """\
apiVersion: amlops.dev/v1
kind: AksCluster
metadata:
  name: aks-gpu
spec:
  vmSize: Standard_NC6
  agentCount: 3
"""

MODEL = """\
apiVersion: amlops.dev/v1
kind: Model
metadata:
  name: tf-dnn-mnist
spec:
  path: model
"""


def service(body: str, name: str = "aks-dnn-mnist") -> str:
    head = f"apiVersion: amlops.dev/v1\nkind: Webservice\nmetadata:\n  name: {name}\nspec:\n"
    return head + textwrap.indent(textwrap.dedent(body), "  ")


def write_repo(root: Path, files: dict[str, str]) -> Path:
    (root / "model").mkdir(exist_ok=True)
    (root / "model" / "weights.npy").write_bytes(b"\x93NUMPY")
    (root / "score.py").write_text("def init():\n    pass\n\ndef run(raw):\n    return raw\n")
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def errors_of(root: Path) -> list[str]:
    with pytest.raises(ValidationFailed) as caught:
        load_desired_state(root)
    return [str(e) for e in caught.value.errors]


SERVICE_OK = """\
cluster: aks-gpu
models: [tf-dnn-mnist]
entryScript: score.py
replicas: 3
resources: {cpu: 2, memoryGb: 4, gpu: 1}
"""


def test_a_valid_repo_loads_every_resource_with_its_origin(tmp_path: Path) -> None:
    body = SERVICE_OK + "sourceDirectory: ..\n"
    write_repo(tmp_path, {"c.yaml": CLUSTER, "m.yaml": MODEL, "s/svc.yaml": service(body)})
    state = load_desired_state(tmp_path, revision="abc")
    assert state.revision == "abc"
    assert [str(r.id) for r in state] == ["AksCluster/aks-gpu", "Model/tf-dnn-mnist", "Webservice/aks-dnn-mnist"]
    svc = next(r for r in state if r.id.name == "aks-dnn-mnist")
    assert svc.origin.file == "s/svc.yaml"
    assert svc.origin.line == 1
    assert svc.files == {"sourceDirectory": ".", "entryScript": "score.py"}


def test_paths_resolve_against_the_manifest_folder(tmp_path: Path) -> None:
    write_repo(tmp_path, {"c.yaml": CLUSTER, "m.yaml": MODEL, "svc.yaml": service(SERVICE_OK)})
    state = load_desired_state(tmp_path)
    svc = next(r for r in state if r.id.name == "aks-dnn-mnist")
    assert svc.files == {"entryScript": "score.py"}
    model = next(r for r in state if r.id.name == "tf-dnn-mnist")
    assert model.files == {"path": "model"}
    assert model.content_digests["path"].startswith("sha256:")


def test_replicas_below_one_names_file_line_and_field(tmp_path: Path) -> None:
    body = SERVICE_OK.replace("replicas: 3", "replicas: 0")
    write_repo(tmp_path, {"c.yaml": CLUSTER, "m.yaml": MODEL, "svc.yaml": service(body)})
    assert errors_of(tmp_path) == ["svc.yaml:9: Webservice aks-dnn-mnist: spec.replicas: must be ≥ 1 (got 0)"]


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("apiVersion: amlops.dev/v1\nkind: Model\nmetadata: {name: [x\n")
    assert errors_of(tmp_path) == ["bad.yaml:4: YAML syntax error: did not find expected ',' or ']'"]


def test_unknown_kind_suggests_the_closest(tmp_path: Path) -> None:
    (tmp_path / "k.yaml").write_text("apiVersion: amlops.dev/v1\nkind: Webservise\nmetadata: {name: x}\nspec: {}\n")
    assert errors_of(tmp_path) == ["k.yaml:2: x: kind: unknown kind 'Webservise'; did you mean 'Webservice'?"]


def test_unknown_field_suggests_the_closest(tmp_path: Path) -> None:
    body = SERVICE_OK + "scoringTimeoutMS: 1000\n"
    write_repo(tmp_path, {"c.yaml": CLUSTER, "m.yaml": MODEL, "svc.yaml": service(body)})
    assert errors_of(tmp_path) == [
        "svc.yaml:11: Webservice aks-dnn-mnist: spec.scoringTimeoutMS: unknown field; did you mean 'scoringTimeoutMs'?"
    ]


def test_wrong_type_and_enum(tmp_path: Path) -> None:
    body = SERVICE_OK.replace("replicas: 3", "replicas: three") + "auth: keys\n"
    write_repo(tmp_path, {"c.yaml": CLUSTER, "m.yaml": MODEL, "svc.yaml": service(body)})
    assert errors_of(tmp_path) == [
        "svc.yaml:9: Webservice aks-dnn-mnist: spec.replicas: must be a whole number (got 'three')",
        "svc.yaml:11: Webservice aks-dnn-mnist: spec.auth: must be one of 'key', 'token' or 'none' (got 'keys')",
    ]


def test_duplicate_names_per_kind(tmp_path: Path) -> None:
    write_repo(tmp_path, {"a.yaml": MODEL, "b.yaml": MODEL})
    assert errors_of(tmp_path) == [
        "b.yaml:4: Model tf-dnn-mnist: metadata.name: duplicate Model name; first declared at a.yaml:1"
    ]


def test_dangling_references_are_each_reported(tmp_path: Path) -> None:
    body = SERVICE_OK.replace("aks-gpu", "aks-gpuu").replace("[tf-dnn-mnist]", "[tf-dnn-mnist, other]")
    body += "environment: myenv\n"
    write_repo(tmp_path, {"c.yaml": CLUSTER, "m.yaml": MODEL, "svc.yaml": service(body)})
    assert errors_of(tmp_path) == [
        "svc.yaml:6: Webservice aks-dnn-mnist: spec.cluster: AksCluster 'aks-gpuu' is not declared; did you mean 'aks-gpu'?",
        "svc.yaml:7: Webservice aks-dnn-mnist: spec.models[1]: Model 'other' is not declared",
        "svc.yaml:11: Webservice aks-dnn-mnist: spec.environment: Environment 'myenv' is not declared",
    ]


def test_missing_files_and_paths_leaving_the_repo(tmp_path: Path) -> None:
    body = SERVICE_OK.replace("score.py", "missing.py")
    model = MODEL.replace("path: model", "path: ../../etc")
    write_repo(tmp_path, {"c.yaml": CLUSTER, "m.yaml": model, "svc.yaml": service(body)})
    assert errors_of(tmp_path) == [
        "m.yaml:6: Model tf-dnn-mnist: spec.path: leaves the repository (got '../../etc')",
        "svc.yaml:8: Webservice aks-dnn-mnist: spec.entryScript: missing.py does not exist",
    ]


def test_replicas_together_with_autoscale(tmp_path: Path) -> None:
    body = SERVICE_OK + "autoscale: {minReplicas: 1, maxReplicas: 3}\n"
    write_repo(tmp_path, {"c.yaml": CLUSTER, "m.yaml": MODEL, "svc.yaml": service(body)})
    assert errors_of(tmp_path) == [
        "svc.yaml:5: Webservice aks-dnn-mnist: spec: set replicas or autoscale, not both "
        "(autoscale_enabled with num_replicas is an error in Azure ML too)"
    ]


def test_gpu_rule_says_by_how_much_the_cluster_is_over(tmp_path: Path) -> None:
    body = SERVICE_OK.replace("replicas: 3", "replicas: 4")
    write_repo(tmp_path, {"c.yaml": CLUSTER, "m.yaml": MODEL, "svc.yaml": service(body)})
    assert errors_of(tmp_path) == [
        "svc.yaml:9: Webservice aks-dnn-mnist: spec.replicas: GPUs cannot be shared between replicas: services on "
        "cluster aks-gpu need up to 4 GPUs (aks-dnn-mnist: 4 × 1) but it has 3 (3 nodes × 1 GPU of Standard_NC6): 1 over"
    ]


def test_gpu_rule_sums_over_services_and_autoscale_maximum(tmp_path: Path) -> None:
    one = SERVICE_OK.replace("replicas: 3", "replicas: 2")
    two = SERVICE_OK.replace("replicas: 3\n", "autoscale: {maxReplicas: 2}\n")
    write_repo(tmp_path, {"c.yaml": CLUSTER, "m.yaml": MODEL, "a.yaml": service(one, "svc-a"), "b.yaml": service(two, "svc-b")})
    errors = errors_of(tmp_path)
    assert len(errors) == 2
    assert all("need up to 4 GPUs (svc-a: 2 × 1, svc-b: 2 × 1) but it has 3" in e and e.endswith("1 over") for e in errors)


def test_gpu_request_on_a_cluster_without_gpus(tmp_path: Path) -> None:
    cpu_cluster = CLUSTER.replace("Standard_NC6", "Standard_D3_v2")
    write_repo(tmp_path, {"c.yaml": cpu_cluster, "m.yaml": MODEL, "svc.yaml": service(SERVICE_OK)})
    assert errors_of(tmp_path) == [
        "svc.yaml:10: Webservice aks-dnn-mnist: spec.resources.gpu: requests 1 GPU per replica but cluster aks-gpu "
        "(Standard_D3_v2) has no GPUs; use an N-series vmSize or set gpusPerNode"
    ]


def test_gpus_per_node_overrides_the_vm_size_table(tmp_path: Path) -> None:
    cluster = CLUSTER.replace("agentCount: 3", "agentCount: 1\n  gpusPerNode: 4")
    write_repo(tmp_path, {"c.yaml": cluster, "m.yaml": MODEL, "svc.yaml": service(SERVICE_OK)})
    assert len(load_desired_state(tmp_path)) == 3


def test_all_errors_of_a_run_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("apiVersion: amlops.dev/v1\nkind: Model\nmetadata: {name: a}\nspec: {}\n")
    (tmp_path / "b.yaml").write_text("apiVersion: v0\nkind: Model\nmetadata: {name: b}\nspec: {path: x, tag: {}}\n")
    errors = errors_of(tmp_path)
    assert errors == [
        "a.yaml:4: Model a: spec.path: is required",
        "b.yaml:1: Model b: apiVersion: must be 'amlops.dev/v1' (got 'v0')",
    ]


def test_secrets_are_references_never_values(tmp_path: Path) -> None:
    ws = (
        "apiVersion: amlops.dev/v1\nkind: Workspace\nmetadata: {name: prod}\nspec:\n  backend: azureml\n"
        "  subscriptionId: s\n  resourceGroup: rg\n  credentials:\n    type: servicePrincipal\n"
        "    tenantId: {value: t}\n    clientId: {value: c}\n    clientSecret: {value: hunter2}\n"
    )
    (tmp_path / "ws.yaml").write_text(ws)
    errors = errors_of(tmp_path)
    assert errors[0].startswith("ws.yaml:12: Workspace prod: spec.credentials.clientSecret.value: unknown field")


AZUREML_V1 = """\
apiVersion: amlops.dev/v1
kind: Workspace
metadata:
  name: ws
spec:
  backend: azureml
  subscriptionId: sub
  resourceGroup: rg
  api: v1
"""

CANARY_BODY = SERVICE_OK.replace("gpu: 1", "gpu: 0") + """\
rollout:
  strategy: canary
  steps: [{weight: 10}, {weight: 100}]
"""


def test_a_canary_on_azure_ml_v1_is_refused_at_its_strategy_line(tmp_path: Path) -> None:
    write_repo(tmp_path, {"ws.yaml": AZUREML_V1, "c.yaml": CLUSTER, "m.yaml": MODEL, "svc.yaml": service(CANARY_BODY)})
    assert errors_of(tmp_path) == [
        "svc.yaml:12: Webservice aks-dnn-mnist: spec.rollout.strategy: strategy canary needs Azure ML v2: a v1 AKS "
        "web service cannot split traffic between versions under one URI; use rolling, or set api: v2"
    ]


def test_a_canary_is_accepted_on_the_local_backend_and_on_azure_ml_v2(tmp_path: Path) -> None:
    write_repo(tmp_path, {"c.yaml": CLUSTER, "m.yaml": MODEL, "svc.yaml": service(CANARY_BODY)})
    assert len(load_desired_state(tmp_path)) == 3
    v2 = tmp_path / "v2"
    v2.mkdir()
    # Azure ML v2 cannot create an AKS cluster: the service's cluster is attached.
    attached = CLUSTER + "  attach:\n    resourceId: /subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/aks1\n"
    write_repo(v2, {"ws.yaml": AZUREML_V1, "c.yaml": attached, "m.yaml": MODEL,
                    "svc.yaml": service(CANARY_BODY + "api: v2\n")})
    assert len(load_desired_state(v2)) == 4


def test_a_canary_needs_gpus_for_its_new_version_beside_the_live_one(tmp_path: Path) -> None:
    # Three replicas of one GPU each fill the three-GPU cluster: no room for the new version's three.
    body = CANARY_BODY.replace("gpu: 0", "gpu: 1")
    write_repo(tmp_path, {"c.yaml": CLUSTER, "m.yaml": MODEL, "svc.yaml": service(body)})
    assert errors_of(tmp_path) == [
        "svc.yaml:9: Webservice aks-dnn-mnist: spec.replicas: GPUs cannot be shared between replicas: services on "
        "cluster aks-gpu need up to 6 GPUs (aks-dnn-mnist: 6 × 1 (canary: its new version runs beside it)) but it "
        "has 3 (3 nodes × 1 GPU of Standard_NC6): 3 over"
    ]
