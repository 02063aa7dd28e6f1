"""The walk-through's TF1 example, unchanged, through the emulator with the real azureml-core.

The repository's own model (``manifests/models/tf-dnn-mnist``), entry script
(``manifests/src/score.py``: ``tf.Session``, ``import_meta_graph``) and conda file
(``manifests/environments/myenv.yml``: ``tensorflow-gpu=1.12``) are deployed with the
walk-through's SDK code. The emulator serves the TF 1.x pin with the installed TensorFlow 2 in
v1-compatibility mode and says so on the service.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from emulators import REPO, RunningEmulator, start_emulator

pytestmark = [pytest.mark.azureml, pytest.mark.tensorflow]

WALK_THROUGH = '''
    import json, os, requests
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from azureml.core import Workspace
    from azureml.core.authentication import ServicePrincipalAuthentication
    from azureml.core.compute import ComputeTarget, AksCompute
    from azureml.exceptions import ComputeTargetException
    from azureml.core.model import Model, InferenceConfig
    from azureml.core.environment import Environment, DEFAULT_GPU_IMAGE
    from azureml.core.webservice import AksWebservice

    out = {}
    auth = ServicePrincipalAuthentication(tenant_id=os.environ["AZURE_TENANT_ID"],
                                          service_principal_id=os.environ["AZURE_CLIENT_ID"],
                                          service_principal_password=os.environ["AZURE_CLIENT_SECRET"])
    ws = Workspace.from_config(auth=auth)
    aks_name = "aks-gpu"
    try:
        aks_target = ComputeTarget(workspace=ws, name=aks_name)
    except ComputeTargetException:
        prov_config = AksCompute.provisioning_configuration(vm_size="Standard_NC6")
        aks_target = ComputeTarget.create(workspace=ws, name=aks_name, provisioning_configuration=prov_config)
        aks_target.wait_for_completion(show_output=True)

    myenv = Environment.from_conda_specification(name="myenv", file_path="myenv.yml")
    myenv.docker.base_image = DEFAULT_GPU_IMAGE
    inference_config = InferenceConfig(entry_script="score.py", source_directory="src", environment=myenv)

    model = Model.register(ws, model_path="model", model_name="tf-dnn-mnist")
    gpu_aks_config = AksWebservice.deploy_configuration(autoscale_enabled=False, num_replicas=3, cpu_cores=2, memory_gb=4)
    aks_service = Model.deploy(ws, models=[model], inference_config=inference_config,
                               deployment_config=gpu_aks_config, deployment_target=aks_target, name="aks-dnn-mnist")
    aks_service.wait_for_deployment(show_output=True)
    out["state"] = aks_service.state
    out["properties"] = aks_service.properties

    digits = load_digits()
    idx = (np.arange(28) * 8) // 28
    X = (digits.images / 16.0)[:, idx][:, :, idx].reshape(-1, 784)
    _, X_test, _, y_test = train_test_split(X, digits.target, test_size=0.2, random_state=0)
    api_key = aks_service.get_keys()[0]
    headers = {"Content-Type": "application/json", "Authorization": ("Bearer " + api_key)}
    resp = requests.post(aks_service.scoring_uri, json.dumps({"data": X_test.tolist()}), headers=headers, timeout=120)
    out["status"] = resp.status_code
    y_hat = np.array(resp.json())
    out["n"] = int(len(y_hat))
    out["accuracy"] = float((y_hat == y_test).mean())
    aks_service.delete()
    print("\\nRESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    # Three TensorFlow replicas on a small, shared CI machine can take a while to import.
    running = start_emulator(tmp_path_factory.mktemp("emulator-tf1") / "state", "--ready-timeout", "240")
    yield running
    running.stop()


def test_the_walk_through_tf1_model_scores_held_out_digits_through_the_emulator(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(REPO / "manifests" / "models" / "tf-dnn-mnist" / "model", work / "model")
    (work / "src").mkdir()
    shutil.copy2(REPO / "manifests" / "src" / "score.py", work / "src" / "score.py")
    shutil.copy2(REPO / "manifests" / "environments" / "myenv.yml", work / "myenv.yml")
    (work / "config.json").write_text((emulator.state_dir / "config.json").read_text())
    assert "tensorflow-gpu=1.12" in (work / "myenv.yml").read_text()

    done = emulator.sdk(WALK_THROUGH, work, timeout=420)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    out = json.loads(lines[-1].removeprefix("RESULT "))
    assert out["state"] == "Healthy" and out["status"] == 200
    assert out["n"] == 360 and out["accuracy"] >= 0.9, out["accuracy"]
    substitutions = str(out["properties"].get("amlops.dev/substitutions"))
    assert "tensorflow-gpu=1.12" in substitutions and "v1 compatibility" in substitutions, out["properties"]
