"""Small manifest repos written into temp folders, for core and CLI tests."""

from __future__ import annotations

from pathlib import Path

from controller.sources.loading import load_desired_state
from controller.structs.states import DesiredState

WORKSPACE = """\
apiVersion: amlops.dev/v1
kind: Workspace
metadata:
  name: local
"""

CLUSTER = """\
apiVersion: amlops.dev/v1
kind: AksCluster
metadata:
  name: aks-cpu
spec:
  vmSize: Standard_D3_v2
  agentCount: {agents}
"""

ENVIRONMENT = """\
apiVersion: amlops.dev/v1
kind: Environment
metadata:
  name: numpy-env
spec:
  baseImage: {image}
  pip:
    - numpy
"""

MODEL = """\
apiVersion: amlops.dev/v1
kind: Model
metadata:
  name: linear
spec:
  path: linear
  framework: numpy
"""

SERVICE = """\
apiVersion: amlops.dev/v1
kind: Webservice
metadata:
  name: {name}
spec:
  cluster: aks-cpu
  models:
    - linear
  environment: numpy-env
  sourceDirectory: ../src
  entryScript: score.py
  replicas: {replicas}
  resources:
    cpu: {cpu}
    memoryGb: 0.5
"""

SCORE = """\
import json
import os

import numpy as np

weights = None


def init():
    global weights
    weights = np.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], "weights.npy"))


def run(raw_data):
    data = np.asarray(json.loads(raw_data)["data"], dtype=float)
    return (data @ weights).tolist()
"""


class Repo:
    """A folder of manifests that tests edit between plans."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.revision = 0

    def write(self, relative: str, text: str | bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    def remove(self, relative: str) -> None:
        (self.root / relative).unlink()

    def standard(self, *, services: tuple[str, ...] = ("svc-a",), replicas: int = 2, cpu: str = "1",
                 image: str = "DEFAULT_CPU_IMAGE", agents: int = 3) -> Repo:
        """Workspace, cluster, environment, model (with a weights file) and services."""
        import numpy as np

        self.write("manifests/workspace.yaml", WORKSPACE)
        self.write("manifests/cluster.yaml", CLUSTER.format(agents=agents))
        self.write("manifests/environment.yaml", ENVIRONMENT.format(image=image))
        self.write("manifests/model.yaml", MODEL)
        weights = self.root / "manifests/linear/weights.npy"
        if not weights.exists():
            weights.parent.mkdir(parents=True, exist_ok=True)
            np.save(weights, np.array([[1.0], [2.0]]))
        self.write("manifests/src/score.py", SCORE)
        for name in services:
            self.write(f"manifests/services/{name}.yaml", SERVICE.format(name=name, replicas=replicas, cpu=cpu))
        return self

    def load(self, revision: str | None = None) -> DesiredState:
        self.revision += 1
        return load_desired_state(self.root, "manifests", revision=revision or f"r{self.revision}")
