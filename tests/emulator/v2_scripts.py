"""Scripts a v2 user writes with azure-ai-ml, run in their own process against the emulator.

Each prints one ``RESULT {json}`` line. Only the credential points at the emulator (its service
principal, from the environment); every URL is Azure's own, reached through the emulator's proxy.
Scoring calls use ``requests`` on the endpoint's ``scoring_uri`` (not ``online_endpoints.invoke``,
whose header dict leaks ``azureml-model-deployment`` from one call into the next).
"""

from __future__ import annotations

import textwrap

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

BROKEN_SCORE = textwrap.dedent('''
    def init():
        raise RuntimeError("model file is corrupt: cannot load weights")

    def run(raw_data):
        return []
''')

CONDA = textwrap.dedent('''
    name: score-env
    channels:
    - conda-forge
    dependencies:
    - python=3.11
    - pip
    - pip:
      - azureml-inference-server-http
      - numpy
''')

PRELUDE = '''
import json, os, collections, datetime
import requests
from azure.identity import ClientSecretCredential
from azure.ai.ml import MLClient
from azure.ai.ml.entities import (KubernetesCompute, Model, Environment, CodeConfiguration,
    KubernetesOnlineEndpoint, KubernetesOnlineDeployment, ResourceRequirementsSettings, ResourceSettings)
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

credential = ClientSecretCredential(os.environ["AZURE_TENANT_ID"], os.environ["AZURE_CLIENT_ID"],
                                    os.environ["AZURE_CLIENT_SECRET"])
cfg = json.load(open("config.json"))
ml_client = MLClient(credential, cfg["subscription_id"], cfg["resource_group"], cfg["workspace_name"],
                     enable_telemetry=False, show_progress=False)
out = {}

def attach(name="k8s"):
    try:
        return ml_client.compute.get(name)
    except ResourceNotFoundError:
        pass
    aks_id = (f"/subscriptions/{cfg['subscription_id']}/resourceGroups/{cfg['resource_group']}"
              "/providers/Microsoft.ContainerService/managedClusters/aks1")
    compute = KubernetesCompute(name=name, resource_id=aks_id, namespace="amlops")
    return ml_client.begin_create_or_update(compute).result()

def deployment(name, endpoint, model, env, code="src", script="score.py", instances=1, gpu=None):
    requests_ = ResourceSettings(cpu="0.1", memory="0.5Gi", gpu=gpu)
    return KubernetesOnlineDeployment(
        name=name, endpoint_name=endpoint, model=model, environment=env,
        code_configuration=CodeConfiguration(code=code, scoring_script=script), instance_count=instances,
        resources=ResourceRequirementsSettings(requests=requests_, limits=requests_))

session = requests.Session()

def score(uri, key, data, deployment=None):
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + key}
    if deployment:
        headers["azureml-model-deployment"] = deployment
    resp = session.post(uri, data=json.dumps({"data": data}), headers=headers, timeout=60)
    return resp.status_code, resp.headers.get("azureml-model-deployment"), resp.text
'''

WALK_THROUGH = PRELUDE + '''
compute = attach()
out["compute"] = [compute.type, compute.namespace, compute.provisioning_state]
out["computes"] = sorted(c.name for c in ml_client.compute.list())
model = ml_client.models.create_or_update(Model(name="tiny", path="model", description="ones"))
out["model"] = [model.name, model.version]
env = ml_client.environments.create_or_update(Environment(
    name="score-env", image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest", conda_file="env.yml"))
out["environment"] = [env.name, env.version]
endpoint = KubernetesOnlineEndpoint(name="tiny-ep", compute="k8s", auth_mode="key", description="walk-through")
endpoint = ml_client.online_endpoints.begin_create_or_update(endpoint).result()
out["endpoint_state"] = endpoint.provisioning_state
blue = ml_client.online_deployments.begin_create_or_update(
    deployment("blue", "tiny-ep", model, env, instances=2)).result()
out["blue"] = [blue.provisioning_state, blue.instance_count]
endpoint.traffic = {"blue": 100}
endpoint = ml_client.online_endpoints.begin_create_or_update(endpoint).result()
out["traffic"] = endpoint.traffic
keys = ml_client.online_endpoints.get_keys("tiny-ep")
uri = ml_client.online_endpoints.get("tiny-ep").scoring_uri
out["scoring_uri"] = uri
out["prediction"] = score(uri, keys.primary_key, [[1, 1], [2, 0]])
out["no_key"] = session.post(uri, data="{}", headers={"Content-Type": "application/json"}).status_code
out["secondary_key"] = score(uri, keys.secondary_key, [[1, 0]])[0]

green = ml_client.online_deployments.begin_create_or_update(
    deployment("green", "tiny-ep", model, env, code="src2")).result()
out["green"] = green.provisioning_state
out["green_smoke"] = score(uri, keys.primary_key, [[1, 1]], deployment="green")
out["while_zero"] = collections.Counter(score(uri, keys.primary_key, [[1, 1]])[1] for _ in range(10))
endpoint.traffic = {"blue": 50, "green": 50}
endpoint = ml_client.online_endpoints.begin_create_or_update(endpoint).result()
since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(milliseconds=50)
answers = [score(uri, keys.primary_key, [[1, 1]]) for _ in range(200)]
out["split_statuses"] = sorted(set(a[0] for a in answers))
out["split"] = collections.Counter(a[1] for a in answers)
out["split_bodies"] = sorted(set(a[2] for a in answers))
out["bad_input"] = [score(uri, keys.primary_key, "not a matrix", deployment="green")[0] for _ in range(3)]

# Azure Monitor metrics of the endpoint, per deployment, over the split (the canary analysis reads these).
arm_token = credential.get_token("https://management.azure.com/.default").token
until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
def metrics(names, flt):
    resp = session.get("https://management.azure.com" + endpoint.id + "/providers/Microsoft.Insights/metrics",
                       params={"api-version": "2023-10-01", "metricnames": names, "interval": "FULL",
                               "timespan": since.isoformat() + "/" + until.isoformat(), "$filter": flt,
                               "aggregation": "Total,Average"},
                       headers={"Authorization": "Bearer " + arm_token})
    resp.raise_for_status()
    return {m["name"]["value"]: {ts["metadatavalues"][0]["value"]: ts["data"][0] for ts in m["timeseries"]}
            for m in resp.json()["value"]}
out["metrics"] = metrics("RequestsPerMinute,RequestLatency_P99", "deployment eq '*'")
out["metrics_5xx"] = metrics("RequestsPerMinute", "deployment eq '*' and statusCodeClass eq '5xx'")

ml_client.online_endpoints.begin_regenerate_keys("tiny-ep", key_type="primary").result()
new_keys = ml_client.online_endpoints.get_keys("tiny-ep")
out["key_changed"] = new_keys.primary_key != keys.primary_key
out["old_key_after_regen"] = score(uri, keys.primary_key, [[1, 1]])[0]
out["new_key_after_regen"] = score(uri, new_keys.primary_key, [[1, 1]])[0]
out["logs"] = ml_client.online_deployments.get_logs("blue", "tiny-ep", lines=50)
out["deployments"] = sorted(d.name for d in ml_client.online_deployments.list("tiny-ep"))
endpoint.traffic = {"green": 100}
ml_client.online_endpoints.begin_create_or_update(endpoint).result()
ml_client.online_deployments.begin_delete("blue", "tiny-ep").result()
out["after_blue_delete"] = sorted(d.name for d in ml_client.online_deployments.list("tiny-ep"))
out["after_blue_delete_score"] = score(uri, new_keys.primary_key, [[1, 1]])[:2]
ml_client.online_endpoints.begin_delete("tiny-ep").result()
out["endpoints_after_delete"] = [e.name for e in ml_client.online_endpoints.list()]
out["after_delete_status"] = session.post(uri, data="{}", headers={"Authorization": "Bearer " + new_keys.primary_key}).status_code
ml_client.compute.begin_delete("k8s", action="Detach").result()
out["computes_after_detach"] = [c.name for c in ml_client.compute.list()]
print("RESULT " + json.dumps(out))
'''

FAILING_INIT = PRELUDE + '''
attach()
model = ml_client.models.create_or_update(Model(name="tiny", path="model"))
env = ml_client.environments.create_or_update(Environment(
    name="score-env", image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest", conda_file="env.yml"))
endpoint = ml_client.online_endpoints.begin_create_or_update(
    KubernetesOnlineEndpoint(name="init-ep", compute="k8s", auth_mode="key")).result()
ml_client.online_deployments.begin_create_or_update(deployment("good", "init-ep", model, env)).result()
endpoint.traffic = {"good": 100}
endpoint = ml_client.online_endpoints.begin_create_or_update(endpoint).result()
try:
    ml_client.online_deployments.begin_create_or_update(
        deployment("bad", "init-ep", model, env, code="broken")).result()
    out["bad_create"] = "succeeded"
except HttpResponseError as exc:
    out["bad_create"] = str(exc)
out["bad_state"] = ml_client.online_deployments.get("bad", "init-ep").provisioning_state
out["bad_logs"] = ml_client.online_deployments.get_logs("bad", "init-ep", lines=200)
endpoint.traffic = {"good": 50, "bad": 50}
try:
    ml_client.online_endpoints.begin_create_or_update(endpoint).result()
    out["traffic_to_bad"] = "accepted"
except HttpResponseError as exc:
    out["traffic_to_bad"] = [exc.status_code, str(exc)]
out["traffic"] = ml_client.online_endpoints.get("init-ep").traffic
keys = ml_client.online_endpoints.get_keys("init-ep")
uri = ml_client.online_endpoints.get("init-ep").scoring_uri
out["answers"] = collections.Counter(json.dumps(score(uri, keys.primary_key, [[1, 1]])) for _ in range(20))
out["bad_by_header"] = score(uri, keys.primary_key, [[1, 1]], deployment="bad")[0]
print("RESULT " + json.dumps(out))
'''

GPU_OVERSUBSCRIBED = PRELUDE + '''
attach()
model = ml_client.models.create_or_update(Model(name="tiny", path="model"))
env = ml_client.environments.create_or_update(Environment(
    name="score-env", image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest", conda_file="env.yml"))
ml_client.online_endpoints.begin_create_or_update(
    KubernetesOnlineEndpoint(name="gpu-ep", compute="k8s", auth_mode="key")).result()
try:
    ml_client.online_deployments.begin_create_or_update(
        deployment("big", "gpu-ep", model, env, instances=3, gpu="1")).result()
    out["create"] = "succeeded"
except HttpResponseError as exc:
    out["create"] = str(exc)
out["state"] = ml_client.online_deployments.get("big", "gpu-ep").provisioning_state
print("RESULT " + json.dumps(out))
'''

SURVIVES_FAULTS = PRELUDE + '''
attach()
endpoint = ml_client.online_endpoints.begin_create_or_update(
    KubernetesOnlineEndpoint(name="fault-ep", compute="k8s", auth_mode="aml_token")).result()
out["state"] = endpoint.provisioning_state
out["listed"] = [e.name for e in ml_client.online_endpoints.list()]
token = ml_client.online_endpoints.get_keys("fault-ep")
out["token_type"] = type(token).__name__
out["no_deployment"] = session.post(endpoint.scoring_uri, data="{}",
                                    headers={"Authorization": "Bearer " + token.access_token}).status_code
out["wrong_token"] = session.post(endpoint.scoring_uri, data="{}", headers={"Authorization": "Bearer x.y"}).status_code
ml_client.online_endpoints.begin_delete("fault-ep").result()
print("RESULT " + json.dumps(out))
'''

ASSETS = PRELUDE + '''
from azure.storage.blob import BlobClient
from azure.core.exceptions import ResourceExistsError

env1 = ml_client.environments.create_or_update(Environment(name="assets-env", image="img:1", conda_file="env.yml"))
env_same = ml_client.environments.create_or_update(Environment(name="assets-env", image="img:1", conda_file="env.yml"))
env2 = ml_client.environments.create_or_update(Environment(name="assets-env", image="img:2", conda_file="env.yml"))
out["environment_versions"] = [env1.version, env_same.version, env2.version]
out["environment_latest"] = ml_client.environments.get("assets-env", label="latest").image

m1 = ml_client.models.create_or_update(Model(name="big", path="bigmodel"))
m2 = ml_client.models.create_or_update(Model(name="big", path="bigmodel"))
out["model_versions"] = [m1.version, m2.version]
out["model_paths_equal"] = m1.path == m2.path
out["default_datastore"] = ml_client.datastores.get_default().name

# the storage SDK itself: a second upload without overwrite is refused (If-None-Match: *)
arm_token = credential.get_token("https://management.azure.com/.default").token
ws_id = ml_client.workspaces.get(cfg["workspace_name"]).id
store = ml_client.datastores.get("workspaceblobstore")
sas = session.post("https://management.azure.com" + ws_id + "/datastores/workspaceblobstore/listSecrets",
                   params={"api-version": "2024-10-01-preview"}, json={"expirableSecret": True, "expireAfterHours": 1},
                   headers={"Authorization": "Bearer " + arm_token}).json()["sasToken"]
url = f"https://{store.account_name}.blob.core.windows.net/{store.container_name}/probe/once.txt?{sas}"
BlobClient.from_blob_url(url).upload_blob(b"first")
try:
    BlobClient.from_blob_url(url).upload_blob(b"second")
    out["second_upload"] = "accepted"
except ResourceExistsError as exc:
    out["second_upload"] = exc.error_code
out["blob_content"] = BlobClient.from_blob_url(url).download_blob().readall().decode()
print("RESULT " + json.dumps(out))
'''
