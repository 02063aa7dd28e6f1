"""The exported JSON Schemas and ``amlops validate`` accept and reject the same manifests.

Editors (yaml-language-server) and CI (check-jsonschema) read YAML 1.2 and check it against
``schemas/*.json``; amlops reads the same text with its own loader and pydantic models. Each case
below is run through both: a real JSON Schema validator on the file as a YAML 1.2 reader parses it,
and ``load_desired_state`` on a copy of the worked example with the case's file in it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from controller.sources.loading import load_desired_state
from controller.structs.errors import ValidationFailed

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
SERVICE = "manifests/services/aks-dnn-mnist.yaml"
CLUSTER = "manifests/clusters/aks-gpu.yaml"
WORKSPACE = "manifests/workspace.yaml"
ENVIRONMENT_FILE = "manifests/environments/myenv.yaml"
AZUREML = "backend: azureml\n  subscriptionId: sub\n  resourceGroup: rg\n"


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _schema_errors(text: str) -> dict[str, list[str]]:
    """Per schema (the kind-keyed one, each document's own kind's), the errors it reports; YAML 1.2, as editors read."""
    found: dict[str, list[str]] = {"amlops.json": []}
    for document in YAML(typ="safe", pure=True).load_all(text):
        if document is None:
            continue
        own = f"{str(document.get('kind', '')).lower()}.json"
        for name in ("amlops.json", own):
            found.setdefault(name, [])
            found[name] += [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(name).iter_errors(document)]
    return found


def _amlops_errors(tmp_path: Path, relative: str, text: str) -> list[str]:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "manifests", root / "manifests")
    (root / relative).write_text(text)
    try:
        load_desired_state(root, "manifests")
    except ValidationFailed as exc:
        return [str(e) for e in exc.errors]
    return []


def _service(old: str, new: str) -> tuple[str, Callable[[str], str]]:
    return SERVICE, lambda text: text.replace(old, new, 1)


ENVIRONMENT = """---
apiVersion: amlops.dev/v1
kind: Environment
metadata:
  name: second-env
spec:
  pip: [numpy]
"""

ACCEPTED = {
    "the example as it is": _service("", ""),
    "a model pinned as name:version": _service("    - tf-dnn-mnist\n", "    - tf-dnn-mnist:1\n"),
    "a model as a mapping": _service("    - tf-dnn-mnist\n", "    - {name: tf-dnn-mnist, version: 1}\n"),
    "yes is text in YAML 1.2": _service("  auth: key\n", "  auth: key\n  description: yes\n"),
    "a quoted number where text is wanted": _service("  auth: key\n", "  auth: key\n  tags: {release: '3'}\n"),
    "autoscale without replicas": _service("  replicas: 3\n", "  autoscale: {minReplicas: 1, maxReplicas: 3}\n"),
    "two documents of two kinds in one file": (CLUSTER, lambda text: text + ENVIRONMENT),
    # One replica: a canary's new version runs beside the live one, and the cluster has 3 GPUs.
    "a canary with steps": (SERVICE, lambda text: text.replace("replicas: 3", "replicas: 1").replace(
        "  auth: key\n", "  auth: key\n  rollout:\n    strategy: canary\n    steps: [{weight: 10}, {weight: 100}]\n")),
}

REJECTED = {
    "a service name Azure ML refuses": (_service("name: aks-dnn-mnist", "name: AKS_dnn"), "metadata.name"),
    "replicas and autoscale together": (_service("  replicas: 3\n", "  replicas: 3\n  autoscale: {maxReplicas: 4}\n"), "spec"),
    "a quoted number": (_service("replicas: 3", "replicas: '3'"), "spec.replicas"),
    "yes for a boolean": (_service("  auth: key\n", "  auth: key\n  rollout:\n    strategy: blueGreen\n"
                                   "    sampleRequest: {body: '{}', compareWithLive: yes}\n"), "compareWithLive"),
    "a model version that is not a number": (_service("    - tf-dnn-mnist\n", "    - tf-dnn-mnist:latest\n"), "spec.models"),
    "model version 0": (_service("    - tf-dnn-mnist\n", "    - tf-dnn-mnist:0\n"), "spec.models"),
    "no entry script and two models": ((SERVICE, lambda text: text.replace("  entryScript: score.py\n", "").replace(
        "    - tf-dnn-mnist\n", "    - tf-dnn-mnist\n    - tf-dnn-mnist:1\n")), "spec"),
    "a secret given two ways": ((WORKSPACE, lambda text: text.replace("backend: local\n", AZUREML + (
        "  credentials:\n    tenantId: {value: t}\n    clientId: {value: c}\n"
        "    clientSecret: {fromEnv: SECRET, fromFile: secret.txt}\n"))), "clientSecret"),
    "a service principal without its secret": ((WORKSPACE, lambda text: text.replace("backend: local\n", AZUREML + (
        "  credentials:\n    tenantId: {value: t}\n    clientId: {value: c}\n"))), "credentials"),
    "an azureml workspace without a subscription": ((WORKSPACE, lambda text: text.replace(
        "backend: local\n", "backend: azureml\n  resourceGroup: rg\n")), "spec"),
    "a conda file and inline conda": ((ENVIRONMENT_FILE, lambda text: text.replace(
        "  condaFile: myenv.yml\n", "  condaFile: myenv.yml\n  conda: {dependencies: [python=3.11]}\n")), "spec"),
    "steps without a canary": (_service("  auth: key\n", "  auth: key\n  rollout:\n    strategy: blueGreen\n"
                                        "    steps: [{weight: 50}]\n"), "spec.rollout"),
    "a canary without steps": (_service("  auth: key\n", "  auth: key\n  rollout: {strategy: canary}\n"), "spec.rollout"),
    "a sample request with no body": (_service("  auth: key\n", "  auth: key\n  rollout:\n"
                                               "    sampleRequest: {compareWithLive: true}\n"), "sampleRequest"),
    "a broken second document": ((CLUSTER, lambda text: text + "---\n" + text.replace("name: aks-gpu", "name: aks-two")
                                  .replace("agentCount: 3", "agentCount: '2'")), "spec.agentCount"),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_both_accept(case: str, tmp_path: Path) -> None:
    relative, edit = ACCEPTED[case]
    text = edit((REPO / relative).read_text())
    assert all(errors == [] for errors in _schema_errors(text).values()), _schema_errors(text)
    assert _amlops_errors(tmp_path, relative, text) == []


@pytest.mark.parametrize("case", list(REJECTED))
def test_both_reject(case: str, tmp_path: Path) -> None:
    (relative, edit), field = REJECTED[case]
    text = edit((REPO / relative).read_text())
    assert text != (REPO / relative).read_text()
    assert all(_schema_errors(text).values()), f"a schema accepts it: {_schema_errors(text)}"
    errors = _amlops_errors(tmp_path, relative, text)
    assert any(field in error for error in errors), errors


def test_check_jsonschema_accepts_every_example_manifest_with_its_kind_schema_and_the_kind_keyed_one() -> None:
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "manifests").rglob("*.yaml"))
    for schema in ("amlops.json", "webservice.json"):
        targets = files if schema == "amlops.json" else [SERVICE]
        result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--schemafile", f"schemas/{schema}", *targets],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
