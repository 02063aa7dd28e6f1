"""The real azureml-core (SDK v1), unpatched, against a real emulator subprocess."""

from __future__ import annotations

import json
import socket
import textwrap
from pathlib import Path

import pytest
from emulators import RunningEmulator, start_emulator

pytestmark = pytest.mark.azureml

SCORE = textwrap.dedent('''
    import json, os
    import numpy as np

    def init():
        global W
        W = np.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "w.npy"))

    def run(raw_data):
        data = np.array(json.loads(raw_data)["data"])
        return (data @ W).tolist()
''')

CONDA = textwrap.dedent('''
    name: project_environment
    dependencies:
    - python=3.6.2
    - pip:
      - azureml-defaults>=1.0.45
      - numpy
    channels:
    - conda-forge
''')

WALK_THROUGH = '''
    import json, os, requests
    from azureml.core import Workspace
    from azureml.core.authentication import ServicePrincipalAuthentication
    from azureml.core.compute import ComputeTarget, AksCompute
    from azureml.exceptions import ComputeTargetException
    from azureml.core.model import Model, InferenceConfig
    from azureml.core.environment import Environment, DEFAULT_GPU_IMAGE
    from azureml.core.webservice import AksWebservice, Webservice

    out = {}
    auth = ServicePrincipalAuthentication(tenant_id=os.environ["AZURE_TENANT_ID"],
                                          service_principal_id=os.environ["AZURE_CLIENT_ID"],
                                          service_principal_password=os.environ["AZURE_CLIENT_SECRET"])
    ws = Workspace.from_config(auth=auth)
    aks_name = "aks-gpu"
    try:
        aks_target = ComputeTarget(workspace=ws, name=aks_name)
        out["compute_existed"] = True
    except ComputeTargetException:
        prov_config = AksCompute.provisioning_configuration(vm_size="Standard_NC6")
        aks_target = ComputeTarget.create(workspace=ws, name=aks_name, provisioning_configuration=prov_config)
        aks_target.wait_for_completion(show_output=True)
    out["compute_state"] = aks_target.provisioning_state
    out["agent_count"] = aks_target.agent_count

    myenv = Environment.from_conda_specification(name="myenv", file_path="myenv.yml")
    myenv.docker.base_image = DEFAULT_GPU_IMAGE
    inference_config = InferenceConfig(entry_script="score.py", source_directory="src", environment=myenv)

    Model.register(ws, model_path="model", model_name="tiny", tags={"dataset": "ones"})
    model = Model(ws, "tiny")
    out["model"] = model.id

    gpu_aks_config = AksWebservice.deploy_configuration(autoscale_enabled=False, num_replicas=3, cpu_cores=2, memory_gb=4)
    aks_service = Model.deploy(ws, models=[model], inference_config=inference_config,
                               deployment_config=gpu_aks_config, deployment_target=aks_target, name="aks-tiny")
    aks_service.wait_for_deployment(show_output=True)
    out["state"] = aks_service.state
    out["num_replicas"] = aks_service.num_replicas
    out["properties"] = aks_service.properties

    api_key = aks_service.get_keys()[0]
    headers = {"Content-Type": "application/json", "Authorization": ("Bearer " + api_key)}
    resp = requests.post(aks_service.scoring_uri, json.dumps({"data": [[1, 1], [2, 0]]}), headers=headers)
    out["prediction"] = [resp.status_code, resp.json()]
    out["no_key"] = requests.post(aks_service.scoring_uri, json.dumps({"data": [[1, 1]]}),
                                  headers={"Content-Type": "application/json"}).status_code
    aks_service.regen_key("Primary")
    out["key_changed"] = aks_service.get_keys()[0] != api_key
    out["old_key_after_regen"] = requests.post(aks_service.scoring_uri, json.dumps({"data": [[1, 1]]}), headers=headers).status_code
    out["logs"] = aks_service.get_logs()
    out["listed"] = [s.name for s in Webservice.list(ws, compute_type="AKS")]

    aks_service.delete()
    out["after_delete"] = [s.name for s in Webservice.list(ws, compute_type="AKS")]
    aks_target.delete()
    aks_target.wait_for_completion(is_delete_operation=True)
    out["computes_after_delete"] = [c.name for c in ComputeTarget.list(ws)]
    print("RESULT " + json.dumps(out))
'''


def _result(done: object) -> dict[str, object]:
    stdout = getattr(done, "stdout", "")
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result; stdout:\n{stdout[-3000:]}\nstderr:\n{getattr(done, 'stderr', '')[-5000:]}"
    return dict(json.loads(lines[-1].removeprefix("RESULT ")))


def _workdir(tmp_path: Path, emulator: RunningEmulator) -> Path:
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "model").mkdir()
    (work / "src" / "score.py").write_text(SCORE)
    (work / "myenv.yml").write_text(CONDA)
    (work / "config.json").write_text((emulator.state_dir / "config.json").read_text())
    import numpy as np

    np.save(work / "model" / "w.npy", np.array([[1.0], [2.0]]))
    return work


def test_the_walk_through_deploys_scores_and_deletes_with_the_real_sdk(emulator: RunningEmulator, tmp_path: Path) -> None:
    work = _workdir(tmp_path, emulator)
    done = emulator.sdk(WALK_THROUGH, work)
    out = _result(done)
    assert out["compute_state"] == "Succeeded" and out["agent_count"] == 3
    assert out["model"] == "tiny:1"
    assert out["state"] == "Healthy" and out["num_replicas"] == 3
    assert out["prediction"] == [200, [[3.0], [2.0]]]
    assert out["no_key"] == 401
    assert out["key_changed"] is True and out["old_key_after_regen"] == 401
    assert "replica 0" in str(out["logs"]) and "replica 2" in str(out["logs"])
    assert "azureml-defaults" in str(out["properties"]).lower()  # the substitution is visible on the service
    assert out["listed"] == ["aks-tiny"] and out["after_delete"] == []
    assert out["computes_after_delete"] == []
    assert "Provisioning operation finished" in done.stdout


def _login_script(secret: str, client: str | None = None) -> str:
    return f'''
        import os
        from azureml.core import Workspace
        from azureml.core.authentication import ServicePrincipalAuthentication
        auth = ServicePrincipalAuthentication(os.environ["AZURE_TENANT_ID"], {client!r} or os.environ["AZURE_CLIENT_ID"], {secret!r})
        try:
            Workspace.from_config(auth=auth)
            print("RESULT {{\\"error\\": null}}")
        except Exception as exc:
            import json
            print("RESULT " + json.dumps({{"error": type(exc).__name__, "message": str(exc)}}))
    '''


def test_a_wrong_secret_fails_login_with_aadsts7000215(emulator: RunningEmulator, tmp_path: Path) -> None:
    work = _workdir(tmp_path, emulator)
    out = _result(emulator.sdk(_login_script("not-the-secret"), work))
    assert out["error"] == "AuthenticationError"
    assert "AADSTS7000215" in str(out["message"])


def test_an_unknown_client_fails_login_with_aadsts700016(emulator: RunningEmulator, tmp_path: Path) -> None:
    work = _workdir(tmp_path, emulator)
    out = _result(emulator.sdk(_login_script("whatever", "11111111-2222-3333-4444-555555555555"), work))
    assert out["error"] == "AuthenticationError"
    assert "AADSTS700016" in str(out["message"])


def test_connect_to_any_other_host_is_refused_with_403(emulator: RunningEmulator) -> None:
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as sock:
        sock.sendall(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n")
        chunks = []
        while chunk := sock.recv(4096):  # the proxy closes the connection after refusing
            chunks.append(chunk)
        answer = b"".join(chunks).decode()
    assert answer.startswith("HTTP/1.1 403")
    assert "nothing is forwarded" in answer


def test_arm_and_service_routes_reject_missing_and_forged_tokens(emulator: RunningEmulator) -> None:
    import requests

    proxies = {"https": emulator.env["HTTPS_PROXY"]}
    bundle = emulator.env["REQUESTS_CA_BUNDLE"]
    url = "https://management.azure.com/subscriptions?api-version=2021-01-01"
    missing = requests.get(url, proxies=proxies, verify=bundle, timeout=10)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "AuthenticationFailed"
    forged = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjk5OTk5OTk5OTksImF1ZCI6Imh0dHBzOi8vbWFuYWdlbWVudC5jb3JlLndpbmRvd3MubmV0LyJ9.c2ln"
    bad = requests.get(url, proxies=proxies, verify=bundle, timeout=10, headers={"Authorization": f"Bearer {forged}"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "InvalidAuthenticationToken"
    api = requests.get("https://westeurope.api.azureml.ms/modelmanagement/v1.0/subscriptions/x/resourceGroups/y/providers/"
                       "Microsoft.MachineLearningServices/workspaces/z/services", proxies=proxies, verify=bundle, timeout=10)
    assert api.status_code == 401


def test_requests_are_counted_by_route_template(emulator: RunningEmulator) -> None:
    import requests

    emulator.reset_counts()
    requests.get("https://westeurope.api.azureml.ms/discovery", proxies={"https": emulator.env["HTTPS_PROXY"]},
                 verify=emulator.env["REQUESTS_CA_BUNDLE"], timeout=10)
    assert emulator.counts() == {"GET api /discovery": 1}


def test_state_survives_a_restart(tmp_path: Path) -> None:
    first = start_emulator(tmp_path / "state", "--no-data-plane")
    work = tmp_path / "w"
    work.mkdir()
    (work / "config.json").write_text((first.state_dir / "config.json").read_text())
    (work / "model").mkdir()
    (work / "model" / "weights.bin").write_bytes(b"\x00" * 64)
    script = '''
        import os, sys, json
        from azureml.core import Workspace, Model
        from azureml.core.authentication import ServicePrincipalAuthentication
        from azureml.core.compute import ComputeTarget, AksCompute
        auth = ServicePrincipalAuthentication(os.environ["AZURE_TENANT_ID"], os.environ["AZURE_CLIENT_ID"], os.environ["AZURE_CLIENT_SECRET"])
        ws = Workspace.from_config(auth=auth)
        if sys.argv[-1] == "create" or not os.path.exists("created"):
            c = ComputeTarget.create(ws, "aks-keep", AksCompute.provisioning_configuration(vm_size="Standard_NC12", agent_count=2))
            c.wait_for_completion()
            Model.register(ws, model_path="model", model_name="keep")
            open("created", "w").close()
        print("RESULT " + json.dumps({"computes": [c.name for c in ComputeTarget.list(ws)],
                                      "models": [m.id for m in Model.list(ws)]}))
    '''
    try:
        before = _result(first.sdk(script, work))
    finally:
        first.stop()
    second = start_emulator(tmp_path / "state", "--no-data-plane")
    try:
        after = _result(second.sdk(script, work))
    finally:
        second.stop()
    assert before == after == {"computes": ["aks-keep"], "models": ["keep:1"]}


def test_an_operation_that_stays_pending_is_polled_until_it_succeeds(tmp_path: Path) -> None:
    emulator = start_emulator(tmp_path / "state", "--no-data-plane")
    work = tmp_path / "w"
    work.mkdir()
    (work / "config.json").write_text((emulator.state_dir / "config.json").read_text())
    script = '''
        import os, json
        from azureml.core import Workspace
        from azureml.core.authentication import ServicePrincipalAuthentication
        from azureml.core.compute import ComputeTarget, AksCompute
        auth = ServicePrincipalAuthentication(os.environ["AZURE_TENANT_ID"], os.environ["AZURE_CLIENT_ID"], os.environ["AZURE_CLIENT_SECRET"])
        ws = Workspace.from_config(auth=auth)
        c = ComputeTarget.create(ws, "aks-slow", AksCompute.provisioning_configuration(vm_size="Standard_NC6"))
        c.wait_for_completion()
        print("RESULT " + json.dumps({"state": c.provisioning_state}))
    '''
    try:
        # The compute's creation answers "InProgress" on its first poll (the SDK waits 5 s and asks again).
        emulator.set_faults([{"route": "PUT arm *computes*", "pendingPolls": 1}])
        emulator.reset_counts()
        out = _result(emulator.sdk(script, work))
        polls = {route: n for route, n in emulator.counts().items() if route.startswith("GET") and "operation" in route.lower()}
    finally:
        emulator.stop()
    assert out == {"state": "Succeeded"}
    assert list(polls.values()) == [2], polls
